//! The backend of `ipMasqBackend: "none"`, for hosts whose firewall is managed by someone else.

use crate::{Backend, Error};
use ipnet::IpNet;

/// A [`Backend`] that installs nothing: the host's own firewall (firewalld, a node agent, a hand-written
/// ruleset) is expected to masquerade pod traffic, and trestle must not add rules beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoneBackend;

impl Backend for NoneBackend {
    /// Installs nothing.
    fn ensure(&mut self, _network: &str, _subnets: &[IpNet]) -> Result<(), Error> {
        Ok(())
    }

    /// Nothing was installed, so nothing is removed and `in_use` is not called.
    fn remove_if_unused(
        &mut self,
        _network: &str,
        _in_use: &mut dyn FnMut() -> bool,
    ) -> Result<bool, Error> {
        Ok(false)
    }

    /// Nothing was installed, so nothing is removed.
    fn remove(&mut self, _network: &str) -> Result<bool, Error> {
        Ok(false)
    }

    /// Succeeds: what trestle promised (nothing) holds; the host's masquerade is not trestle's to verify.
    fn check(&mut self, _network: &str, _subnets: &[IpNet]) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn does_nothing_and_never_asks_in_use() {
        let mut b = NoneBackend;
        let subnets = ["10.1.0.0/24".parse().unwrap(), "fd01::/64".parse().unwrap()];
        b.ensure("n", &subnets).unwrap();
        b.check("n", &subnets).unwrap();
        b.check("never-ensured", &subnets).unwrap();
        let mut in_use = || -> bool { panic!("in_use called with nothing to remove") };
        assert!(!b.remove_if_unused("n", &mut in_use).unwrap());
        assert!(!b.remove("n").unwrap());
    }
}
