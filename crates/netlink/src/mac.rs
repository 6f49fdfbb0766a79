//! MAC address text form.

/// Formats a MAC address as lowercase `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case, `:` or `-` separated, two hex
/// digits per byte).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains('-') { '-' } else { ':' };
    let mut mac = [0u8; 6];
    let mut parts = s.split(sep);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0xff];
        assert_eq!(format_mac(mac), "02:42:ac:11:00:ff");
        assert_eq!(parse_mac("02:42:ac:11:00:ff"), Some(mac));
        assert_eq!(parse_mac("02:42:AC:11:00:FF"), Some(mac));
        assert_eq!(parse_mac("02-42-ac-11-00-ff"), Some(mac));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:ff:00",
            "2:42:ac:11:00:ff",
            "02:42:ac:11:00:fg",
            "02:42-ac:11:00:ff",
            "+2:42:ac:11:00:ff",
            "02:42:ac:11:00:ff:",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
