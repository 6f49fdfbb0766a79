use super::*;

fn sandbox(title: &str, holder: &str, addr: &str, index: u32, peer: u32) -> Sandbox {
    Sandbox {
        title: title.into(),
        holder: holder.into(),
        addresses: vec![addr.into()],
        index,
        peer_index: Some(peer),
    }
}

fn two() -> (Vec<Sandbox>, Host) {
    let sandboxes = vec![
        sandbox("pod 1234567890", "held by a process", "10.15.20.2/24", 2, 4),
        sandbox("pod abcdef0123", "held by a process", "10.15.20.3/24", 2, 5),
    ];
    let host = Host {
        bridge: "cni_bridge0".into(),
        bridge_addresses: vec!["10.15.20.1/24".into()],
        ports: vec![(5, "veth5b2c9a1e".into()), (4, "veth0e4f1d2a".into())],
        masquerade: vec!["10.15.20.0/24".into()],
        ip_forward: true,
    };
    (sandboxes, host)
}

/// The column (in characters) where `needle` starts on the line holding it.
fn column(picture: &str, needle: &str) -> usize {
    let line = picture
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{picture}"));
    line[..line.find(needle).unwrap()].chars().count()
}

#[test]
fn two_pods_in_box_drawing() {
    let (s, h) = two();
    assert_eq!(
        render(&s, &h, Charset::Unicode),
        "\
┌────────────────────┐   ┌────────────────────┐
│ pod 1234567890     │   │ pod abcdef0123     │
│ held by a process  │   │ held by a process  │
│ eth0 10.15.20.2/24 │   │ eth0 10.15.20.3/24 │
└──────────┬─────────┘   └──────────┬─────────┘
           │ veth pair              │ veth pair
     veth0e4f1d2a             veth5b2c9a1e
           │                        │
┌──────────┴────────────────────────┴─────────┐
│ bridge cni_bridge0 (in the host namespace)  │
│ gateway 10.15.20.1/24                       │
└──────────────────────┬──────────────────────┘
                       │ routed by the host (ip_forward = 1)
╌╌╌╌╌╌╌╌╌╌╌╌╌ masquerade boundary ╌╌╌╌╌╌╌╌╌╌╌╌╌
                       │ packets from 10.15.20.0/24 to anywhere else
                       │ leave with the host's address as source
                       ▼
          the host's other interfaces
"
    );
}

#[test]
fn ascii_is_the_same_picture_in_plain_characters() {
    let (s, h) = two();
    let unicode = render(&s, &h, Charset::Unicode);
    let ascii = render(&s, &h, Charset::Ascii);
    assert!(ascii.is_ascii(), "{ascii}");
    assert_eq!(unicode.lines().count(), ascii.lines().count());
    for (u, a) in unicode.lines().zip(ascii.lines()) {
        assert_eq!(u.chars().count(), a.chars().count(), "{u}\n{a}");
    }
    assert!(
        ascii.starts_with("+--------------------+   +----"),
        "{ascii}"
    );
    assert!(ascii.contains("~~~ masquerade boundary ~~~"), "{ascii}");
}

#[test]
fn each_host_end_hangs_under_its_own_sandbox() {
    let (mut s, h) = two();
    // Three sandboxes, listed in another order than the bridge's ports.
    s.push(sandbox(
        "pod 3f2a9c1b7e4d",
        "docker: pause + app",
        "10.15.20.4/24",
        7,
        9,
    ));
    let mut h = h;
    h.ports.insert(0, (9, "veth99aa88bb".into()));
    let picture = render(&s, &h, Charset::Unicode);
    for (addr, veth) in [
        ("10.15.20.2/24", "veth0e4f1d2a"),
        ("10.15.20.3/24", "veth5b2c9a1e"),
        ("10.15.20.4/24", "veth99aa88bb"),
    ] {
        let a = column(&picture, addr);
        let v = column(&picture, veth);
        // The name is centred on the box's wire, so it starts within the box's columns.
        assert!(
            v + 2 >= a && v < a + 18,
            "{veth} at {v}, {addr} at {a}:\n{picture}"
        );
    }
    let widths: Vec<usize> = picture.lines().take(5).map(|l| l.chars().count()).collect();
    assert!(
        widths.iter().all(|w| *w == widths[0]),
        "{widths:?}\n{picture}"
    );
}

#[test]
fn a_sandbox_off_the_bridge_and_no_masquerade_say_so() {
    let (mut s, mut h) = two();
    s[1].peer_index = Some(42);
    h.masquerade.clear();
    h.ip_forward = false;
    let picture = render(&s, &h, Charset::Ascii);
    assert!(picture.contains("(not on the bridge)"), "{picture}");
    assert!(picture.contains("no masquerade"), "{picture}");
    assert!(picture.contains("not routed (ip_forward = 0)"), "{picture}");
    assert!(!picture.contains("masquerade boundary"), "{picture}");
}

#[test]
fn host_end_matches_the_peer_index() {
    let (s, h) = two();
    assert_eq!(host_end(&h, &s[0]), Some("veth0e4f1d2a"));
    assert_eq!(host_end(&h, &s[1]), Some("veth5b2c9a1e"));
    let off = Sandbox {
        peer_index: None,
        ..s[0].clone()
    };
    assert_eq!(host_end(&h, &off), None);
}

#[test]
fn the_locale_decides_box_drawing() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        Charset::for_terminal(false, env(&[("LANG", "en_US.UTF-8")])),
        Charset::Unicode
    );
    assert_eq!(
        Charset::for_terminal(false, env(&[("LANG", "C.utf8")])),
        Charset::Unicode
    );
    assert_eq!(
        Charset::for_terminal(true, env(&[("LANG", "en_US.UTF-8")])),
        Charset::Ascii
    );
    assert_eq!(Charset::for_terminal(false, env(&[])), Charset::Ascii);
    // LC_ALL wins over LANG, and an empty one is skipped.
    assert_eq!(
        Charset::for_terminal(false, env(&[("LC_ALL", "C"), ("LANG", "en_US.UTF-8")])),
        Charset::Ascii
    );
    assert_eq!(
        Charset::for_terminal(false, env(&[("LC_ALL", ""), ("LC_CTYPE", "de_DE.UTF-8")])),
        Charset::Unicode
    );
    assert_eq!(
        Charset::for_terminal(false, env(&[("LANG", "de_DE.ISO-8859-1")])),
        Charset::Ascii
    );
}
