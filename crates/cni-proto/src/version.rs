//! CNI specification versions and what each one allows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Command;

/// A CNI specification version this crate speaks.
///
/// Ordering follows semver, so `Version::V0_4_0 < Version::V1_0_0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// 0.1.0: `ip4`/`ip6` results, no VERSION command.
    V0_1_0,
    /// 0.2.0: adds the VERSION command.
    V0_2_0,
    /// 0.3.0: interfaces, `ips` with `version`, chaining.
    V0_3_0,
    /// 0.3.1: same result shape as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and prevResult on DEL.
    V0_4_0,
    /// 1.0.0: `ips[].version` removed.
    V1_0_0,
    /// 1.1.0: GC, STATUS, extra interface and route fields.
    V1_1_0,
}

impl Version {
    /// All supported versions, oldest first (the VERSION reply lists them in this order).
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// The newest supported version.
    pub const LATEST: Version = Version::V1_1_0;

    /// Exact match against the supported strings, like Go's `VersionReconciler`:
    /// `"1.0"` or `"v1.0.0"` are not supported versions.
    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The dotted version string, e.g. `"0.3.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Whether a config of this version may be used with `cmd`:
    /// CHECK needs ≥0.4.0, GC and STATUS ≥1.1.0, VERSION ≥0.2.0.
    pub fn supports(self, cmd: Command) -> bool {
        match cmd {
            Command::Add | Command::Del => true,
            Command::Check => self >= Version::V0_4_0,
            Command::Gc | Command::Status => self >= Version::V1_1_0,
            Command::Version => self >= Version::V0_2_0,
        }
    }

    /// Whether results use the 0.1/0.2 `ip4`/`ip6` shape.
    pub fn has_legacy_result(self) -> bool {
        self <= Version::V0_2_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string that is not one of [`Version::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?}")]
pub struct UnknownVersion(pub String);

impl FromStr for Version {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s).ok_or_else(|| UnknownVersion(s.to_owned()))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A version string that Go's `version.ParseVersion` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SemverError {
    /// More than three dotted parts.
    #[error("invalid version {0:?}: too many parts")]
    TooManyParts(String),
    /// A part that is not a number.
    #[error("failed to convert {name} version part {part:?}")]
    NotANumber {
        /// `major`, `minor` or `micro`.
        name: &'static str,
        /// The part as written.
        part: String,
    },
}

/// Parses a version the way Go's `version.ParseVersion` does, for ordering
/// versions this crate does not support (`""` is 0.1.0, missing parts are 0,
/// at most three numeric parts).
pub(crate) fn parse_semver(s: &str) -> Result<(i64, i64, i64), SemverError> {
    if s.is_empty() {
        return Ok((0, 1, 0));
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() >= 4 {
        return Err(SemverError::TooManyParts(s.to_owned()));
    }
    let mut nums = [0i64; 3];
    for (i, (part, name)) in parts.iter().zip(["major", "minor", "micro"]).enumerate() {
        nums[i] = part.parse().map_err(|_| SemverError::NotANumber {
            name,
            part: (*part).to_owned(),
        })?;
    }
    Ok((nums[0], nums[1], nums[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_order_matches_semver() {
        for (i, v) in Version::ALL.into_iter().enumerate() {
            assert_eq!(Version::parse(v.as_str()), Some(v));
            assert_eq!(v.as_str().parse::<Version>(), Ok(v));
            assert_eq!(v.to_string(), v.as_str());
            for w in &Version::ALL[i + 1..] {
                assert!(v < *w);
                assert!(parse_semver(v.as_str()).unwrap() < parse_semver(w.as_str()).unwrap());
            }
        }
    }

    #[test]
    fn parse_is_exact() {
        for bad in [
            "",
            "1.0",
            "v1.0.0",
            "1.0.0 ",
            "0.5.0",
            "1.2.0",
            "01.0.0",
            "1.1.0-rc1",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
            assert_eq!(
                bad.parse::<Version>().unwrap_err().to_string(),
                format!("unsupported CNI version {bad:?}")
            );
        }
    }

    #[test]
    fn command_support_table() {
        let table: [(Command, Version); 4] = [
            (Command::Check, Version::V0_4_0),
            (Command::Gc, Version::V1_1_0),
            (Command::Status, Version::V1_1_0),
            (Command::Version, Version::V0_2_0),
        ];
        for v in Version::ALL {
            assert!(v.supports(Command::Add) && v.supports(Command::Del));
            for (cmd, min) in table {
                assert_eq!(v.supports(cmd), v >= min, "{v} {cmd}");
            }
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let json = serde_json::to_string(&Version::V0_3_1).unwrap();
        assert_eq!(json, "\"0.3.1\"");
        let back: Version = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Version::V0_3_1);
        assert!(serde_json::from_str::<Version>("\"9.9.9\"").is_err());
        assert!(serde_json::from_str::<Version>("1").is_err());
    }

    #[test]
    fn semver_parsing_follows_go() {
        assert_eq!(parse_semver(""), Ok((0, 1, 0)));
        assert_eq!(parse_semver("1"), Ok((1, 0, 0)));
        assert_eq!(parse_semver("1.1"), Ok((1, 1, 0)));
        assert_eq!(parse_semver("9.9.9"), Ok((9, 9, 9)));
        assert_eq!(
            parse_semver("1.2.3.4").unwrap_err().to_string(),
            "invalid version \"1.2.3.4\": too many parts"
        );
        assert_eq!(
            parse_semver("x.1.0").unwrap_err(),
            SemverError::NotANumber {
                name: "major",
                part: "x".into()
            }
        );
        assert_eq!(
            parse_semver("1.y").unwrap_err().to_string(),
            "failed to convert minor version part \"y\""
        );
        assert!(parse_semver("1.1.z")
            .unwrap_err()
            .to_string()
            .contains("micro"));
    }
}
