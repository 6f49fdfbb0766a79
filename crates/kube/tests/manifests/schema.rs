//! Every object against the Kubernetes OpenAPI schemas, with kubernetes-validate (PyPI; it ships the schemas and
//! runs offline) in strict mode: an unknown field fails (k8s-openapi's Rust types would drop it silently).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use trestle_kube::manifest;

use crate::{daemon_set, objects, TREES};

/// kubernetes-validate's version, as tools/install-test-deps installs it.
const VALIDATOR: &str = "1.37.0";
/// The Kubernetes releases whose schemas every object must meet: the oldest and newest the validator carries.
const KUBERNETES: [&str; 2] = ["1.25.0", "1.37.0"];

#[test]
fn every_object_meets_the_kubernetes_schemas() {
    for tree in TREES {
        let objs = objects(tree);
        let out = kubernetes_validate(&objs).unwrap_or_else(|e| panic!("deploy/{tree}: {e}"));
        let passed = out
            .lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed "))
            .count();
        assert_eq!(
            passed,
            objs.len() * KUBERNETES.len(),
            "deploy/{tree}: kubernetes-validate said:\n{out}"
        );
    }
    // The Secret's example, outside the tree (deploy/etcd/secret.example.yaml says why).
    let example = crate::secret_example();
    let out = kubernetes_validate(&example).unwrap_or_else(|e| panic!("secret.example.yaml: {e}"));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed "))
            .count(),
        KUBERNETES.len(),
        "secret.example.yaml: kubernetes-validate said:\n{out}"
    );
    // The check can fail: the peers' classic typo, which k8s-openapi's types would drop silently. The typed view
    // of trestle-kube refuses it too.
    let (objs, _) = daemon_set("etcd");
    let mut broken = manifest::find(&objs, "DaemonSet", "trestle")
        .unwrap()
        .clone();
    broken["spec"]["template"]["spec"]["tolerations"] = serde_json::json!([{"opertor": "Exists"}]);
    let e = manifest::daemon_set(std::slice::from_ref(&broken), "trestle").unwrap_err();
    assert!(e.to_string().contains("opertor"), "{e}");
    let e = kubernetes_validate(&[broken]).expect_err("a toleration with an unknown field passed");
    assert!(e.contains("opertor"), "{e}");
}

/// Runs kubernetes-validate (strict) on the objects; its output when every one passed, else why not.
fn kubernetes_validate(objs: &[Value]) -> Result<String, String> {
    let missing = |why: String| -> ! {
        panic!("kubernetes-validate {VALIDATOR} is needed ({why}): run tools/install-test-deps")
    };
    let version = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .unwrap_or_else(|e| missing(format!("python3: {e}")));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&version.stdout),
        String::from_utf8_lossy(&version.stderr)
    );
    if said.trim() != VALIDATOR {
        missing(format!(
            "`python3 -m kubernetes_validate --version` says {:?}",
            said.trim()
        ));
    }
    // One run per release: it reads standard input once.
    let docs: Vec<String> = objs
        .iter()
        .map(|o| serde_json::to_string_pretty(o).unwrap())
        .collect();
    let mut all = String::new();
    let mut failed = false;
    for k in KUBERNETES {
        let mut child = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", k, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| missing(format!("python3: {e}")));
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(docs.join("\n---\n").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        failed |= !out.status.success() || text.lines().any(|l| !l.starts_with("INFO "));
        all.push_str(&text);
    }
    if failed {
        return Err(all);
    }
    Ok(all)
}

/// kubectl reads YAML as YAML 1.1 does (`yes` and `on` are booleans, `0400` is octal), serde_yaml as YAML 1.2: every
/// file under deploy/ must mean the same to both, or the tests would check something the cluster never sees.
/// PyYAML, which kubernetes-validate brings, reads YAML 1.1.
#[test]
fn every_file_means_the_same_in_yaml_1_1_and_1_2() {
    let mut files = Vec::new();
    let mut dirs = vec![crate::deploy()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            match p.extension().and_then(|x| x.to_str()) {
                _ if p.is_dir() => dirs.push(p),
                Some("yaml" | "yml") => files.push(p),
                _ => {}
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let ours: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect();
        let out = Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml\n\
                 docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                 print(json.dumps(docs))",
            ])
            .arg(&f)
            .output()
            .expect("python3 (tools/install-test-deps)");
        assert!(out.status.success(), "{}: {out:?}", f.display());
        let theirs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ours, theirs, "{}: YAML 1.1 reads it otherwise", f.display());
    }
}
