//! Reading `deploy/`'s kustomize trees.
//!
//! [`load`] follows a kustomization's `resources` the way `kubectl apply -k` does (files and directories, in order,
//! files only inside the kustomization's own directory) and returns the objects as plain JSON. It implements
//! nothing else of kustomize and refuses every other field (`patches`, `images`, generators, `namespace`, ...), so
//! nothing in a tree is silently ignored. [`daemon_set`] and [`config_map_data`] then give typed views of the
//! objects, for the tests' policy checks and for running the DaemonSet's containers as a kubelet would; those
//! views, too, refuse fields they do not model (a `lifecycle` hook, an `envFrom`, an `emptyDir` volume), so that a
//! manifest change the kubelet emulation would not honour fails loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

mod pod;

pub use pod::*;

/// Why a tree or an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("{}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not YAML.
    #[error("{}: not YAML", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A directory named as a resource has no kustomization file, or more than one.
    #[error("{}: {what}", dir.display())]
    Kustomization {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// A kustomization uses a field (or a remote resource) this reader does not implement.
    #[error("{}: `{field}` is not implemented here (only local `resources`)", path.display())]
    Unsupported {
        /// The kustomization file.
        path: PathBuf,
        /// The field, or the remote resource.
        field: String,
    },
    /// A file resource lies outside its kustomization's directory (kustomize's load restriction).
    #[error("{}: outside the kustomization's directory {}", path.display(), root.display())]
    OutsideRoot {
        /// The file.
        path: PathBuf,
        /// The kustomization's directory.
        root: PathBuf,
    },
    /// A kustomization includes itself, directly or not.
    #[error("{}: includes itself", dir.display())]
    Cycle {
        /// The directory.
        dir: PathBuf,
    },
    /// A document is not a Kubernetes object, or a kustomization is malformed.
    #[error("{}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The same object (kind, namespace, name) comes twice, which kustomize refuses.
    #[error("{id} appears twice")]
    Duplicate {
        /// `Kind namespace/name`.
        id: String,
    },
    /// No object of that kind and name.
    #[error("no {kind} {name}")]
    NotFound {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// An object does not fit its typed view.
    #[error("{kind} {name}: {what}")]
    Object {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// What is wrong.
        what: String,
    },
}

/// The kustomization file names kustomize accepts.
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Every object of the kustomize tree at `dir`, in the order of its `resources` (depth first).
pub fn load(dir: &Path) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    load_into(dir, &mut Vec::new(), &mut out)?;
    let mut seen = std::collections::HashSet::new();
    for o in &out {
        let id = format!(
            "{} {}/{}",
            str_at(o, "/kind"),
            str_at(o, "/metadata/namespace"),
            str_at(o, "/metadata/name")
        );
        if !seen.insert(id.clone()) {
            return Err(Error::Duplicate { id });
        }
    }
    Ok(out)
}

fn load_into(dir: &Path, stack: &mut Vec<PathBuf>, out: &mut Vec<Value>) -> Result<(), Error> {
    let root = dir.canonicalize().map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    if stack.contains(&root) {
        return Err(Error::Cycle { dir: root });
    }
    let found: Vec<PathBuf> = KUSTOMIZATION_FILES
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.is_file())
        .collect();
    let file = match found.as_slice() {
        [one] => one.clone(),
        [] => return Err(kustomization_error(&root, "no kustomization.yaml")),
        _ => {
            return Err(kustomization_error(
                &root,
                "more than one kustomization file",
            ))
        }
    };
    let k = match read_yaml(&file)?.as_slice() {
        [Value::Object(k)] => k.clone(),
        _ => return Err(invalid(&file, "not one mapping")),
    };
    for (field, value) in &k {
        match (field.as_str(), value) {
            ("apiVersion", Value::String(v)) if v == "kustomize.config.k8s.io/v1beta1" => {}
            ("kind", Value::String(v)) if v == "Kustomization" => {}
            ("resources", _) => {}
            ("apiVersion" | "kind", _) => return Err(invalid(&file, &format!("{field}: {value}"))),
            _ => {
                return Err(Error::Unsupported {
                    path: file,
                    field: field.clone(),
                })
            }
        }
    }
    let resources = match k.get("resources") {
        None => Vec::new(),
        Some(Value::Array(r)) => r.clone(),
        Some(_) => return Err(invalid(&file, "resources: not a list")),
    };
    stack.push(root.clone());
    for r in resources {
        let Value::String(r) = r else {
            return Err(invalid(&file, "resources: an entry is not a string"));
        };
        if r.contains("://") || r.starts_with("git@") || r.starts_with("github.com/") {
            return Err(Error::Unsupported {
                path: file,
                field: r,
            });
        }
        let path = root.join(&r);
        if path.is_dir() {
            load_into(&path, stack, out)?;
            continue;
        }
        let canonical = path.canonicalize().map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        if !canonical.starts_with(&root) {
            return Err(Error::OutsideRoot { path, root });
        }
        for doc in read_yaml(&canonical)? {
            check_object(&canonical, &doc)?;
            out.push(doc);
        }
    }
    stack.pop();
    Ok(())
}

fn kustomization_error(dir: &Path, what: &'static str) -> Error {
    Error::Kustomization {
        dir: dir.to_path_buf(),
        what,
    }
}

fn invalid(path: &Path, what: &str) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// The non-empty documents of a YAML file. Read through `serde_yaml::Value`, which refuses duplicate keys (the
/// API server would see only one of them).
pub fn read_yaml(path: &Path) -> Result<Vec<Value>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let yaml_error = |source| Error::Yaml {
        path: path.to_path_buf(),
        source,
    };
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).map_err(yaml_error)?;
        if v.is_null() {
            continue;
        }
        let v = serde_json::to_value(v).map_err(|e| invalid(path, &e.to_string()))?;
        docs.push(v);
    }
    Ok(docs)
}

fn check_object(path: &Path, doc: &Value) -> Result<(), Error> {
    for field in ["/apiVersion", "/kind", "/metadata/name"] {
        if str_at(doc, field).is_empty() {
            return Err(invalid(path, &format!("a document without {field}")));
        }
    }
    if str_at(doc, "/apiVersion").starts_with("kustomize.config.k8s.io") {
        return Err(invalid(path, "a kustomization listed as a resource file"));
    }
    Ok(())
}

/// The string at a JSON pointer, or "" when there is none.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value, Error> {
    objects
        .iter()
        .find(|o| str_at(o, "/kind") == kind && str_at(o, "/metadata/name") == name)
        .ok_or_else(|| Error::NotFound {
            kind: kind.into(),
            name: name.into(),
        })
}

fn typed<T: serde::de::DeserializeOwned>(o: &Value, kind: &str, name: &str) -> Result<T, Error> {
    serde_json::from_value(o.clone()).map_err(|e| object_error(kind, name, e.to_string()))
}

fn object_error(kind: &str, name: &str, what: String) -> Error {
    Error::Object {
        kind: kind.into(),
        name: name.into(),
        what,
    }
}

/// The `data` of the ConfigMap `name`.
pub fn config_map_data(objects: &[Value], name: &str) -> Result<BTreeMap<String, String>, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ConfigMap {
        #[allow(dead_code)]
        api_version: String,
        #[allow(dead_code)]
        kind: String,
        #[allow(dead_code)]
        metadata: ObjectMeta,
        #[serde(default)]
        data: BTreeMap<String, String>,
    }
    let c: ConfigMap = typed(find(objects, "ConfigMap", name)?, "ConfigMap", name)?;
    Ok(c.data)
}

/// The DaemonSet `name`, checked for what its typed view cannot express (one source per env var and volume, every
/// mount naming a volume).
pub fn daemon_set(objects: &[Value], name: &str) -> Result<DaemonSet, Error> {
    let d: DaemonSet = typed(find(objects, "DaemonSet", name)?, "DaemonSet", name)?;
    let pod = &d.spec.template.spec;
    let bad = |what: String| object_error("DaemonSet", name, what);
    for v in &pod.volumes {
        let n = [
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
        ];
        if n.iter().filter(|s| **s).count() != 1 {
            return Err(bad(format!("volume {}: not exactly one source", v.name)));
        }
    }
    for c in pod.all_containers() {
        for e in &c.env {
            let sources = match &e.value_from {
                None => 0,
                Some(f) => [
                    f.field_ref.is_some(),
                    f.config_map_key_ref.is_some(),
                    f.secret_key_ref.is_some(),
                ]
                .iter()
                .filter(|s| **s)
                .count(),
            };
            if sources + usize::from(e.value.is_some()) != 1 {
                return Err(bad(format!(
                    "container {} env {}: not exactly one source",
                    c.name, e.name
                )));
            }
        }
        for m in &c.volume_mounts {
            if pod.volume(&m.name).is_none() {
                return Err(bad(format!(
                    "container {} mounts unknown volume {}",
                    c.name, m.name
                )));
            }
        }
    }
    Ok(d)
}

/// Expands `$(VAR)` references as the kubelet does in `command`, `args` and env values: a defined variable is
/// replaced, an undefined one is left as written, `$$` is one `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    out.push_str(&lookup(name).unwrap_or_else(|| format!("$({name})")));
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The variables `input` refers to as `$(VAR)` (after `$$` escapes).
pub fn references(input: &str) -> Vec<String> {
    let seen = std::cell::RefCell::new(Vec::new());
    expand(input, |name| {
        seen.borrow_mut().push(name.to_string());
        Some(String::new())
    });
    seen.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("--a=$(A)", vars), "--a=x");
        assert_eq!(expand("$(B)-$(A)", vars), "$(B)-x");
        assert_eq!(expand("$$(A) $$ $", vars), "$(A) $ $");
        assert_eq!(expand("$(A", vars), "$(A");
        assert_eq!(expand("a$b", vars), "a$b");
        assert_eq!(references("--x=$(A) $$(B) $(C)"), ["A", "C"]);
    }
}
