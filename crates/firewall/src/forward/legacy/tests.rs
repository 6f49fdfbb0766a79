use super::super::rules::{plan_ensure, plan_remove, wanted, Anchor};
use super::xt::*;
use super::*;
use ipnet::IpNet;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// [`super::apply`] with a lock file of no consequence (these tests serialise nothing).
fn apply(family: Family, ops: &[Op<LegacyHandle>]) -> Result<(), Error> {
    let lock = std::fs::File::open("/dev/null").unwrap();
    super::apply(family, ops, std::os::fd::AsFd::as_fd(&lock))
}

fn layout(family: Family) -> &'static Layout {
    spec(family).layout
}

/// An extension as the kernel returns it: header, data, padded to 8 bytes (`XT_ALIGN`).
fn ext(name: &str, revision: u8, data: &[u8]) -> Vec<u8> {
    let size = (EXT_HEADER + data.len()).next_multiple_of(8);
    let mut out = vec![0; size];
    out[..2].copy_from_slice(&(size as u16).to_ne_bytes());
    out[2..2 + name.len()].copy_from_slice(name.as_bytes());
    out[EXT_NAME.end] = revision;
    out[EXT_HEADER..EXT_HEADER + data.len()].copy_from_slice(data);
    out
}

fn standard(verdict: i32) -> Vec<u8> {
    ext("", 0, &verdict.to_ne_bytes())
}

fn error(name: &str) -> Vec<u8> {
    let mut data = [0; 32];
    data[..name.len()].copy_from_slice(name.as_bytes());
    ext("ERROR", 0, &data)
}

fn comment_match(text: &str) -> Vec<u8> {
    let mut data = [0; COMMENT_LEN];
    data[..text.len()].copy_from_slice(text.as_bytes());
    ext("comment", 0, &data)
}

/// `--ctstate RELATED,ESTABLISHED` as `xt_conntrack_mtinfo3` (164 bytes).
fn conntrack_match(state: u16) -> Vec<u8> {
    let mut data = [0; 164];
    data[CONNTRACK_FLAGS..CONNTRACK_FLAGS + 2].copy_from_slice(&CONNTRACK_STATE.to_ne_bytes());
    data[CONNTRACK_FLAGS + 4..CONNTRACK_FLAGS + 6].copy_from_slice(&state.to_ne_bytes());
    ext("conntrack", 3, &data)
}

/// An entry with source and destination subnets, matches and a target.
fn entry(
    family: Family,
    s: Option<IpNet>,
    d: Option<IpNet>,
    matches: &[Vec<u8>],
    target: Vec<u8>,
) -> Vec<u8> {
    let l = layout(family);
    let mut out = vec![0; l.entry];
    for (i, n) in [(0, s), (1, d)] {
        if let Some(n) = n {
            let put = |out: &mut Vec<u8>, field: usize, bytes: Vec<u8>| {
                out[field * l.addr..(field + 1) * l.addr].copy_from_slice(&bytes)
            };
            put(&mut out, i, crate::names::addr_bytes(n.network()));
            put(&mut out, i + 2, crate::names::addr_bytes(n.netmask()));
        }
    }
    for m in matches {
        out.extend_from_slice(m);
    }
    let target_at = out.len() as u16;
    out.extend_from_slice(&target);
    let next = out.len() as u16;
    out[l.target_offset..l.target_offset + 2].copy_from_slice(&target_at.to_ne_bytes());
    out[l.next_offset..l.next_offset + 2].copy_from_slice(&next.to_ne_bytes());
    out
}

/// A table as iptables-legacy lays one out: INPUT, FORWARD (the jump, a foreign rule, policy), OUTPUT, a user
/// chain with a trestle-looking rule, TRESTLE-FORWARD with trestle rules and look-alikes, the final ERROR.
/// Returns the info and the entries.
fn table(family: Family, forward_policy: i32, with_chain: bool) -> (Info, Vec<u8>) {
    let (a, other, foreign) = match family {
        Family::V4 => (net("10.1.0.0/24"), net("10.7.0.0/24"), net("192.0.2.0/24")),
        Family::V6 => (net("fd00:1::/64"), net("fd00:7::/64"), net("2001:db8::/32")),
    };
    let c = format!("trestle a {a}");
    let e = |s, d, m: &[Vec<u8>], t| entry(family, s, d, m, t);
    let ct = conntrack_match(RELATED_ESTABLISHED);
    let mut entries = vec![
        e(None, None, &[], standard(VERDICT_ACCEPT)),
        // The jump; its verdict is patched below once the chain's offset is known.
        e(None, None, &[comment_match(JUMP_COMMENT)], standard(0)),
        e(Some(foreign), None, &[], standard(VERDICT_ACCEPT)),
        e(None, None, &[], standard(forward_policy)),
        e(None, None, &[], standard(VERDICT_ACCEPT)),
        e(None, None, &[], error("OTHER")),
        e(
            Some(other),
            None,
            &[comment_match(&format!("trestle b {other}"))],
            standard(VERDICT_ACCEPT),
        ),
        e(None, None, &[], standard(VERDICT_RETURN)),
    ];
    let head = entries.len();
    if with_chain {
        let mut iface = e(
            Some(a),
            None,
            &[comment_match(&c)],
            standard(VERDICT_ACCEPT),
        );
        iface[layout(family).plain.start] = b'e';
        let mut inverted = e(
            Some(a),
            None,
            &[comment_match(&c)],
            standard(VERDICT_ACCEPT),
        );
        inverted[layout(family).plain.end - 1] = 0x08;
        let mut holes = e(
            Some(a),
            None,
            &[comment_match(&c)],
            standard(VERDICT_ACCEPT),
        );
        holes[2 * layout(family).addr] = 0xfe;
        entries.extend([
            e(None, None, &[], error(CHAIN)),
            e(
                Some(a),
                None,
                &[comment_match(&c)],
                standard(VERDICT_ACCEPT),
            ),
            e(
                None,
                Some(a),
                &[ct.clone(), comment_match(&c)],
                standard(VERDICT_ACCEPT),
            ),
            iface,
            inverted,
            holes,
            e(
                None,
                Some(a),
                &[comment_match(&c)],
                standard(VERDICT_ACCEPT),
            ),
            e(
                None,
                Some(a),
                &[conntrack_match(0b10), comment_match(&c)],
                standard(VERDICT_ACCEPT),
            ),
            e(Some(a), None, &[comment_match(&c)], standard(VERDICT_DROP)),
            e(
                Some(a),
                Some(a),
                &[comment_match(&c)],
                standard(VERDICT_ACCEPT),
            ),
            e(Some(a), None, &[], standard(VERDICT_ACCEPT)),
            e(None, None, &[], standard(VERDICT_RETURN)),
        ]);
    }
    entries.push(e(None, None, &[], error("ERROR")));
    let offsets: Vec<u32> = entries
        .iter()
        .scan(0, |at, e| {
            let this = *at;
            *at += e.len() as u32;
            Some(this)
        })
        .collect();
    if with_chain {
        let jump = &mut entries[1];
        let at = jump.len() - 8;
        jump[at..at + 4].copy_from_slice(&(offsets[head + 1] as i32).to_ne_bytes());
    }
    let bytes = entries.concat();
    let info = Info {
        valid_hooks: 0b1110,
        hook_entry: [0, offsets[0], offsets[1], offsets[4], 0],
        underflow: [0, offsets[0], offsets[3], offsets[4], 0],
        size: bytes.len() as u32,
    };
    (info, bytes)
}

#[test]
fn layouts_match_the_kernel_headers() {
    // The sizes the kernel headers give (checked with offsetof/sizeof on x86_64): an entry with a standard
    // target is `struct ipt_standard` / `struct ip6t_standard`, the table's last is `ipt_error`.
    assert_eq!(
        entry(Family::V4, None, None, &[], standard(0)).len(),
        112 + 40
    );
    assert_eq!(
        entry(Family::V6, None, None, &[], standard(0)).len(),
        168 + 40
    );
    assert_eq!(
        entry(Family::V4, None, None, &[], error("ERROR")).len(),
        112 + 64
    );
    assert_eq!(comment_match("x").len(), 288);
    assert_eq!(conntrack_match(0).len(), 200);
    for l in [&IPV4, &IPV6] {
        assert_eq!(l.next_offset, l.target_offset + 2);
        assert!(l.plain.end <= l.target_offset && l.plain.start == 4 * l.addr);
    }
}

#[test]
fn parse_finds_the_jump_and_exactly_the_rules_trestle_writes() {
    for (family, a) in [
        (Family::V4, net("10.1.0.0/24")),
        (Family::V6, net("fd00:1::/64")),
    ] {
        let (info, bytes) = table(family, VERDICT_DROP, true);
        let view = parse(family, &info, &bytes).unwrap();
        let want = wanted("a", &[a]);
        assert!(view.drops && view.chain, "{view:?}");
        assert_eq!(view.jumps, [LegacyHandle::Jump]);
        let rules: Vec<Rule> = view.rules.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(rules, want, "{family:?}");
        for (rule, handle) in &view.rules {
            assert_eq!(handle, &LegacyHandle::Rule(rule.clone()));
        }
    }
}

#[test]
fn parse_without_chain_or_drop() {
    for family in [Family::V4, Family::V6] {
        let (info, bytes) = table(family, VERDICT_ACCEPT, false);
        let view = parse(family, &info, &bytes).unwrap();
        assert_eq!(
            view,
            View {
                drops: false,
                chain: false,
                jumps: vec![],
                rules: vec![],
                foreign: 0,
                docker_user: None
            }
        );
    }
}

#[test]
fn malformed_tables_are_errors_not_panics() {
    let (info, bytes) = table(Family::V4, VERDICT_DROP, true);
    // Every truncation, and a pseudo-random corruption of every byte in turn, parse or fail cleanly.
    for len in 0..bytes.len() {
        let _ = parse(Family::V4, &info, &bytes[..len]);
    }
    let mut x: u32 = 0x2545_f491;
    for i in 0..bytes.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let mut bad = bytes.clone();
        bad[i] ^= (x as u8) | 1;
        let _ = parse(Family::V4, &info, &bad);
        let _ = parse(Family::V6, &info, &bad);
    }
    let mut zero_next = bytes.clone();
    zero_next[IPV4.next_offset..IPV4.next_offset + 2].fill(0);
    assert!(parse(Family::V4, &info, &zero_next).is_err());
    let mut off = info.clone();
    off.hook_entry[FORWARD_HOOK] += 8;
    assert!(parse(Family::V4, &off, &bytes).is_err());
    let mut no_forward = info;
    no_forward.valid_hooks = 0b1010;
    assert!(parse(Family::V4, &no_forward, &bytes).is_err());
}

#[test]
fn subnets_need_contiguous_masks() {
    assert_eq!(
        subnet(&[10, 1, 0, 0], &[255, 255, 255, 0]),
        Some(net("10.1.0.0/24"))
    );
    assert_eq!(subnet(&[10, 1, 0, 0], &[255; 4]), Some(net("10.1.0.0/32")));
    assert_eq!(subnet(&[10, 1, 0, 0], &[255, 0, 255, 0]), None);
    let mut v6 = [0; 16];
    v6[..8].fill(0xff);
    assert_eq!(
        subnet(&[0xfd; 16], &v6),
        Some(net("fdfd:fdfd:fdfd:fdfd::/64"))
    );
    v6[15] = 1;
    assert_eq!(subnet(&[0xfd; 16], &v6), None);
}

#[test]
fn script_writes_every_op_in_order() {
    let a = wanted("a", &[net("10.1.0.0/24")]);
    let ops = [
        Op::NewChain,
        Op::Append(a[0].clone()),
        Op::Append(a[1].clone()),
        Op::InsertJump(None),
        Op::InsertJump(Some(Anchor {
            index: 2,
            handle: 0,
        })),
        Op::Delete(LegacyHandle::Rule(a[0].clone())),
        Op::Delete(LegacyHandle::Rule(a[1].clone())),
        Op::DeleteJump(LegacyHandle::Jump),
        Op::DeleteChain,
    ];
    let s = "-s 10.1.0.0/24 -m comment --comment \"trestle a 10.1.0.0/24\" -j ACCEPT";
    let d = "-d 10.1.0.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \
             \"trestle a 10.1.0.0/24\" -j ACCEPT";
    let jump = "-m comment --comment \"trestle: pod networks\" -j TRESTLE-FORWARD";
    assert_eq!(
        script(&ops),
        format!(
            "*filter\n:TRESTLE-FORWARD - [0:0]\n-A TRESTLE-FORWARD {s}\n-A TRESTLE-FORWARD {d}\n\
             -I FORWARD 1 {jump}\n-I FORWARD 4 {jump}\n-D TRESTLE-FORWARD {s}\n-D TRESTLE-FORWARD {d}\n-D FORWARD {jump}\n\
             -X TRESTLE-FORWARD\nCOMMIT\n"
        )
    );
}

#[test]
fn comments_are_escaped_and_line_breaks_refused() {
    assert_eq!(quote(r#"a "b" c\d  e"#), r#""a \"b\" c\\d  e""#);
    let odd = wanted("x\ny", &[net("10.1.0.0/24")]);
    assert!(writable(Family::V4, &[Op::Append(odd[0].clone())]).is_err());
    let v6 = wanted("x", &[net("fd00::/64")]);
    assert!(writable(Family::V4, &[Op::Append(v6[0].clone())]).is_err());
    assert!(writable(Family::V6, &[Op::Append(v6[0].clone())]).is_ok());
    assert!(apply(Family::V4, &[]).is_ok(), "an empty plan runs nothing");
}

/// The privileged tests: a namespace of the test's own, iptables-legacy run inside it.
mod ns {
    use super::*;
    use std::time::Instant;
    use trestle_netns::NetNs;

    /// Runs `f` on a thread inside a fresh namespace, which dies with the test.
    fn in_fresh_namespace<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        let ns = NetNs::new_anonymous().expect("create namespace");
        ns.run(f).expect("enter namespace")
    }

    /// Runs a command in the calling thread's namespace (a child inherits the thread's); its stdout.
    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn tool(family: Family, suffix: &str) -> String {
        format!("{}-legacy{suffix}", spec(family).program)
    }

    fn table_names(family: Family) -> String {
        std::fs::read_to_string(spec(family).names).unwrap_or_default()
    }

    /// `iptables-legacy-save -t filter` without its comment lines and chain counters.
    fn saved(family: Family) -> Vec<String> {
        run(&[&tool(family, "-save"), "-t", "filter"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
            .collect()
    }

    fn rules_of(view: &View<LegacyHandle>) -> Vec<Rule> {
        view.rules.iter().map(|(r, _)| r.clone()).collect()
    }

    fn view(family: Family) -> View<LegacyHandle> {
        read(family).unwrap().expect("a filter table")
    }

    #[test]
    #[ignore = "privileged: needs root and iptables-legacy"]
    fn read_of_a_namespace_without_tables_is_none_and_creates_none() {
        for family in [Family::V4, Family::V6] {
            in_fresh_namespace(|| {
                assert!(!table_names(family).lines().any(|n| n == "filter"));
                assert!(read(family).unwrap().is_none());
                assert!(
                    !table_names(family).lines().any(|n| n == "filter"),
                    "{family:?}"
                );
            });
        }
    }

    #[test]
    #[ignore = "privileged: needs root and iptables-legacy"]
    fn a_fresh_kernel_table_has_the_header_sizes() {
        // Three built-in chains of one `ipt_standard` each, and `ipt_error`: the entry and target sizes of
        // the headers, as the kernel itself lays them out.
        for (family, entry) in [(Family::V4, 112), (Family::V6, 168)] {
            in_fresh_namespace(|| {
                run(&[&tool(family, ""), "-w", "5", "-S"]);
                let (info, bytes) = fetch(spec(family)).unwrap();
                let std = entry as u32 + 40;
                assert_eq!(info.size as usize, bytes.len());
                assert_eq!(info.size, 3 * std + entry as u32 + 64, "{family:?}");
                assert_eq!(info.valid_hooks, 0b1110);
                assert_eq!(&info.hook_entry[1..4], &[0, std, 2 * std]);
                assert_eq!(info.underflow[1..4], info.hook_entry[1..4]);
                let view = parse(family, &info, &bytes).unwrap();
                assert!(
                    !view.drops && !view.chain && view.jumps.is_empty() && view.rules.is_empty()
                );
            });
        }
    }

    #[test]
    #[ignore = "privileged: needs root and iptables-legacy"]
    fn apply_and_read_in_a_namespace_v4() {
        round_trip(
            Family::V4,
            net("10.1.0.0/24"),
            net("10.2.0.0/24"),
            "192.0.2.0/24",
        );
    }

    #[test]
    #[ignore = "privileged: needs root and iptables-legacy"]
    fn apply_and_read_in_a_namespace_v6() {
        round_trip(
            Family::V6,
            net("fd00:1::/64"),
            net("fd00:2::/64"),
            "2001:db8::/32",
        );
    }

    /// Ensure of two networks and removal of both, against the real table, which must end as it began.
    fn round_trip(family: Family, a: IpNet, b: IpNet, foreign: &str) {
        in_fresh_namespace(|| {
            let iptables = tool(family, "");
            let ipt = |args: &str| {
                let mut all = vec![iptables.as_str(), "-w", "5"];
                all.extend(args.split(' '));
                run(&all)
            };
            ipt("-P FORWARD DROP");
            ipt(&format!("-A FORWARD -s {foreign} -j ACCEPT"));
            let before = saved(family);
            let empty = view(family);
            assert!(
                empty.drops && !empty.chain && empty.jumps.is_empty() && empty.rules.is_empty()
            );

            let want_a = wanted("net a", &[a]);
            let ops = plan_ensure(&empty, &want_a);
            let started = Instant::now();
            apply(family, &ops).unwrap();
            let applied = started.elapsed();
            let started = Instant::now();
            let after = view(family);
            let read_took = started.elapsed();
            eprintln!(
                "{family:?}: apply of {} ops {applied:?}, read {read_took:?}",
                ops.len()
            );
            assert_eq!(after.jumps, [LegacyHandle::Jump]);
            assert!(after.chain && after.drops);
            assert_eq!(rules_of(&after), want_a);
            assert!(plan_ensure(&after, &want_a).is_empty());
            let c = format!("\"trestle net a {a}\"");
            assert_eq!(
                ipt("-S"),
                format!(
                    "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N TRESTLE-FORWARD\n\
                     -A FORWARD -m comment --comment \"trestle: pod networks\" -j TRESTLE-FORWARD\n\
                     -A FORWARD -s {foreign} -j ACCEPT\n\
                     -A TRESTLE-FORWARD -s {a} -m comment --comment {c} -j ACCEPT\n\
                     -A TRESTLE-FORWARD -d {a} -m conntrack --ctstate RELATED,ESTABLISHED -m comment \
                     --comment {c} -j ACCEPT\n"
                )
            );

            // Look-alikes someone else added to the chain are not trestle's.
            let look_alikes = [
                format!(
                    "TRESTLE-FORWARD -s {a} -i eth0 -m comment --comment trestle_net_a -j ACCEPT"
                ),
                format!("TRESTLE-FORWARD ! -s {a} -m comment --comment x -j ACCEPT"),
                format!("TRESTLE-FORWARD -d {a} -m comment --comment x -j ACCEPT"),
                format!(
                    "TRESTLE-FORWARD -d {a} -m conntrack --ctstate ESTABLISHED \
                     -m comment --comment x -j ACCEPT"
                ),
                format!("TRESTLE-FORWARD -s {a} -m comment --comment x -j RETURN"),
            ];
            for rule in &look_alikes {
                ipt(&format!("-A {rule}"));
            }
            assert_eq!(rules_of(&view(family)), want_a);
            for rule in &look_alikes {
                ipt(&format!("-D {rule}"));
            }

            // A second network, then the first goes.
            let want_b = wanted("net b", &[b]);
            apply(family, &plan_ensure(&view(family), &want_b)).unwrap();
            assert_eq!(
                rules_of(&view(family)),
                [want_a.clone(), want_b.clone()].concat()
            );
            assert_eq!(view(family).jumps.len(), 1);
            apply(family, &plan_remove(&view(family), "net a")).unwrap();
            let only_b = view(family);
            assert_eq!(rules_of(&only_b), want_b);
            assert_eq!(only_b.jumps, [LegacyHandle::Jump]);

            // The last one takes the chain and the jump, and the table is as it was.
            apply(family, &plan_remove(&only_b, "net b")).unwrap();
            let gone = view(family);
            assert!(!gone.chain && gone.jumps.is_empty() && gone.rules.is_empty() && gone.drops);
            assert_eq!(saved(family), before);
        });
    }

    #[test]
    #[ignore = "privileged: needs root and iptables-legacy"]
    fn odd_comments_survive_the_restore_quoting() {
        in_fresh_namespace(|| {
            run(&["iptables-legacy", "-w", "5", "-P", "FORWARD", "DROP"]);
            let want = wanted("q\"uo\\te 'x'\ttab  two", &[net("10.3.0.0/24")]);
            apply(Family::V4, &plan_ensure(&view(Family::V4), &want)).unwrap();
            assert_eq!(rules_of(&view(Family::V4)), want);
            apply(
                Family::V4,
                &plan_remove(&view(Family::V4), "q\"uo\\te 'x'\ttab  two"),
            )
            .unwrap();
            assert!(!view(Family::V4).chain);

            let broken = wanted("line\nbreak", &[net("10.4.0.0/24")]);
            let before = saved(Family::V4);
            let err = apply(Family::V4, &plan_ensure(&view(Family::V4), &broken)).unwrap_err();
            assert!(matches!(err, Error::LegacyRestore { .. }), "{err}");
            assert_eq!(saved(Family::V4), before);
        });
    }

    #[test]
    #[ignore = "privileged: needs root and iptables-legacy"]
    fn a_refused_restore_changes_nothing_and_says_why() {
        in_fresh_namespace(|| {
            run(&["iptables-legacy", "-w", "5", "-P", "FORWARD", "DROP"]);
            let before = saved(Family::V4);
            // Deleting a rule that is not there fails the whole transaction, the chain included.
            let ghost = wanted("ghost", &[net("10.5.0.0/24")]);
            let ops = [
                Op::NewChain,
                Op::Delete(LegacyHandle::Rule(ghost[0].clone())),
            ];
            let err = apply(Family::V4, &ops).unwrap_err();
            let Error::LegacyRestore { program, detail } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(*program, "iptables-legacy-restore");
            assert!(detail.contains("exit status"), "{detail}");
            assert_eq!(saved(Family::V4), before);
        });
    }
}
