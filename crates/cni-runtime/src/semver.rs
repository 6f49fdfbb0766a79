//! Dotted version numbers as libcni compares them (`major[.minor[.micro]]`, numeric parts).

/// A parsed version.
pub type Semver = (u64, u64, u64);

/// The newest spec version this runtime implements.
pub const CURRENT: Semver = (1, 1, 0);

/// Parses `major[.minor[.micro]]`; anything else is `None`.
pub fn parse(s: &str) -> Option<Semver> {
    let mut parts = s.split('.');
    let mut next = |required: bool| match parts.next() {
        None if !required => Some(0),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
        _ => None,
    };
    let v = (next(true)?, next(false)?, next(false)?);
    parts.next().is_none().then_some(v)
}

/// Whether `v` is at least `min`; an unparsable `v` is not.
pub fn at_least(v: &str, min: Semver) -> bool {
    parse(v).is_some_and(|v| v >= min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_libcni() {
        assert_eq!(parse("1.1.0"), Some((1, 1, 0)));
        assert_eq!(parse("0.3"), Some((0, 3, 0)));
        assert_eq!(parse("2"), Some((2, 0, 0)));
        for bad in ["", "1.", "v1.0.0", "1.0.0.0", "1.a.0", "-1.0.0"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn compares() {
        assert!(at_least("0.4.0", (0, 4, 0)));
        assert!(at_least("1.0.0", (0, 4, 0)));
        assert!(!at_least("0.3.1", (0, 4, 0)));
        assert!(!at_least("", (0, 4, 0)));
    }
}
