//! What happens to nodes in the tests, done as Docker does it to a machine: an upgrade of the DaemonSet, a frozen
//! node, a node cut off from etcd, a restarted node, a node gone for good.

use std::net::IpAddr;
use std::time::Duration;

use super::Cluster;
use crate::Error;

impl Cluster {
    /// A rolling update to `image`, one node at a time, the next only once the updated one is ready (as
    /// `maxUnavailable: 1` does); each node's time from the old pod's stop to the new one's readiness.
    pub fn rolling_update(
        &mut self,
        image: &str,
        timeout: Duration,
    ) -> Result<Vec<Duration>, Error> {
        self.image = image.to_string();
        let mut gaps = Vec::new();
        for i in 0..self.nodes.len() {
            let start = std::time::Instant::now();
            self.stop_daemon(i)?;
            // The runtime keeps starting pods while the daemon is away: the conflist must stay.
            if !self.has_conflist(i)? {
                return Err(Error::Command(format!(
                    "{}: the conflist left with the stopped trestled",
                    self.nodes[i].name
                )));
            }
            self.start_daemon(i)?;
            self.wait_ready(i, timeout)?;
            gaps.push(start.elapsed());
        }
        Ok(gaps)
    }

    /// Freezes node `i`, its trestled included (`docker pause` of both: a VM stopped by its hypervisor).
    pub fn pause(&self, i: usize) -> Result<(), Error> {
        self.docker().cmd(&["pause", &self.nodes[i].container])?;
        if let Some(d) = &self.nodes[i].daemon {
            self.docker().cmd(&["pause", d])?;
        }
        Ok(())
    }

    /// Thaws node `i`.
    pub fn unpause(&self, i: usize) -> Result<(), Error> {
        if let Some(d) = &self.nodes[i].daemon {
            self.docker().cmd(&["unpause", d])?;
        }
        self.docker().cmd(&["unpause", &self.nodes[i].container])?;
        Ok(())
    }

    /// Cuts node `i` off the control network, so from etcd (its underlay, and so its pods' traffic, stays).
    pub fn disconnect_control(&self, i: usize) -> Result<(), Error> {
        let n = &self.nodes[i];
        let net = &self.control()?.net.name;
        self.docker()
            .cmd(&["network", "disconnect", net, &n.container])?;
        Ok(())
    }

    /// Plugs node `i` back into the control network, at its address.
    pub fn connect_control(&self, i: usize) -> Result<(), Error> {
        let n = &self.nodes[i];
        let ip = n
            .control_ip
            .ok_or_else(|| Error::Manifest("no control network".into()))?;
        self.docker().cmd(&[
            "network",
            "connect",
            &format!("--ip={ip}"),
            &self.control()?.net.name,
            &n.container,
        ])?;
        Ok(())
    }

    /// `docker restart` of node `i`: every process of the node dies (its pods' sandboxes too) and the node comes
    /// back with a fresh network namespace and its disks (the volumes) as they were. The kubelet then runs the
    /// DaemonSet's pod again, init container first.
    pub fn restart_node(&mut self, i: usize) -> Result<(), Error> {
        // The old trestled lives in the old node's namespaces, which go with it.
        if let Some(d) = self.nodes[i].daemon.take() {
            self.docker().cmd(&["rm", "-f", d.as_str()])?;
        }
        self.docker()
            .cmd(&["restart", "-t", "1", &self.nodes[i].container])?;
        self.route_segments(&self.nodes[i])?;
        self.start_daemon(i)
    }

    /// Removes node `i`'s containers for good (a machine decommissioned without draining).
    pub fn remove_node(&mut self, i: usize) -> Result<(), Error> {
        if let Some(d) = self.nodes[i].daemon.take() {
            self.docker().cmd(&["rm", "-f", d.as_str()])?;
        }
        self.docker().cmd(&["rm", "-f", &self.nodes[i].container])?;
        Ok(())
    }

    /// The routes of node `i` whose next hop is `via` (trestle's routes to another node's blocks).
    pub fn routes_via(&self, i: usize, via: IpAddr) -> Result<Vec<String>, Error> {
        let ns = self.node_ns(&self.nodes[i])?;
        let routes = ns.run(|| trestle_netlink::Netlink::open()?.routes(None))??;
        Ok(routes
            .into_iter()
            .filter(|r| r.gateway == Some(via))
            .map(|r| r.dst.to_string())
            .collect())
    }

    /// CNI STATUS in node `i`, as its runtime asks it: `Ok(())` when an ADD could be served, else what the
    /// plugins said.
    pub fn cni_status(&self, i: usize) -> Result<Result<(), String>, Error> {
        match self.docker().cmd(&[
            "exec",
            &self.nodes[i].container,
            "trestlectl",
            "status",
            &self.network,
        ]) {
            Ok(_) => Ok(Ok(())),
            Err(crate::docker::Error::Failed { stderr, .. }) => Ok(Err(stderr)),
            Err(e) => Err(e.into()),
        }
    }
}
