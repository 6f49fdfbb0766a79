//! DNS settings, optionally read from a resolv.conf file (host-local's `resolvConf`).

use std::path::Path;

use crate::error::IpamError;

/// DNS settings returned with an allocation (the result's `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<String>,
    /// The last `domain` line.
    pub domain: Option<String>,
    /// All `search` entries, in order.
    pub search: Vec<String>,
    /// All `options` entries, in order.
    pub options: Vec<String>,
}

impl DnsConfig {
    /// Parses resolv.conf text like host-local: blank lines and lines starting with `#` or `;`
    /// are skipped, as are lines with fewer than two fields; unknown keywords are ignored.
    pub fn parse_resolv_conf(text: &str) -> DnsConfig {
        let mut dns = DnsConfig::default();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [keyword, first, rest @ ..] = fields.as_slice() else {
                continue;
            };
            let all = || std::iter::once(first).chain(rest).map(|s| s.to_string());
            match *keyword {
                "nameserver" => dns.nameservers.push(first.to_string()),
                "domain" => dns.domain = Some(first.to_string()),
                "search" => dns.search.extend(all()),
                "options" => dns.options.extend(all()),
                _ => {}
            }
        }
        dns
    }

    /// Reads and parses a resolv.conf file.
    pub fn from_file(path: &Path) -> Result<DnsConfig, IpamError> {
        let text = std::fs::read_to_string(path).map_err(|e| IpamError::io("read", path, e))?;
        Ok(Self::parse_resolv_conf(&text))
    }

    /// True if no field is set.
    pub fn is_empty(&self) -> bool {
        *self == DnsConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_host_local() {
        let text =
            "# comment\n; other comment\n\nnameserver 1.1.1.1\n  nameserver   8.8.8.8 ignored\n\
                    domain a.example\ndomain b.example\nsearch x.example y.example\nsearch z\n\
                    options ndots:5 rotate\nsortlist 10.0.0.0\nnameserver\n#nameserver 9.9.9.9\n";
        let dns = DnsConfig::parse_resolv_conf(text);
        assert_eq!(dns.nameservers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(dns.domain.as_deref(), Some("b.example"));
        assert_eq!(dns.search, ["x.example", "y.example", "z"]);
        assert_eq!(dns.options, ["ndots:5", "rotate"]);
    }

    #[test]
    fn empty_and_missing_file() {
        assert!(DnsConfig::parse_resolv_conf("").is_empty());
        let err = DnsConfig::from_file(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(matches!(err, IpamError::Io { op: "read", .. }), "{err:?}");
    }
}
