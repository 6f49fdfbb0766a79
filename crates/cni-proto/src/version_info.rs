//! The VERSION command's reply.

use serde_json::{json, Value};

use crate::Version;

/// The VERSION reply: `{"cniVersion": requested if supported else "1.1.0",
/// "supportedVersions": [all seven]}`.
///
/// Answering in the requested version (rather than Go's fixed library version) is
/// what the spec asks; libcni reads only `supportedVersions` and requires `cniVersion`.
pub fn version_reply(requested: &str) -> String {
    let version = Version::parse(requested).unwrap_or(Version::LATEST);
    let supported: Vec<&str> = Version::ALL.iter().map(|v| v.as_str()).collect();
    json!({"cniVersion": version.as_str(), "supportedVersions": supported}).to_string()
}

/// The `cniVersion` string of a VERSION request's stdin, `""` when absent or
/// unreadable (the reply then falls back to the latest version).
pub fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 7] = [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ];

    fn reply(requested: &str) -> Value {
        serde_json::from_str(&version_reply(requested)).unwrap()
    }

    #[test]
    fn echoes_a_supported_version() {
        for v in ALL {
            assert_eq!(reply(v), json!({"cniVersion": v, "supportedVersions": ALL}));
        }
    }

    #[test]
    fn falls_back_to_latest() {
        for v in ["", "9.9.9", "1.0", "v1.1.0"] {
            assert_eq!(
                reply(v),
                json!({"cniVersion": "1.1.0", "supportedVersions": ALL})
            );
        }
        assert!(version_reply("1.0.0").starts_with("{\"cniVersion\":\"1.0.0\","));
    }

    #[test]
    fn reads_the_requested_version() {
        assert_eq!(requested_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(requested_version(br#"{"cniVersion":4}"#), "");
        assert_eq!(requested_version(b"{}"), "");
        assert_eq!(requested_version(b""), "");
        assert_eq!(requested_version(b"[1]"), "");
    }
}
