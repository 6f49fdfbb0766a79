//! The CNI error object (`{"code","msg","details"}`) and the well-known codes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Version;

/// Well-known CNI error codes (spec §"Error"; 8 and 999 are Go-library codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// 1: the config's `cniVersion` is not supported, or too old for the command.
    IncompatibleVersion = 1,
    /// 2: an unsupported config field; the message names key and value.
    UnsupportedField = 2,
    /// 3: the container is unknown; no cleanup is needed.
    UnknownContainer = 3,
    /// 4: invalid or missing `CNI_*` environment variables; the message names them.
    InvalidEnvironment = 4,
    /// 5: an I/O failure, e.g. reading stdin.
    Io = 5,
    /// 6: content could not be decoded (config JSON, a result, version info).
    Decoding = 6,
    /// 7: invalid network config.
    InvalidConfig = 7,
    /// 8 (Go only): `CNI_NETNS` is the plugin's own network namespace.
    InvalidNetns = 8,
    /// 11: a transient failure; the runtime should retry later.
    TryAgainLater = 11,
    /// 50 (STATUS): the plugin cannot service ADD.
    NotAvailable = 50,
    /// 51 (STATUS): unavailable, and existing containers may have limited connectivity.
    LimitedConnectivity = 51,
    /// 999 (Go only): an internal error with no better code.
    Internal = 999,
}

impl ErrorCode {
    /// Every well-known code.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::IncompatibleVersion,
        ErrorCode::UnsupportedField,
        ErrorCode::UnknownContainer,
        ErrorCode::InvalidEnvironment,
        ErrorCode::Io,
        ErrorCode::Decoding,
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidNetns,
        ErrorCode::TryAgainLater,
        ErrorCode::NotAvailable,
        ErrorCode::LimitedConnectivity,
        ErrorCode::Internal,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The well-known code with this number, if any.
    pub fn from_code(code: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        c.code()
    }
}

/// A CNI error: what a plugin prints on stdout (with a non-zero exit) when it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The error code: a well-known [`ErrorCode`] or a plugin-specific code ≥ 100.
    pub code: u32,
    /// A short human-readable message.
    pub msg: String,
    /// Optional longer detail (e.g. the cause chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl CniError {
    /// An error with a well-known code.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code: code.code(),
            msg: msg.into(),
            details: None,
        }
    }

    /// A plugin-specific error; `code` must be ≥ 100 (0–99 are reserved by the spec).
    ///
    /// # Panics
    /// In debug builds, if `code` is below 100: that is a programming error.
    pub fn plugin(code: u32, msg: impl Into<String>) -> Self {
        debug_assert!(code >= 100, "plugin error codes start at 100, got {code}");
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// An error mapped at the edge from a typed error `err` raised while doing `what`, keeping its cause chain.
    ///
    /// `msg` is `"{what}: {err}"` (`err` alone when `what` is empty), with `err`'s own message only; `details`
    /// is the chain of `err`'s sources joined by `": "`, each once, and absent when `err` has none. So
    /// [`Display`](fmt::Display) (`msg; details`) prints every error of the chain exactly once.
    ///
    /// `code` is any code: a well-known [`ErrorCode`] or a plugin-specific one (≥ 100).
    pub fn from_error(code: impl Into<u32>, what: &str, err: &dyn std::error::Error) -> Self {
        let msg = if what.is_empty() {
            err.to_string()
        } else {
            format!("{what}: {err}")
        };
        CniError {
            code: code.into(),
            msg,
            details: err.source().map(error_chain),
        }
    }

    /// Sets `details`; an empty string clears it (Go omits empty details).
    pub fn with_details(mut self, d: impl Into<String>) -> Self {
        let d = d.into();
        self.details = (!d.is_empty()).then_some(d);
        self
    }

    /// The well-known code, if `code` is one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    /// The error object as JSON, `cniVersion` first when given, `details` only when set.
    ///
    /// Go's `types.Error` never writes `cniVersion`; the spec shows it, so callers choose.
    pub fn to_json(&self, version: Option<Version>) -> String {
        let mut obj = serde_json::Map::new();
        if let Some(v) = version {
            obj.insert("cniVersion".into(), v.as_str().into());
        }
        obj.insert("code".into(), self.code.into());
        obj.insert("msg".into(), self.msg.clone().into());
        if let Some(d) = &self.details {
            obj.insert("details".into(), d.clone().into());
        }
        serde_json::Value::Object(obj).to_string()
    }

    /// Reads an error object printed by another plugin (e.g. a delegate).
    ///
    /// `cniVersion` and unknown keys are ignored; an empty `details` counts as absent.
    /// Returns `None` if `bytes` is not such an object.
    pub fn from_json(bytes: &[u8]) -> Option<CniError> {
        let mut err: CniError = serde_json::from_slice(bytes).ok()?;
        if err.details.as_deref() == Some("") {
            err.details = None;
        }
        Some(err)
    }
}

impl fmt::Display for CniError {
    /// `msg`, then `; details` when present (Go's `types.Error.Error()`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if let Some(d) = &self.details {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// `err` and its sources, each printed once, joined by `": "` (e.g. `"open netlink socket: Permission denied"`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn codes_match_the_spec_table() {
        let expected = [1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 999];
        let got: Vec<u32> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(got, expected);
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert_eq!(u32::from(c), c as u32);
        }
        for unknown in [0, 9, 10, 12, 49, 52, 100, 998, 1000] {
            assert_eq!(ErrorCode::from_code(unknown), None);
        }
    }

    #[test]
    fn json_shape_with_and_without_version_and_details() {
        let e = CniError::new(ErrorCode::InvalidConfig, "bad");
        let v: Value = serde_json::from_str(&e.to_json(None)).unwrap();
        assert_eq!(v, json!({"code": 7, "msg": "bad"}));
        let e = e.with_details("why");
        let text = e.to_json(Some(Version::V1_1_0));
        assert!(text.starts_with("{\"cniVersion\":\"1.1.0\","), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad", "details": "why"})
        );
    }

    #[test]
    fn display_follows_go() {
        let e = CniError::new(ErrorCode::Io, "read failed");
        assert_eq!(e.to_string(), "read failed");
        assert_eq!(e.with_details("eof").to_string(), "read failed; eof");
    }

    #[test]
    fn empty_details_are_absent() {
        let e = CniError::new(ErrorCode::Io, "x").with_details("");
        assert_eq!(e.details, None);
        assert_eq!(
            CniError::from_json(br#"{"code":3,"msg":"m","details":""}"#),
            Some(CniError::new(ErrorCode::UnknownContainer, "m"))
        );
    }

    #[test]
    fn plugin_codes_and_parsing_back() {
        let e = CniError::plugin(100, "custom").with_details("d");
        assert_eq!(e.code, 100);
        assert_eq!(e.error_code(), None);
        let back = CniError::from_json(e.to_json(Some(Version::V0_4_0)).as_bytes());
        assert_eq!(back, Some(e));
        assert_eq!(CniError::from_json(b"not json"), None);
        assert_eq!(CniError::from_json(br#"{"msg":"no code"}"#), None);
        assert_eq!(CniError::from_json(br#"{"code":-1,"msg":"x"}"#), None);
    }

    /// A two-level chain shaped like the crates' errors: a context error over an OS error.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot lock /run/x")]
    struct Lock(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("store failed")]
    struct Store(#[source] Lock);

    fn denied() -> std::io::Error {
        std::io::Error::from_raw_os_error(13)
    }

    #[test]
    fn from_error_prints_each_error_of_the_chain_once() {
        let os = denied().to_string();
        let e = CniError::from_error(ErrorCode::Io, "add", &Store(Lock(denied())));
        assert_eq!(e.code, 5);
        assert_eq!(e.msg, "add: store failed");
        assert_eq!(
            e.details.as_deref(),
            Some(format!("cannot lock /run/x: {os}").as_str())
        );
        assert_eq!(
            e.to_string(),
            format!("add: store failed; cannot lock /run/x: {os}")
        );
        let e = CniError::from_error(110u32, "", &Lock(denied()));
        assert_eq!((e.code, e.msg.as_str()), (110, "cannot lock /run/x"));
        assert_eq!(e.details, Some(os.clone()));
        // No source: everything is in msg, and details stay absent.
        let e = CniError::from_error(ErrorCode::Io, "sysctl x", &denied());
        assert_eq!(e.msg, format!("sysctl x: {os}"));
        assert_eq!(e.details, None);
    }

    #[test]
    fn error_chain_joins_every_source_once() {
        let os = denied().to_string();
        assert_eq!(
            error_chain(&Store(Lock(denied()))),
            format!("store failed: cannot lock /run/x: {os}")
        );
        assert_eq!(error_chain(&denied()), os);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "plugin error codes start at 100")]
    fn reserved_plugin_code_is_a_bug() {
        let _ = CniError::plugin(42, "reserved");
    }
}
