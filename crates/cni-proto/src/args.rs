//! Strict `CNI_ARGS` parsing, like Go's `types.LoadArgs`.
//!
//! Go reports these failures as untyped errors, which the skel turns into 999. We use
//! code 4 ([`ErrorCode::InvalidEnvironment`]): `CNI_ARGS` is an environment variable,
//! and the message names the offending pairs as code 4 requires. Messages keep Go's text.

use std::net::IpAddr;

use crate::{CniError, ErrorCode};

/// The keys Kubernetes runtimes send (always with `IgnoreUnknown=1`).
pub const K8S_KEYS: [&str; 4] = [
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// The key that, set to `1`/`true` (any case) anywhere in the string, lets unknown keys through.
pub const IGNORE_UNKNOWN: &str = "IgnoreUnknown";

/// The key for requested IPs (`IP=ip[/prefix][,ip...]`).
pub const IP_KEY: &str = "IP";

/// Parsed `CNI_ARGS`: the pairs whose keys the caller knows, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
    ignore_unknown: bool,
}

fn invalid(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

/// Go's `UnmarshallableBool`: `1`/`true`/`0`/`false`, case-insensitive.
fn parse_bool(pair: &str, value: &str) -> Result<bool, CniError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(invalid(format!(
            "ARGS: error parsing value of pair {pair:?}: boolean unmarshal error: invalid input {other}"
        ))),
    }
}

impl CniArgs {
    /// Parses `s` (`K=V;K2=V2`) accepting the keys in `known` (case-sensitive) plus
    /// `IgnoreUnknown`.
    ///
    /// Empty `s` is no pairs. Each `;`-separated pair must split on `=` into exactly
    /// two parts, so a value containing `=`, an empty pair or a trailing `;` is an
    /// error. Unknown keys are an error listing every unknown pair, unless
    /// `IgnoreUnknown` is true anywhere; they are then dropped.
    pub fn parse(s: &str, known: &[&str]) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        if s.is_empty() {
            return Ok(args);
        }
        let mut unknown = Vec::new();
        for pair in s.split(';') {
            let kv: Vec<&str> = pair.split('=').collect();
            let [key, value] = kv[..] else {
                return Err(invalid(format!("ARGS: invalid pair {pair:?}")));
            };
            if key == IGNORE_UNKNOWN {
                args.ignore_unknown = parse_bool(pair, value)?;
            } else if known.contains(&key) {
                args.pairs.push((key.to_owned(), value.to_owned()));
            } else {
                unknown.push(format!("{pair:?}"));
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            return Err(invalid(format!(
                "ARGS: unknown args [{}]",
                unknown.join(" ")
            )));
        }
        Ok(args)
    }

    /// The value of a known key; the last one wins when repeated (as in Go).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `IgnoreUnknown` was true.
    pub fn ignore_unknown(&self) -> bool {
        self.ignore_unknown
    }

    /// The known pairs, in order (repeats included).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The addresses in `IP=a[,b]`, each an IP with an optional `/prefix` (dropped after
    /// checking it), surrounding spaces trimmed. No `IP` key: empty. Code 4 on a bad item.
    pub fn ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let Some(value) = self.get(IP_KEY) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .map(|item| parse_ip_item(item.trim()))
            .collect()
    }
}

/// Parses `ip` or `ip/prefix` (the prefix must fit the family).
pub(crate) fn parse_ip_item(item: &str) -> Result<IpAddr, CniError> {
    let parsed = match item.split_once('/') {
        None => item.parse::<IpAddr>().ok(),
        Some(_) => item.parse::<ipnet::IpNet>().ok().map(|n| n.addr()),
    };
    parsed.ok_or_else(|| invalid(format!("ARGS: invalid IP {item:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str, known: &[&str]) -> CniError {
        let e = CniArgs::parse(s, known).unwrap_err();
        assert_eq!(e.code, 4, "{s:?}");
        e
    }

    #[test]
    fn empty_is_no_pairs() {
        let a = CniArgs::parse("", &[]).unwrap();
        assert_eq!(a.pairs().count(), 0);
        assert!(!a.ignore_unknown());
        assert!(a.ips().unwrap().is_empty());
    }

    #[test]
    fn known_pairs_in_order_and_last_wins() {
        let a = CniArgs::parse("IP=10.0.0.2;MAC=aa:bb;IP=10.0.0.3", &["IP", "MAC"]).unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.3"));
        assert_eq!(a.get("MAC"), Some("aa:bb"));
        assert_eq!(a.get("ip"), None);
        let pairs: Vec<_> = a.pairs().collect();
        assert_eq!(
            pairs,
            [("IP", "10.0.0.2"), ("MAC", "aa:bb"), ("IP", "10.0.0.3")]
        );
        assert_eq!(CniArgs::parse("IP=", &["IP"]).unwrap().get("IP"), Some(""));
    }

    #[test]
    fn malformed_pairs() {
        for (s, pair) in [
            ("IP=a=b", "IP=a=b"),
            ("IP=1.2.3.4;", ""),
            (";IP=1.2.3.4", ""),
            ("IP", "IP"),
            ("IP=1;;MAC=2", ""),
            ("IgnoreUnknown=1;FOO", "FOO"),
            ("==", "=="),
        ] {
            let e = err(s, &["IP", "MAC"]);
            assert_eq!(e.msg, format!("ARGS: invalid pair {pair:?}"), "{s:?}");
        }
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let e = err("FOO=1;IP=1.2.3.4;bar=x", &["IP"]);
        assert_eq!(e.msg, r#"ARGS: unknown args ["FOO=1" "bar=x"]"#);
        // Keys are case-sensitive: "ip" is not "IP".
        let e = err("ip=1.2.3.4", &["IP"]);
        assert_eq!(e.msg, r#"ARGS: unknown args ["ip=1.2.3.4"]"#);
        let e = err("=x", &["IP"]);
        assert_eq!(e.msg, r#"ARGS: unknown args ["=x"]"#);
        // IgnoreUnknown is itself case-sensitive as a key.
        err("ignoreunknown=1;FOO=1", &[]);
        for flag in ["1", "true", "TRUE", "True"] {
            for s in [
                format!("IgnoreUnknown={flag};FOO=1;IP=1.2.3.4"),
                format!("FOO=1;IP=1.2.3.4;IgnoreUnknown={flag}"),
            ] {
                let a = CniArgs::parse(&s, &["IP"]).unwrap();
                assert!(a.ignore_unknown());
                assert_eq!(a.get("IP"), Some("1.2.3.4"));
                assert_eq!(a.get("FOO"), None, "unknown keys are dropped");
            }
        }
        for off in ["0", "false", "FALSE"] {
            err(&format!("IgnoreUnknown={off};FOO=1"), &[]);
        }
        // The last IgnoreUnknown wins, like any repeated key in Go.
        err("IgnoreUnknown=1;FOO=1;IgnoreUnknown=0", &[]);
    }

    #[test]
    fn bad_ignore_unknown_value() {
        let e = err("IgnoreUnknown=yes", &[]);
        assert_eq!(
            e.msg,
            r#"ARGS: error parsing value of pair "IgnoreUnknown=yes": boolean unmarshal error: invalid input yes"#
        );
        err("IgnoreUnknown=", &[]);
    }

    #[test]
    fn kubernetes_args() {
        let s = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                 K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1";
        let a = CniArgs::parse(s, &K8S_KEYS).unwrap();
        assert_eq!(a.get("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(a.get("K8S_POD_INFRA_CONTAINER_ID"), Some("abc123"));
        // Without IgnoreUnknown and without the keys declared, it fails.
        err(&s["IgnoreUnknown=1;".len()..], &["IP"]);
    }

    #[test]
    fn ips_parsing() {
        let ips = |s: &str| CniArgs::parse(s, &["IP"]).unwrap().ips();
        assert_eq!(
            ips("IP=10.0.0.5").unwrap(),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            ips("IP=10.0.0.5/24, 2001:db8::5 ,2001:db8::6/64").unwrap(),
            ["10.0.0.5", "2001:db8::5", "2001:db8::6"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        for bad in [
            "IP=",
            "IP=10.0.0",
            "IP=10.0.0.1/33",
            "IP=::1/129",
            "IP=1.2.3.4,",
            "IP=x/24",
        ] {
            let e = ips(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.starts_with("ARGS: invalid IP"), "{}", e.msg);
        }
    }
}
