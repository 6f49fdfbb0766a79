//! Reading and writing `/proc/sys` keys.
//!
//! `/proc/sys/net` shows the network namespace of the *calling thread*, so
//! these functions act on whatever namespace the thread is in; run them on a
//! thread inside the target namespace (e.g. with `NetNs::run`) to change
//! that namespace's settings.

use std::io;
use std::path::PathBuf;

/// Writes `value` to `/proc/sys/<key>`, e.g. `set("net/ipv4/ip_forward", "1")`.
pub fn set(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(path(key)?, value)
}

/// Reads `/proc/sys/<key>`, without the trailing newline.
pub fn get(key: &str) -> io::Result<String> {
    let mut value = std::fs::read_to_string(path(key)?)?;
    value.truncate(value.trim_end_matches('\n').len());
    Ok(value)
}

/// Keys use `/` separators, since interface names may contain dots; `.`
/// and `..` components and absolute keys are refused so a key cannot leave
/// `/proc/sys`.
fn path(key: &str) -> io::Result<PathBuf> {
    let valid = !key.is_empty()
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid sysctl key {key:?}"),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            path("net/ipv4/ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(path("net/ipv4/conf/eth0.100/rp_filter").is_ok());
        for bad in [
            "",
            "/net/ipv4",
            "net/../../etc",
            "net//x",
            "net/ipv4/",
            "./net",
        ] {
            assert_eq!(
                path(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reads_without_newline() {
        // Readable by anyone and present on every Linux kernel.
        let v = get("kernel/ostype").unwrap();
        assert_eq!(v, "Linux");
    }
}
