use super::*;
use std::fs;

fn list(json: &str) -> Result<NetworkList, RuntimeError> {
    NetworkList::from_bytes(json.as_bytes(), "<test>")
}

#[test]
fn highest_known_version_wins() {
    let l = list(r#"{"name":"n","cniVersion":"0.4.0","cniVersions":["1.0.0","1.1.0","9.0.0"],"plugins":[{"type":"x"}]}"#)
        .unwrap();
    assert_eq!(l.cni_version, "1.1.0");
    let l = list(
        r#"{"name":"n","cniVersion":"1.0.0","cniVersions":["0.3.1"],"plugins":[{"type":"x"}]}"#,
    )
    .unwrap();
    assert_eq!(l.cni_version, "1.0.0");
    let l = list(r#"{"name":"n","cniVersions":["5.0.0"],"plugins":[{"type":"x"}]}"#).unwrap();
    assert_eq!(l.cni_version, "");
}

#[test]
fn bad_versions_and_keys_are_named() {
    let cases = [
        (
            r#"{"name":"n","cniVersions":["x"],"plugins":[{"type":"x"}]}"#,
            "cniVersions entry x",
        ),
        (
            r#"{"name":"n","cniVersions":"1.0.0","plugins":[{"type":"x"}]}"#,
            "cniVersions",
        ),
        (
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
            "no name",
        ),
        (r#"{"name":3,"plugins":[{"type":"x"}]}"#, "invalid name"),
        (r#"{"name":"n","plugins":[]}"#, "no plugins"),
        (r#"{"name":"n","plugins":{}}"#, "'plugins' type"),
        (
            r#"{"name":"n","plugins":[{"ipMasq":true}]}"#,
            "missing 'type'",
        ),
        (
            r#"{"name":"n","disableCheck":"yes","plugins":[{"type":"x"}]}"#,
            "disableCheck",
        ),
        (
            r#"{"name":"n","loadOnlyInlinedPlugins":true}"#,
            "loadOnlyInlinedPlugins",
        ),
        (r#"{"name":"#, "error parsing configuration list"),
    ];
    for (json, want) in cases {
        let e = list(json).unwrap_err().to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
}

#[test]
fn bools_accept_strings() {
    let l = list(r#"{"name":"n","disableCheck":"TRUE","disableGC":true,"plugins":[{"type":"x"}]}"#)
        .unwrap();
    assert!(l.disable_check && l.disable_gc && !l.load_only_inlined_plugins);
}

#[test]
fn legacy_conf_is_up_converted() {
    let l = NetworkList::from_plugin_bytes(
        br#"{"cniVersion":"0.3.1","name":"old","type":"bridge","x":1}"#,
        "f",
    )
    .unwrap();
    assert_eq!(l.name, "old");
    assert_eq!(l.cni_version, "0.3.1");
    assert_eq!(l.plugins.len(), 1);
    assert_eq!(l.plugins[0]["x"], 1);
    assert!(String::from_utf8(l.bytes)
        .unwrap()
        .starts_with(r#"{"cniVersion":"0.3.1","name":"old","plugins":["#));
}

#[test]
fn load_takes_first_conflist_by_name_then_legacy_conf() {
    let d = tempfile::tempdir().unwrap();
    let w = |f: &str, s: &str| fs::write(d.path().join(f), s).unwrap();
    w(
        "20-b.conflist",
        r#"{"name":"net","cniVersion":"1.0.0","plugins":[{"type":"second"}]}"#,
    );
    w(
        "10-a.conflist",
        r#"{"name":"net","cniVersion":"1.0.0","plugins":[{"type":"first"}]}"#,
    );
    w(
        "05-z.conf",
        r#"{"name":"net","cniVersion":"1.0.0","type":"legacy"}"#,
    );
    w(
        "06-old.conf",
        r#"{"name":"old","cniVersion":"0.3.1","type":"legacy"}"#,
    );
    w("notes.txt", "not a config");
    assert_eq!(load(d.path(), "net").unwrap().plugins[0]["type"], "first");
    assert_eq!(load(d.path(), "old").unwrap().plugins[0]["type"], "legacy");
    let e = load(d.path(), "missing").unwrap_err();
    assert!(matches!(e, RuntimeError::NotFound { .. }), "{e}");
}

#[test]
fn plugin_files_of_a_network_are_appended_unless_inlined_only() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("net")).unwrap();
    fs::write(d.path().join("net/50-extra.conf"), r#"{"type":"extra"}"#).unwrap();
    let conf = |inlined: bool| {
        format!(
            r#"{{"name":"net","cniVersion":"1.1.0","loadOnlyInlinedPlugins":{inlined},"plugins":[{{"type":"main"}}]}}"#
        )
    };
    fs::write(d.path().join("a.conflist"), conf(false)).unwrap();
    let types: Vec<_> = load(d.path(), "net")
        .unwrap()
        .plugins
        .iter()
        .map(|p| p["type"].clone())
        .collect();
    assert_eq!(types, ["main", "extra"]);
    fs::write(d.path().join("a.conflist"), conf(true)).unwrap();
    assert_eq!(load(d.path(), "net").unwrap().plugins.len(), 1);
    // A list with no inline plugins takes them all from the directory.
    fs::write(
        d.path().join("a.conflist"),
        r#"{"name":"net","cniVersion":"1.1.0"}"#,
    )
    .unwrap();
    assert_eq!(load(d.path(), "net").unwrap().plugins[0]["type"], "extra");
}

#[test]
fn missing_dir_has_no_configs() {
    let e = load(Path::new("/nonexistent/trestle-conf"), "x").unwrap_err();
    assert!(matches!(e, RuntimeError::NotFound { .. }));
}
