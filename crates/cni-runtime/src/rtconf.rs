//! The per-attachment arguments of a call, and the stdin config built from a plugin object for one call.

use crate::conf::PluginConf;
use serde_json::{Map, Value};

/// A `CNI_ARGS` pair that is not `KEY=VALUE` with a non-empty key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CNI_ARGS pair {0:?}: want KEY=VALUE")]
pub struct InvalidArgsPair(pub String);

/// The arguments of one attachment (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments, passed to a plugin as `runtimeConfig` only for the capabilities it declares.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// `CNI_ARGS` as the plugin sees it: `k=v;k=v`.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Parses `CNI_ARGS`-style text (`k=v;k=v`) into pairs; an empty string is none.
    pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, InvalidArgsPair> {
        s.split(';')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(InvalidArgsPair(p.to_owned())),
            })
            .collect()
    }
}

/// The stdin config for one plugin call: the plugin object with the list's `name` and `cniVersion`, the previous
/// result when there is one, and `runtimeConfig` holding the capability arguments the plugin declares (omitted when
/// empty, as libcni does).
pub fn request(
    plugin: &PluginConf,
    name: &str,
    version: &str,
    prev_result: Option<&Value>,
    rt: Option<&RuntimeConf>,
) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), name.into());
    conf.insert("cniVersion".into(), version.into());
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    if let Some(rt) = rt {
        let rc = runtime_config(plugin, rt);
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
    }
    serde_json::to_vec(&conf).expect("a JSON map serialises")
}

fn runtime_config(plugin: &PluginConf, rt: &RuntimeConf) -> Map<String, Value> {
    let Some(Value::Object(caps)) = plugin.get("capabilities") else {
        return Map::new();
    };
    caps.iter()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(cap, _)| Some((cap.clone(), rt.capability_args.get(cap)?.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> PluginConf {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn only_declared_capabilities_reach_runtime_config() {
        let p =
            obj(json!({"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}));
        let rt = RuntimeConf {
            capability_args: obj(
                json!({"portMappings":[{"hostPort":80}],"bandwidth":{},"ips":["10.0.0.9"]}),
            ),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&request(&p, "n", "1.0.0", None, Some(&rt))).unwrap();
        assert_eq!(
            v["runtimeConfig"],
            json!({"portMappings":[{"hostPort":80}]})
        );
        assert_eq!(v["name"], "n");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v.get("prevResult").is_none());
    }

    #[test]
    fn empty_runtime_config_is_omitted_and_prev_result_set() {
        let p = obj(json!({"type":"tuning","name":"other","cniVersion":"0.1.0"}));
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let v: Value = serde_json::from_slice(&request(
            &p,
            "n",
            "1.0.0",
            Some(&prev),
            Some(&RuntimeConf::default()),
        ))
        .unwrap();
        assert!(v.get("runtimeConfig").is_none());
        assert_eq!(v["prevResult"], prev);
        assert_eq!(v["name"], "n", "the list's name wins");
        assert_eq!(v["cniVersion"], "1.0.0", "the list's version wins");
    }

    #[test]
    fn cni_args_round_trip() {
        let pairs = RuntimeConf::parse_args("IgnoreUnknown=1;K8S_POD_NAME=a;").unwrap();
        let rt = RuntimeConf {
            args: pairs,
            ..Default::default()
        };
        assert_eq!(rt.cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=a");
        assert_eq!(
            RuntimeConf::parse_args("a=1;novalue").unwrap_err(),
            InvalidArgsPair("novalue".into())
        );
        assert_eq!(
            RuntimeConf::parse_args("=x").unwrap_err().to_string(),
            "invalid CNI_ARGS pair \"=x\": want KEY=VALUE"
        );
        assert!(RuntimeConf::parse_args("").unwrap().is_empty());
    }
}
