//! Transmit checksum offload of the VXLAN device. Kernels up to 5.7 had a netfilter NAT bug (fixed by commit
//! ea64d8d6c675, in 5.7 and the stable 5.6.13, 5.4.41, 4.19.123) that left VXLAN packets of masqueraded flows with
//! a bad UDP checksum when the device offloaded it: receivers dropped them, and connections to Services stalled
//! for 63 seconds (kubernetes #88986, calico #3145). Calico turns offload off on those kernels; so does trestle,
//! through the ethtool ioctl (there is no netlink message for it on such kernels).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What to do about the VXLAN device's transmit checksum offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumOffload {
    /// Off on kernels with the bug (up to 5.7), left alone elsewhere.
    Auto,
    /// Left as the kernel sets it.
    On,
    /// Always off.
    Off,
}

impl std::str::FromStr for ChecksumOffload {
    type Err = String;

    fn from_str(s: &str) -> Result<ChecksumOffload, String> {
        match s {
            "auto" => Ok(ChecksumOffload::Auto),
            "on" => Ok(ChecksumOffload::On),
            "off" => Ok(ChecksumOffload::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

impl ChecksumOffload {
    /// Whether to turn offload off on a kernel of `release` (`uname -r`).
    pub fn turn_off(self, release: &str) -> bool {
        match self {
            ChecksumOffload::Auto => has_checksum_bug(release),
            ChecksumOffload::On => false,
            ChecksumOffload::Off => true,
        }
    }
}

/// True for kernels up to 5.7 (Calico's rule: `ChecksumOffloadBroken`), and for a release that cannot be read.
pub fn has_checksum_bug(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) <= (5, 7),
        _ => true,
    }
}

/// The running kernel's release.
pub fn kernel_release() -> String {
    // SAFETY: `uname` fills the zeroed struct it is given; nothing else holds it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `ETHTOOL_GTXCSUM` / `ETHTOOL_STXCSUM` (`linux/ethtool.h`).
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ethtool(ifname: &str, value: &mut EthtoolValue) -> io::Result<()> {
    let name = ifname.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // SAFETY: plain socket(2); the descriptor is checked, then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid (an empty name and a null data pointer).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (value as *mut EthtoolValue).cast();
    // SAFETY: `req` names the device and points at `value`, both valid and writable for the call; the kernel
    // reads and writes exactly one ethtool_value through it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns transmit checksum offload of `ifname` off (`ethtool -K IF tx off`), in the calling thread's namespace.
pub fn tx_checksum_off(ifname: &str) -> io::Result<()> {
    ethtool(
        ifname,
        &mut EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        },
    )
}

/// Whether `ifname` offloads transmit checksums.
pub fn tx_checksum(ifname: &str) -> io::Result<bool> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    ethtool(ifname, &mut v)?;
    Ok(v.data != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_up_to_5_7_have_the_bug() {
        for (r, bug) in [
            ("4.19.0-21-amd64", true),
            ("5.4.0-42-generic", true),
            ("5.7.0", true),
            ("5.8.0-1", false),
            ("5.10.0-28-cloud-amd64", false),
            ("6.18.44-fc-v1300", false),
            ("garbage", true),
        ] {
            assert_eq!(has_checksum_bug(r), bug, "{r}");
        }
        assert!(ChecksumOffload::Auto.turn_off("5.4.0"));
        assert!(!ChecksumOffload::On.turn_off("5.4.0"));
        assert!(ChecksumOffload::Off.turn_off("6.1.0"));
        assert!(!kernel_release().is_empty());
    }
}
