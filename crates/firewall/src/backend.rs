//! The seam between the bridge plugin and whatever programs its masquerade: the [`Backend`] trait, the
//! [`BackendKind`] a config's `ipMasqBackend` selects, and [`open_backend`].

use crate::{Error, Firewall, NoneBackend, UnknownBackend};
use ipnet::IpNet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The masquerade operations of the bridge plugin's commands, object safe so the plugin can hold whichever
/// backend its config selects as a `Box<dyn Backend>`.
///
/// `Send` because namespace work in this workspace runs on helper threads (`trestle_netns::NetNs::run`): a backend
/// opened inside the host namespace has to come back out of that thread.
pub trait Backend: Send {
    /// ADD: makes sure traffic from each of `subnets` (host bits ignored) of `network` to outside the subnet is
    /// masqueraded. Called after the pod is visible to a concurrent [`Backend::remove_if_unused`]'s `in_use`.
    fn ensure(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), Error>;

    /// DEL: removes `network`'s masquerade unless `in_use()` says a pod still needs it, deciding and removing
    /// atomically with respect to [`Backend::ensure`]. Returns whether anything was removed. `in_use` may not be
    /// called at all when there is nothing to remove.
    fn remove_if_unused(
        &mut self,
        network: &str,
        in_use: &mut dyn FnMut() -> bool,
    ) -> Result<bool, Error>;

    /// GC of a network with no valid attachment: removes `network`'s masquerade, if any. Returns whether anything
    /// was removed.
    fn remove(&mut self, network: &str) -> Result<bool, Error>;

    /// CHECK: succeeds if each of `subnets` (host bits ignored) of `network` is masqueraded as
    /// [`Backend::ensure`] left it; [`Error::Missing`] otherwise.
    fn check(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), Error>;
}

impl Backend for Firewall {
    fn ensure(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), Error> {
        Firewall::ensure(self, network, subnets)
    }

    fn remove_if_unused(
        &mut self,
        network: &str,
        in_use: &mut dyn FnMut() -> bool,
    ) -> Result<bool, Error> {
        Firewall::remove_if_unused(self, network, in_use)
    }

    fn remove(&mut self, network: &str) -> Result<bool, Error> {
        Firewall::remove(self, network)
    }

    fn check(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), Error> {
        Firewall::check(self, network, subnets)
    }
}

/// Which [`Backend`] programs the masquerade, as a config's `ipMasqBackend` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// nf_tables over netlink, [`Firewall`]: the default, and also what `"iptables"` selects, since on every
    /// kernel trestle supports iptables itself is nf_tables underneath.
    #[default]
    Nftables,
    /// [`NoneBackend`]: trestle installs no masquerade rules; the host's firewall is expected to masquerade.
    None,
}

impl BackendKind {
    /// The canonical config value: `"nftables"` or `"none"` (`"iptables"` parses as `"nftables"`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Nftables => "nftables",
            BackendKind::None => "none",
        }
    }
}

impl FromStr for BackendKind {
    type Err = UnknownBackend;

    /// Parses a config value exactly as written (the reference plugin's values are lower case too).
    fn from_str(s: &str) -> Result<BackendKind, UnknownBackend> {
        match s {
            "nftables" | "iptables" => Ok(BackendKind::Nftables),
            "none" => Ok(BackendKind::None),
            other => Err(UnknownBackend(other.to_owned())),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opens the backend `kind` selects, in the calling thread's network namespace. `lock_path` (normally
/// [`crate::LOCK_PATH`]) is [`Firewall::open`]'s lock file; [`BackendKind::None`] opens nothing, neither socket nor
/// lock, since it has nothing to serialise.
pub fn open_backend(kind: BackendKind, lock_path: &Path) -> Result<Box<dyn Backend>, Error> {
    Ok(match kind {
        BackendKind::Nftables => Box::new(Firewall::open(lock_path)?),
        BackendKind::None => Box::new(NoneBackend),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_config_values() {
        assert_eq!("nftables".parse(), Ok(BackendKind::Nftables));
        assert_eq!("iptables".parse(), Ok(BackendKind::Nftables));
        assert_eq!("none".parse(), Ok(BackendKind::None));
        for bad in ["", "NONE", "firewalld", " nftables"] {
            assert_eq!(
                bad.parse::<BackendKind>(),
                Err(UnknownBackend(bad.to_owned()))
            );
        }
        assert_eq!(BackendKind::default(), BackendKind::Nftables);
    }

    #[test]
    fn canonical_names_parse_back() {
        for kind in [BackendKind::Nftables, BackendKind::None] {
            assert_eq!(kind.to_string().parse(), Ok(kind));
        }
    }

    #[test]
    fn none_opens_without_a_lock_file() {
        // A path that cannot be created: only the nftables backend would touch it.
        let mut b = open_backend(BackendKind::None, Path::new("/proc/no/such/lock")).unwrap();
        let subnets = ["10.1.0.0/24".parse().unwrap()];
        b.ensure("n", &subnets).unwrap();
        b.check("n", &subnets).unwrap();
        assert!(!b.remove("n").unwrap());
    }
}
