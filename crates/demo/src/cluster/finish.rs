//! The pictures (read from the live state), the operator's view (`trestlectl node list`), the clean-up and the
//! summary.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use trestle_netlink::Netlink;

use super::drawing::{self, NodeBox, PodBox};
use super::machine::{BRIDGE, ETCD, PREFIX};
use super::{expected, Act, Because, StepError, StepResult};
use trestle_operator::runtime::enter_on_exec;

/// What the picture needs of a pod's namespace: eth0's IPv4 address, MTU and veth peer index.
type PodSide = (String, u32, Option<u32>);

/// What the picture needs of a node's namespace: its links (by index and name, with their masters), the
/// bridge's and eth0's IPv4 addresses.
type NodeSide = (Vec<(u32, String, Option<u32>)>, Vec<String>, Vec<String>);

fn v4_addresses(nl: &mut Netlink, name: &str) -> Result<Vec<String>, trestle_netlink::Error> {
    let Some(link) = nl.link_by_name(name)? else {
        return Ok(Vec::new());
    };
    Ok(nl
        .addresses(Some(link.index))?
        .iter()
        .filter(|a| a.address.addr().is_ipv4())
        .map(|a| a.address.to_string())
        .collect())
}

impl Act<'_> {
    /// Draws the nodes as they are now, and checks each pod hangs on its node's bridge.
    pub(super) fn draw(&mut self) -> Result<(), StepError> {
        let states = self.states()?;
        let mut boxes = Vec::new();
        let mut tunnels = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let (links, bridge, eth0): NodeSide = node
                .ns
                .run(|| -> Result<NodeSide, trestle_netlink::Error> {
                    let mut nl = Netlink::open()?;
                    let links = nl
                        .links()?
                        .into_iter()
                        .map(|l| (l.index, l.name, l.master))
                        .collect();
                    Ok((
                        links,
                        v4_addresses(&mut nl, BRIDGE)?,
                        v4_addresses(&mut nl, "eth0")?,
                    ))
                })
                .because("cannot enter the node's namespace")?
                .because("cannot read the node's links")?;
            let pod = match self.pods.iter().find(|p| p.node == i && p.pause.is_some()) {
                Some(p) => {
                    let (address, mtu, peer): PodSide = p
                        .ns()?
                        .run(|| -> Result<PodSide, trestle_netlink::Error> {
                            let mut nl = Netlink::open()?;
                            let eth0 = nl
                                .link_by_name("eth0")?
                                .ok_or(trestle_netlink::Error::NotFound)?;
                            let a = v4_addresses(&mut nl, "eth0")?.join(", ");
                            Ok((a, eth0.mtu, eth0.peer_index))
                        })
                        .because("cannot enter the pod's namespace")?
                        .because("cannot read the pod's eth0")?;
                    let bridge_index = links.iter().find(|l| l.1 == BRIDGE).map(|l| l.0);
                    let end = links
                        .iter()
                        .find(|l| Some(l.0) == peer && l.2.is_some() && l.2 == bridge_index)
                        .map(|l| l.1.clone());
                    if end.is_none() {
                        return Err(expected(
                            format!(
                                "the pod on {}'s veth peer to be a port of {BRIDGE}",
                                node.name
                            ),
                            format!("peer index {peer:?}, links {links:?}"),
                        ));
                    }
                    Some(PodBox {
                        title: format!("pod on {}", node.name),
                        holder: format!("pause pid {}", p.pause.as_ref().map_or(0, |s| s.pid())),
                        address,
                        mtu,
                        host_end: end,
                    })
                }
                None => None,
            };
            let mut paths = Vec::new();
            for (j, peer) in self.nodes.iter().enumerate() {
                let Some(p) = self.pods.iter().find(|p| p.node == j && p.ip.is_some()) else {
                    continue;
                };
                if j == i {
                    continue;
                }
                match states[i].route_to(IpAddr::V4(p.addr())) {
                    Some(r) if states[i].via_vxlan(r) => {
                        paths.push(format!("to {}: over VXLAN", peer.name));
                        if i < j {
                            tunnels.push((i, j));
                        }
                    }
                    Some(_) => paths.push(format!("to {}: direct", peer.name)),
                    None => paths.push(format!("to {}: no route", peer.name)),
                }
            }
            boxes.push(NodeBox {
                name: node.name.clone(),
                pod,
                bridge: format!("{BRIDGE} {}", bridge.join(", ")),
                proxy_arp: states[i].proxy_arp.as_deref() == Some("1"),
                paths,
                vxlan_mtu: states[i].vxlan.as_ref().map(|(l, _)| l.mtu),
                underlay: format!("eth0 {}", eth0.join(", ")),
                outer: node.outer.clone(),
                segment: self
                    .segments
                    .iter()
                    .position(|s| s.name == node.segment.name)
                    .unwrap_or(0),
            });
        }
        let names: Vec<&str> = self.segments.iter().map(|s| s.name.as_str()).collect();
        let mut lines = vec![format!(
            "world namespace: {} {} its bridge{}",
            names.join(" and "),
            if names.len() > 1 { "are" } else { "is" },
            if names.len() > 1 { "s" } else { "" }
        )];
        lines.push("it routes nothing (ip_forward = 0)".into());
        if let Some(r) = &self.router {
            let legs: Vec<String> = r
                .legs
                .iter()
                .map(|(s, a)| format!("{} on {s}", a.addr()))
                .collect();
            lines.push(format!(
                "a router namespace joins the segments: {}",
                legs.join(", ")
            ));
        }
        lines.push(format!("etcd listens on {ETCD}"));
        let world = drawing::World {
            segments: self
                .segments
                .iter()
                .map(|s| format!("{} {}", s.name, s.address.trunc()))
                .collect(),
            lines,
        };
        self.n.say("");
        self.n.out(&drawing::render(
            &boxes,
            &world,
            &tunnels,
            self.opts.charset,
        ));
        self.n.ok(&format!(
            "{} nodes, {} pods: each pod on its node's {BRIDGE} by its own veth, each node on its segment by another",
            boxes.len(),
            boxes.iter().filter(|b| b.pod.is_some()).count()
        ));
        Ok(())
    }

    /// The last steps: the operator's view, the clean-up, the summary.
    pub(super) fn finish(&mut self) -> StepResult {
        self.n.say("\n--- The end ---");
        self.step(
            "the cluster, as an operator sees it",
            "`trestlectl node list` reads etcd and works out, with the code trestled runs, how a node reaches every\n\
             other one. etcd is reachable in the world only, so it runs there.",
            |a| a.node_list(),
        )?;
        self.step(
            "delete the pods, stop the nodes",
            "DEL for each pod, as a runtime does when a pod stops (trestled releases the address), then the\n\
             sandboxes, each trestled (SIGTERM: it deletes no route when it stops) and etcd.",
            |a| a.tear_down(),
        )?;
        self.summary();
        Ok(())
    }

    fn node_list(&mut self) -> Result<(), StepError> {
        let args = [
            "node",
            "list",
            "--from",
            "n1",
            "--etcd",
            ETCD,
            "--etcd-prefix",
            PREFIX,
        ];
        let mut cmd = Command::new(&self.opts.exe);
        cmd.args(args).stdin(Stdio::null()).process_group(0);
        enter_on_exec(&mut cmd, self.world);
        let out = cmd.output().because("cannot run trestlectl node list")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        self.n.cmd(&format!(
            "ip netns exec world trestlectl {}",
            args.join(" ")
        ));
        self.n.out(&stdout);
        if !out.status.success() {
            return Err(expected(
                "trestlectl node list to succeed",
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let row = |n: &str| {
            stdout
                .lines()
                .find(|l| l.starts_with(&format!("{n} ")))
                .unwrap_or_default()
                .to_owned()
        };
        for (node, path) in [("n1", "self"), ("n2", "direct"), ("n3", "vxlan")] {
            if !row(node).contains(path) || !row(node).contains("alive") {
                return Err(expected(format!("{node}: alive, path {path}"), stdout));
            }
        }
        self.n.say(
            "  LEASE: each trestled keeps its node's registration alive on a 15 s lease. UNDERLAY and VTEP MAC come\n  \
             from the host records; VXLAN MTU is a packet's room through a tunnel to the node; PATH is how n1\n  \
             reaches it; BLOCKS are the pool's blocks the node owns, which every other node routes to it.",
        );
        self.n
            .ok("n1 reaches n2 directly and n3 over VXLAN, as its kernel showed");
        Ok(())
    }

    fn tear_down(&mut self) -> Result<(), StepError> {
        for i in 0..self.pods.len() {
            let node = &self.nodes[self.pods[i].node];
            let inv = self.pods[i].invocation(&self.opts.bin_dir, "DEL");
            self.n.cmd(&format!(
                "ip netns exec {} env CNI_COMMAND=DEL CNI_CONTAINERID={} CNI_NETNS={} CNI_IFNAME=eth0 ... {} < {}",
                node.name,
                self.pods[i].id,
                self.pods[i].netns_path(),
                inv.plugin.display(),
                node.conf_path().display()
            ));
            self.del_pod(i)?;
        }
        self.n.ok(&format!(
            "{} pods deleted: their addresses are released",
            self.pods.len()
        ));
        let mut pids = Vec::new();
        for pod in &mut self.pods {
            if let Some(p) = pod.pause.take() {
                pids.push(p.pid().to_string());
                p.stop().because("cannot stop a pause sandbox")?;
            }
        }
        self.n
            .cmd(&format!("kill {}   # the pause sandboxes", pids.join(" ")));
        let mut stopped = Vec::new();
        for node in &mut self.nodes {
            if let Some(mut d) = node.daemon.take() {
                stopped.push(d.pid().to_string());
                d.stop(Duration::from_secs(5))
                    .map_err(|e| expected("trestled to stop", e))?;
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            stopped.push(etcd.pid().to_string());
            etcd.stop(Duration::from_secs(5))
                .map_err(|e| expected("etcd to stop", e))?;
        }
        self.n.cmd(&format!(
            "kill {}   # each trestled, then etcd",
            stopped.join(" ")
        ));
        self.n
            .ok("trestled on n1, n2 and n3, and etcd, have exited");
        self.n.ok("as the demo exits, the world, node and pod namespaces go, and with them every bridge, veth,");
        self.n.say("     VXLAN device, route, neighbour and FDB entry; so does its private /run (etcd's data, the nodes' files)");
        Ok(())
    }

    fn summary(&self) {
        self.n.say("\nIn short:");
        for line in [
            "- trestled --store etcd on each node: one pool for the cluster, a block per node, a host record each.",
            "- Nodes that share an underlay subnet route to each other's blocks directly (via the peer, dev eth0).",
            "- Nodes that do not, over VXLAN: a route onlink via the peer's address, a permanent neighbour entry and",
            "  an FDB entry per peer, with the peer's VTEP MAC derived from its name; no learning, no flooding.",
            "- Pods keep their own addresses across nodes (no NAT); proxy ARP on the bridge answers for remote pods.",
            "- Pods get the cluster's MTU (1450 here: 1500 less VXLAN's 50) from trestled, without any config.",
        ] {
            self.n.say(line);
        }
        self.n.say(&format!(
            "\nThe cluster act is complete ({:.1} s): two segments, three nodes, three pods, and nothing left behind.",
            self.started.elapsed().as_secs_f64()
        ));
    }
}
