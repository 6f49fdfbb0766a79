//! Identifier checks shared by the environment and the config (Go `pkg/utils`).

use crate::{CniError, ErrorCode};

/// Linux `IFNAMSIZ` minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// Go's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, used for container IDs and network names.
fn matches_cni_regex(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphanumeric() => {
            bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        }
        _ => false,
    }
}

/// Checks a container ID like Go's `ValidateContainerID`.
///
/// Empty gives code 3 (`missing containerID`, libcni's ADD-time answer; the
/// environment reader reports an empty `CNI_CONTAINERID` as missing, code 4,
/// before this runs). Characters outside the regex give code 4 with the ID in `details`.
pub fn validate_container_id(s: &str) -> Result<(), CniError> {
    if s.is_empty() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            "missing containerID",
        ));
    }
    if !matches_cni_regex(s) {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid characters in containerID",
        )
        .with_details(s));
    }
    Ok(())
}

/// Checks a network name (stdin `name`) like Go's `ValidateNetworkName`: code 7 when
/// empty or outside the regex (which also keeps it safe as a file name).
pub fn validate_network_name(s: &str) -> Result<(), CniError> {
    if s.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "missing network name",
        ));
    }
    if !matches_cni_regex(s) {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "invalid characters found in network name",
        )
        .with_details(s));
    }
    Ok(())
}

/// Checks an interface name like Go's `ValidateInterfaceName` (code 4): non-empty,
/// at most 15 bytes, not `.` or `..`, and no `/`, `:` or Unicode whitespace.
pub fn validate_ifname(s: &str) -> Result<(), CniError> {
    let invalid = |msg: &str| CniError::new(ErrorCode::InvalidEnvironment, msg);
    if s.is_empty() {
        return Err(invalid("interface name is empty"));
    }
    if s.len() > MAX_IFNAME_LEN {
        return Err(invalid("interface name is too long").with_details(format!(
            "interface name should be less than {} characters",
            MAX_IFNAME_LEN + 1
        )));
    }
    if s == "." || s == ".." {
        return Err(invalid("interface name is . or .."));
    }
    // Go's unicode.IsSpace and Rust's char::is_whitespace both follow White_Space.
    if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(invalid(
            "interface name contains / or : or whitespace characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_accepts_and_rejects() {
        for ok in [
            "a",
            "0",
            "abc-DEF_1.2",
            "Z..",
            "9-_",
            "x-",
            &"f".repeat(300),
        ] {
            assert!(matches_cni_regex(ok), "{ok:?}");
            assert_eq!(validate_container_id(ok), Ok(()));
            assert_eq!(validate_network_name(ok), Ok(()));
        }
        let bad = [
            "-a", "_a", ".a", "a/b", "a b", "a:b", "a\\b", "ä", "aé", "a\n", "a\0", "a+b", "a@b",
            "a$", "..", "名前",
        ];
        for b in bad {
            assert!(!matches_cni_regex(b), "{b:?}");
            let e = validate_container_id(b).unwrap_err();
            assert_eq!((e.code, e.details.as_deref()), (4, Some(b)));
            assert_eq!(e.msg, "invalid characters in containerID");
            let e = validate_network_name(b).unwrap_err();
            assert_eq!((e.code, e.details.as_deref()), (7, Some(b)));
            assert_eq!(e.msg, "invalid characters found in network name");
        }
    }

    #[test]
    fn empty_ids() {
        let e = validate_container_id("").unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (3, "missing containerID"));
        let e = validate_network_name("").unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (7, "missing network name"));
    }

    #[test]
    fn ifname_edge_cases() {
        let ok = [
            "eth0",
            "a",
            "...",
            "a.b",
            "e-_x",
            &"x".repeat(15),
            "é",
            "ééééééé",
        ];
        for name in ok {
            assert_eq!(validate_ifname(name), Ok(()), "{name:?}");
        }
        let bad: [(&str, &str); 14] = [
            ("", "interface name is empty"),
            (&"x".repeat(16), "interface name is too long"),
            // 8 two-byte characters: 16 bytes, the kernel limit is in bytes.
            ("éééééééé", "interface name is too long"),
            (".", "interface name is . or .."),
            ("..", "interface name is . or .."),
            (
                "a/b",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "a:b",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "a b",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "a\tb",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "a\n",
                "interface name contains / or : or whitespace characters",
            ),
            (
                " ",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "a\u{a0}b",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "a\u{85}",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "/",
                "interface name contains / or : or whitespace characters",
            ),
        ];
        for (name, msg) in bad {
            let e = validate_ifname(name).unwrap_err();
            assert_eq!((e.code, e.msg.as_str()), (4, msg), "{name:?}");
        }
        let long = validate_ifname(&"x".repeat(16)).unwrap_err();
        assert_eq!(
            long.details.as_deref(),
            Some("interface name should be less than 16 characters")
        );
    }
}
