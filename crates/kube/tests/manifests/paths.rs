//! Every path the binaries touch through their flags (or find namespaces in) lies on a mount of their container,
//! read-only where only read, at the host path the plugins on the host use; and every mount is used.

use std::path::{Path, PathBuf};

use trestle_kube::manifest;

use crate::{daemon_set, help, value, NETNS_DIRS, TREES};

#[test]
fn every_path_the_binaries_use_is_on_a_mount_and_every_mount_is_used() {
    for tree in TREES {
        let (objs, ds) = daemon_set(tree);
        let pod = ds.pod();
        let conf = manifest::config_map_data(&objs, "trestle-config").unwrap();
        for c in pod.all_containers() {
            let defaults = help(c);
            let v = |flag: &str| value(c, &defaults, flag);
            // (path, written): every path a flag makes the binary touch.
            let mut used: Vec<(String, bool)> = Vec::new();
            if c.name == "install" {
                used.push((v("--bin-dir").unwrap(), true));
                let host = pod.host_path(c, &used[0].0);
                assert_eq!(
                    host.as_deref(),
                    Some(Path::new("/opt/cni/bin")),
                    "deploy/{tree}: install --bin-dir"
                );
            } else {
                for f in [
                    "--socket",
                    "--state-dir",
                    "--delete-queue",
                    "--host-local-dir",
                    "--cni-conflist-path",
                ] {
                    used.extend(v(f).filter(|p| !p.is_empty()).map(|p| (p, true)));
                }
                for f in [
                    "--cni-cache-dir",
                    "--cni-conflist-source",
                    "--etcd-ca",
                    "--etcd-cert",
                    "--etcd-key",
                ] {
                    used.extend(v(f).filter(|p| !p.is_empty()).map(|p| (p, false)));
                }
                used.extend(NETNS_DIRS.map(|d| (d.to_string(), false)));
                // Shared with the plugins on the host, which take them from the conflist: the same path there.
                for f in ["--socket", "--delete-queue"] {
                    let p = v(f).unwrap();
                    assert_eq!(
                        pod.host_path(c, &p),
                        Some(PathBuf::from(&p)),
                        "deploy/{tree}: {f} {p} on the host"
                    );
                }
                for d in NETNS_DIRS {
                    let m = c.mount_covering(d).unwrap();
                    assert_eq!(
                        m.mount_propagation.as_deref(),
                        Some("HostToContainer"),
                        "deploy/{tree}: {d}"
                    );
                    assert_eq!(
                        pod.host_path(c, d),
                        Some(PathBuf::from("/run/netns")),
                        "deploy/{tree}: {d}"
                    );
                }
                if v("--store").as_deref() == Some("etcd") {
                    for (f, key) in [
                        ("--etcd-ca", "ca.crt"),
                        ("--etcd-cert", "tls.crt"),
                        ("--etcd-key", "tls.key"),
                    ] {
                        let p = v(f).unwrap_or_else(|| panic!("deploy/{tree}: no {f}"));
                        let m = c.mount_covering(&p).unwrap();
                        let s = pod
                            .volume(&m.name)
                            .unwrap()
                            .secret
                            .as_ref()
                            .expect("etcd TLS from a Secret");
                        assert_eq!(s.secret_name, "trestle-etcd-tls");
                        assert_eq!(
                            s.default_mode,
                            Some(0o400),
                            "deploy/{tree}: the key is root's alone"
                        );
                        let rel = Path::new(&p).strip_prefix(&m.mount_path).unwrap();
                        assert!(
                            s.items
                                .iter()
                                .any(|i| i.key == key && Path::new(&i.path) == rel),
                            "deploy/{tree}: {f}"
                        );
                    }
                }
                let src = v("--cni-conflist-source").unwrap();
                let m = c.mount_covering(&src).unwrap();
                let cm = pod
                    .volume(&m.name)
                    .unwrap()
                    .config_map
                    .as_ref()
                    .expect("the conflist from the ConfigMap");
                assert_eq!(cm.name, "trestle-config");
                let rel = Path::new(&src).strip_prefix(&m.mount_path).unwrap();
                let item = cm
                    .items
                    .iter()
                    .find(|i| Path::new(&i.path) == rel)
                    .expect("the source is an item");
                assert!(
                    conf.contains_key(&item.key),
                    "deploy/{tree}: no key {}",
                    item.key
                );
                assert!(
                    m.sub_path.is_none(),
                    "a subPath mount never sees ConfigMap updates"
                );
            }
            for (p, written) in &used {
                let m = c
                    .mount_covering(p)
                    .unwrap_or_else(|| panic!("deploy/{tree}: {}: {p} is on no mount", c.name));
                assert_eq!(
                    m.read_only, !written,
                    "deploy/{tree}: {}: {p} on {} (readOnly)",
                    c.name, m.mount_path
                );
            }
            for m in &c.volume_mounts {
                let covers = used
                    .iter()
                    .any(|(p, _)| Path::new(p).starts_with(&m.mount_path));
                assert!(
                    covers,
                    "deploy/{tree}: {}: {} is mounted but not used",
                    c.name, m.mount_path
                );
            }
        }
        for vol in &pod.volumes {
            assert!(
                pod.all_containers()
                    .any(|c| c.volume_mounts.iter().any(|m| m.name == vol.name)),
                "{}",
                vol.name
            );
            if let Some(h) = &vol.host_path {
                assert_eq!(
                    h.kind.as_deref(),
                    Some("DirectoryOrCreate"),
                    "deploy/{tree}: {}",
                    vol.name
                );
            }
        }
    }
}
