use super::archive::reader::{check_layout, entries};
use super::*;

/// Stand-ins for the binaries: not parseable as ELF, so static as far as the image is concerned.
fn binaries() -> Vec<Binary> {
    BINARIES
        .iter()
        .map(|&name| Binary {
            name,
            path: PathBuf::from(format!("/build/{name}")),
            bytes: format!("static {name}").into_bytes(),
        })
        .collect()
}

/// A 64-bit little-endian ELF whose one program header is a `PT_INTERP` naming `loader`.
fn dynamic_elf(loader: &str) -> Vec<u8> {
    let mut e = vec![0u8; 120];
    e[..6].copy_from_slice(b"\x7fELF\x02\x01");
    e[32..40].copy_from_slice(&64u64.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&1u16.to_le_bytes());
    e[64..68].copy_from_slice(&3u32.to_le_bytes());
    e[72..80].copy_from_slice(&120u64.to_le_bytes());
    e[96..104].copy_from_slice(&(loader.len() as u64 + 1).to_le_bytes());
    e.extend_from_slice(loader.as_bytes());
    e.push(0);
    e
}

fn tags() -> Vec<String> {
    vec![default_tag()]
}

#[test]
fn the_image_holds_the_binaries_in_usr_local_bin_and_runs_trestled() {
    let archive = build(&binaries(), &[], &tags(), 0).unwrap();
    let (manifest, config, layer) = check_layout(&archive);
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!([format!("localhost/trestle:{VERSION}")])
    );
    assert_eq!(config["architecture"], archive::oci_arch());
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    let run = &config["config"];
    assert_eq!(run["Env"], serde_json::json!(["PATH=/usr/local/bin"]));
    assert_eq!(run["Cmd"], serde_json::json!(["trestled"]));
    assert!(run.get("Entrypoint").is_none(), "{run}");
    assert_eq!(run["Labels"]["org.opencontainers.image.version"], VERSION);
    assert_eq!(run["Labels"]["org.opencontainers.image.title"], "trestle");
    let e = entries(&layer);
    let names: Vec<&str> = e.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tmp/",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/trestle",
            "usr/local/bin/trestle-ipam",
            "usr/local/bin/trestlectl",
            "usr/local/bin/trestled",
        ]
    );
    assert_eq!(e[0].mode, 0o1777);
    for (r, b) in e[4..].iter().zip(binaries()) {
        assert_eq!((r.kind, r.mode, &r.data), (b'0', 0o755, &b.bytes));
    }
    assert!(e.iter().all(|r| r.owner == (0, 0) && r.mtime == 0));
}

#[test]
fn the_same_binaries_give_the_same_archive_and_image_id() {
    let first = build(&binaries(), &[], &tags(), 0).unwrap();
    assert_eq!(first, build(&binaries(), &[], &tags(), 0).unwrap());
    let mut changed = binaries();
    changed[3].bytes.push(b'!');
    assert_ne!(
        first.image_id,
        build(&changed, &[], &tags(), 0).unwrap().image_id
    );
    // SOURCE_DATE_EPOCH is every time in the image.
    let dated = build(&binaries(), &[], &tags(), 1_735_689_600).unwrap();
    assert_ne!(first.image_id, dated.image_id);
    let (_, config, layer) = check_layout(&dated);
    assert_eq!(config["created"], "2025-01-01T00:00:00Z");
    assert!(entries(&layer).iter().all(|r| r.mtime == 1_735_689_600));
    assert!(entries(&dated.bytes)
        .iter()
        .all(|r| r.mtime == 1_735_689_600));
}

#[test]
fn the_same_files_on_disk_give_the_same_archive_file() {
    let d = tempfile::tempdir().unwrap();
    for b in binaries() {
        std::fs::write(d.path().join(b.name), &b.bytes).unwrap();
    }
    let out = |n: &str| {
        let args = Args {
            from: Some(d.path().to_owned()),
            tags: vec![
                "localhost/trestle:test".into(),
                "registry.example:5000/t/trestle:x".into(),
            ],
            out: Some(d.path().join(n)),
            load: false,
            source_date_epoch: 0,
        };
        let mut stdout = Vec::new();
        run(&args, &mut stdout).unwrap();
        (
            std::fs::read(d.path().join(n)).unwrap(),
            String::from_utf8(stdout).unwrap(),
        )
    };
    let (a, said_a) = out("a.tar");
    let (b, said_b) = out("b.tar");
    assert_eq!(a, b);
    assert_eq!(said_a, said_b);
    let id = build(&binaries(), &[], &["localhost/trestle:test".into()], 0)
        .unwrap()
        .image_id;
    assert!(
        said_a.starts_with("tag: localhost/trestle:test\ntag: registry.example:5000/t/trestle:x\n")
    );
    assert!(said_a.contains(&format!("\nimage-id: {id}\n")), "{said_a}");
    assert!(
        said_a.contains(&format!("\narchive: {} bytes (", a.len())),
        "{said_a}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_dynamically_linked_binary_is_refused_naming_its_loader() {
    let mut bins = binaries();
    bins[3].bytes = dynamic_elf("/lib64/ld-linux-x86-64.so.2");
    let e = build(&bins, &[], &tags(), 0).unwrap_err();
    let said = e.to_string();
    assert!(
        matches!(e, Error::Dynamic { ref name, .. } if name == "trestled"),
        "{said}"
    );
    assert!(
        said.contains("/build/trestled is linked dynamically"),
        "{said}"
    );
    assert!(said.contains("/lib64/ld-linux-x86-64.so.2"), "{said}");
    assert!(
        said.contains("TRESTLE_LINK=glibc cargo build --release --locked -p trestled"),
        "{said}"
    );
    let mut bins = binaries();
    bins[0].bytes = dynamic_elf("/lib/ld-musl-x86_64.so.1");
    let said = build(&bins, &[], &tags(), 0).unwrap_err().to_string();
    assert!(
        said.contains("/build/trestle is linked dynamically"),
        "{said}"
    );
    assert!(said.contains("TRESTLE_LINK=dynamic"), "{said}");
    // A real one: the machine's shell.
    if let Ok(sh) = std::fs::read("/bin/sh") {
        let mut bins = binaries();
        bins[1].bytes = sh;
        assert!(matches!(
            build(&bins, &[], &tags(), 0),
            Err(Error::Dynamic { .. })
        ));
    }
}

#[test]
fn a_missing_binary_is_named() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("trestle"), b"x").unwrap();
    let e = read_binaries(d.path()).unwrap_err();
    assert!(
        e.to_string().ends_with("trestle-ipam"),
        "the first one missing: {e}"
    );
}

#[test]
fn references_docker_would_refuse_are_refused() {
    for good in [
        "localhost/trestle:0.1.0",
        "trestle:latest",
        "registry.example:5000/team/trestle:v1.2_3",
        "a/b.c__d-e--f:X",
    ] {
        check_reference(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, why) in [
        ("localhost/trestle", "no tag"),
        ("localhost:5000/trestle", "no tag"),
        ("Localhost/Trestle:1", "lower-case"),
        ("trestle:.hidden", "a tag is"),
        ("trestle:", "a tag is"),
        ("trestle@sha256:abcd", "digest"),
        ("a//b:1", "components"),
        ("-a:1", "components"),
        ("bad host:1/x:1", "registry host"),
        ("x/Bad:1", "lower-case"),
        ("host:port/x:1", "registry host"),
    ] {
        let e = check_reference(bad).expect_err(bad).to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn writing_replaces_the_file_whole() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("image.tar");
    std::fs::write(&path, b"old").unwrap();
    write_atomically(&path, b"new archive").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new archive");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    let e = write_atomically(&d.path().join("no/such/dir/x.tar"), b"x").unwrap_err();
    assert!(matches!(e, Error::Write { .. }), "{e}");
}

#[test]
fn the_summary_is_one_key_per_line() {
    let bins = binaries();
    let archive = build(&bins, &[], &tags(), 0).unwrap();
    let s = summary(&tags(), &archive, &bins, &[]);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], format!("tag: localhost/trestle:{VERSION}"));
    assert_eq!(lines[1], format!("image-id: {}", archive.image_id));
    assert_eq!(
        lines[2],
        format!("archive: {} bytes (0.0 MiB)", archive.bytes.len())
    );
    let total: usize = bins.iter().map(|b| b.bytes.len()).sum();
    assert_eq!(
        lines[3],
        format!("binaries: {total} bytes (0.0 MiB) uncompressed")
    );
    assert_eq!(
        lines[4],
        "  trestle: 14 bytes (0.0 MiB), not a 64-bit little-endian ELF"
    );
    assert_eq!(lines.len(), 8);
}

#[test]
fn a_dynamically_linked_binary_comes_with_its_loader_and_libraries() {
    let mut bins = binaries();
    bins[3].bytes = dynamic_elf("/lib64/ld-linux-x86-64.so.2");
    let libs = vec![
        Library {
            path: "/lib64/ld-linux-x86-64.so.2".into(),
            bytes: b"loader".to_vec(),
        },
        Library {
            path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
            bytes: b"libc".to_vec(),
        },
    ];
    let archive = build(&bins, &libs, &tags(), 0).unwrap();
    let (_, _, layer) = check_layout(&archive);
    let e = entries(&layer);
    let find = |n: &str| {
        e.iter()
            .find(|r| r.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    assert_eq!(find("lib64/ld-linux-x86-64.so.2").data, b"loader");
    assert_eq!(find("lib/x86_64-linux-gnu/libc.so.6").data, b"libc");
    // Every directory of a library's path is in the layer, before it.
    for d in ["lib/", "lib/x86_64-linux-gnu/", "lib64/"] {
        assert_eq!(find(d).kind, b'5', "{d}");
    }
    let s = summary(&tags(), &archive, &bins, &libs);
    assert!(s.contains("libraries: 10 bytes"), "{s}");
    // A loader that is not among the libraries is still refused.
    let wrong = &libs[1..];
    assert!(matches!(
        build(&bins, wrong, &tags(), 0),
        Err(Error::Dynamic { .. })
    ));
}

#[test]
fn ldd_output_gives_the_loader_and_libraries() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f80)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f81)\n";
    assert_eq!(
        parse_ldd(text),
        [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2"
        ]
    );
    assert!(parse_ldd("\tstatically linked\n").is_empty());
}

#[test]
fn the_machine_s_own_dynamic_binaries_have_their_libraries_found() {
    // /bin/sh is dynamically linked on every glibc distribution.
    let sh = std::fs::read("/bin/sh").unwrap();
    if crate::binary::interpreter(&sh).is_none() {
        return;
    }
    let bins = vec![Binary {
        name: "trestled",
        path: "/bin/sh".into(),
        bytes: sh,
    }];
    let libs = runtime_libraries(&bins).unwrap();
    let loader = crate::binary::interpreter(&bins[0].bytes).unwrap();
    assert!(libs.iter().any(|l| l.path == loader), "{libs:?}");
    assert!(libs.iter().any(|l| l.path.contains("libc.so")), "{libs:?}");
}

#[test]
fn a_dynamically_linked_plugin_is_refused_even_with_its_libraries() {
    let mut bins = binaries();
    bins[0].bytes = dynamic_elf("/lib64/ld-linux-x86-64.so.2");
    let libs = vec![Library {
        path: "/lib64/ld-linux-x86-64.so.2".into(),
        bytes: b"loader".to_vec(),
    }];
    let e = build(&bins, &libs, &tags(), 0).unwrap_err();
    assert!(
        matches!(e, Error::Dynamic { ref name, .. } if name == "trestle"),
        "{e}"
    );
    assert!(e.to_string().contains("a plugin runs on the node"), "{e}");
}
