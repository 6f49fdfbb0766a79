//! The kustomize reader refuses what it does not implement, so nothing in a tree is ignored.

use std::path::{Path, PathBuf};

use trestle_kube::manifest;

#[test]
fn the_loader_refuses_what_it_does_not_implement() {
    let dir = TempDir::new("loader");
    let k = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n";
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: n}\n";
    let case = |name: &str, kustomization: String, files: &[(&str, &str)]| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("kustomization.yaml"), kustomization).unwrap();
        for (f, text) in files {
            std::fs::write(d.join(f), text).unwrap();
        }
        manifest::load(&d)
            .map(|o| o.len())
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        case("ok", format!("{k}resources: [a.yaml]\n"), &[("a.yaml", cm)]),
        Ok(1)
    );
    for field in [
        "patches: []",
        "images: []",
        "namespace: x",
        "configMapGenerator: []",
        "commonLabels: {}",
    ] {
        let e = case(
            "field",
            format!("{k}resources: [a.yaml]\n{field}\n"),
            &[("a.yaml", cm)],
        )
        .unwrap_err();
        assert!(e.contains("is not implemented"), "{field}: {e}");
    }
    let e = case(
        "remote",
        format!("{k}resources: [https://example.com/x.yaml]\n"),
        &[],
    )
    .unwrap_err();
    assert!(e.contains("is not implemented"), "{e}");
    let e = case("outside", format!("{k}resources: [../ok/a.yaml]\n"), &[]).unwrap_err();
    assert!(e.contains("outside the kustomization's directory"), "{e}");
    let e = case("cycle", format!("{k}resources: [../cycle]\n"), &[]).unwrap_err();
    assert!(e.contains("includes itself"), "{e}");
    let e = case(
        "twice",
        format!("{k}resources: [a.yaml, ../ok]\n"),
        &[("a.yaml", cm)],
    )
    .unwrap_err();
    assert!(e.contains("appears twice"), "{e}");
    let e = case(
        "keys",
        format!("{k}resources: [a.yaml]\n"),
        &[("a.yaml", &format!("{cm}kind: Secret\n"))],
    )
    .unwrap_err();
    assert!(e.contains("not YAML"), "{e}");
    // A directory resource is followed wherever it is (as kustomize does for bases).
    assert_eq!(case("base", format!("{k}resources: [../ok]\n"), &[]), Ok(1));
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("trestle-kube-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
