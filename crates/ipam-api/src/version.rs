//! The version rule of the API.
//!
//! The package name carries the major version (`trestle.ipam.v1`). Within a major version,
//! fields and RPCs are only added, so a client and a daemon of neighbouring minor versions
//! understand each other in both directions: protobuf skips unknown fields, and an absent field
//! reads as its default. A daemon serves clients of minor [`MIN_CLIENT_MINOR`] and later; a
//! client of another major version is refused with a message naming both versions.

use crate::v1::Peer;

/// The API's major version: the `v1` of the package.
pub const API_MAJOR: u32 = 1;
/// The minor version this build speaks: 1 added List's pages and Status's warnings, 2 Status's
/// `limited` and Allocate's `mtu`.
pub const API_MINOR: u32 = 2;
/// The oldest client minor version a daemon of this build serves.
pub const MIN_CLIENT_MINOR: u32 = 0;

/// This build's [`Peer`] for `software` ("trestled", "trestle-ipam", ...).
pub fn peer(software: &str) -> Peer {
    Peer {
        software: format!("{software} {}", env!("CARGO_PKG_VERSION")),
        api_major: API_MAJOR,
        api_minor: API_MINOR,
    }
}

/// Why a daemon refuses a client, or `None` if it serves it. A request without a `Peer`
/// (a minimal client) is served as v1.0.
// MIN_CLIENT_MINOR is 0 today, which makes its comparison trivially true; the rule stays for
// the day an old minor version is retired.
#[allow(clippy::absurd_extreme_comparisons)]
pub fn refusal(client: Option<&Peer>) -> Option<String> {
    let (major, minor, software) = match client {
        None => (API_MAJOR, 0, "an unnamed client"),
        Some(p) => (p.api_major, p.api_minor, p.software.as_str()),
    };
    // A proto3 client that never set the field sends 0: treat it as v1.
    let major = if major == 0 { API_MAJOR } else { major };
    if major == API_MAJOR && minor >= MIN_CLIENT_MINOR {
        return None;
    }
    Some(format!(
        "{software} speaks trestle.ipam API v{major}.{minor}; this trestled {} serves \
         v{API_MAJOR}.{MIN_CLIENT_MINOR} to v{API_MAJOR}.x: install a plugin and daemon of \
         the same major version",
        env!("CARGO_PKG_VERSION")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(major: u32, minor: u32) -> Peer {
        Peer {
            software: "trestle-ipam 9.9.9".into(),
            api_major: major,
            api_minor: minor,
        }
    }

    #[test]
    fn same_major_is_served_whatever_the_minor() {
        assert_eq!(refusal(None), None);
        assert_eq!(refusal(Some(&client(0, 0))), None);
        for minor in [MIN_CLIENT_MINOR, API_MINOR, API_MINOR + 1, 999] {
            assert_eq!(refusal(Some(&client(API_MAJOR, minor))), None, "{minor}");
        }
    }

    #[test]
    fn another_major_is_refused_naming_both_versions() {
        let msg = refusal(Some(&client(2, 3))).unwrap();
        assert!(
            msg.starts_with("trestle-ipam 9.9.9 speaks trestle.ipam API v2.3;"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("serves v{API_MAJOR}.{MIN_CLIENT_MINOR}")),
            "{msg}"
        );
    }
}
