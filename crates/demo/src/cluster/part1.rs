//! Part 1: the underlay and etcd, two nodes on one segment, a pod on each, the direct routes trestled programs,
//! traffic, and the picture.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use trestle_netlink::{format_mac, Family, Netlink};

use super::listing::NodeState;
use super::machine::{
    add_with_retry, etcd_args, etcd_command, result_address, wait_serving, Node, Pod, Segment,
    Service, BRIDGE, ETCD, VXLAN,
};
use super::{expected, Act, Because, StepError, StepResult, SETTLE};
use trestle_operator::sandbox::Pause;
use trestle_operator::show;

impl Act<'_> {
    pub(super) fn part1(&mut self) -> StepResult {
        self.n
            .say("\n--- Part 1 of 2: two nodes on one segment ---");
        self.step(
            "the underlay and etcd",
            "The \"world\" namespace stands for the network the nodes are plugged into. Its bridge seg1 is one L2\n\
             segment (one switch, one VLAN); the world's address on it, 192.168.1.1, is the nodes' default gateway.\n\
             etcd is the cluster's one source of truth: every trestled records its node's blocks and host record\n\
             there, and watches everybody else's.",
            |a| a.underlay_and_etcd(),
        )?;
        self.step(
            "two nodes on the segment",
            "A node here is a network namespace with one interface, eth0: the end of a veth pair whose other end is\n\
             a port of seg1, as a machine's NIC is plugged into a switch. Each node gets an address of\n\
             192.168.1.0/24 and a default route via the world, then its trestled starts in etcd mode.",
            |a| {
                a.add_node("n1", 0, Ipv4Addr::new(192, 168, 1, 11))?;
                a.add_node("n2", 0, Ipv4Addr::new(192, 168, 1, 12))
            },
        )?;
        self.step(
            "a pod on each node",
            "Each node's runtime does what the single-node walkthrough shows: a pause sandbox, then the plugin with\n\
             CNI_* variables and the config on stdin. The config is the single-node one, unchanged but for the\n\
             socket of this node's trestled: one subnet (the pool), one gateway, no MTU. trestle-ipam asks trestled,\n\
             which claims a block of the pool for its node in etcd and hands out an address of it.",
            |a| {
                a.write_configs()?;
                a.add_pod(0, true)?;
                a.add_pod(1, false)?;
                a.inspect_pod(0)
            },
        )?;
        self.step(
            "the routes trestled programmed: direct",
            "Each trestled watches etcd. When n2 claimed its block, n1 learned who owns it and where n2 is, and\n\
             programmed a route to it, marked with protocol 116 (trestle's: it deletes no route without it).",
            |a| a.direct_routes(),
        )?;
        self.step(
            "pod to pod, node to node",
            "ICMP echo and a TCP exchange, done in-process inside the pods, both ways.",
            |a| {
                a.show_ping(0, 1)?;
                a.show_ping(1, 0)?;
                a.show_tcp(0, 1, 8080)?;
                a.n.ok("the server saw the client pod's own address: pod to pod traffic is routed, not translated (masquerade stops at the pool)");
                a.proxy_arp_seen(0, 1)
            },
        )?;
        self.step(
            "the wiring of two nodes, drawn from the live state",
            "Read back just now through netlink: each box is a network namespace; each vertical line a veth pair,\n\
             named by its far end as the kernel reports it.",
            |a| a.draw(),
        )
    }

    fn underlay_and_etcd(&mut self) -> Result<(), StepError> {
        let seg = Segment::number(1);
        self.make_segment(&seg)?;
        self.world
            .run(|| trestle_netlink::sysctl::set("net/ipv4/ip_forward", "0"))
            .because("cannot enter the world namespace")?
            .because("cannot set net.ipv4.ip_forward in the world")?;
        self.n
            .say("  (the world does not route yet: net.ipv4.ip_forward = 0)");
        let data = self.dir.join("etcd");
        std::fs::create_dir_all(&self.dir).because("cannot create the demo's directory")?;
        let mut etcd = Service::spawn(
            "etcd",
            etcd_command(&self.etcd_bin, &data),
            self.world,
            &self.dir.join("etcd.log"),
        )
        .because("cannot start etcd")?;
        self.n.cmd(&format!(
            "{} {} &   # pid {}, in the world",
            self.etcd_bin.display(),
            etcd_args(&data).join(" "),
            etcd.pid()
        ));
        let waited = wait_serving(self.world, ETCD, &mut etcd, SETTLE);
        self.etcd = Some(etcd);
        let waited = waited?;
        self.n.ok(&format!(
            "etcd answers on {ETCD} (after {:.1} s); its data is in {} (the demo's private /run)",
            waited.as_secs_f64(),
            data.display()
        ));
        Ok(())
    }

    /// Makes segment `seg` in the world, narrated.
    pub(super) fn make_segment(&mut self, seg: &super::Segment) -> Result<(), StepError> {
        self.world
            .run(|| seg.create())
            .because("cannot enter the world namespace")?
            .because("cannot make the segment's bridge")?;
        self.n.cmd(&format!(
            "ip link add {0} type bridge && ip addr add {1} dev {0} && ip link set {0} up   # in the world",
            seg.name, seg.address
        ));
        self.segments.push(seg.clone());
        Ok(())
    }

    /// Makes node `name` on segment `segment` at `ip` and starts its trestled, narrated.
    pub(super) fn add_node(
        &mut self,
        name: &str,
        segment: usize,
        ip: Ipv4Addr,
    ) -> Result<(), StepError> {
        let seg = self.segments[segment].clone();
        let mut node = Node::create(self.world, name, &seg, ip, &self.dir)?;
        self.n.say(&format!("\nNode {name}:"));
        self.n.cmd(&format!(
            "ip link add {0} type veth peer name eth0 netns {name} && ip link set {0} master {1} up",
            node.outer, seg.name
        ));
        self.n.cmd(&format!(
            "ip -n {name} addr add {} dev eth0 && ip -n {name} link set eth0 up && ip -n {name} route add default via {}",
            node.ip,
            seg.address.addr()
        ));
        let pid = node.start_daemon(&self.opts.bin_dir)?;
        self.n.cmd(&format!(
            "ip netns exec {name} trestled {} &   # pid {pid}",
            node.daemon_args().join(" ")
        ));
        let waited = node.wait_daemon(SETTLE);
        let dir = node.dir.clone();
        self.nodes.push(node);
        let waited = waited?;
        self.n.ok(&format!(
            "{name}: eth0 {}, default via {}; trestled serves its socket after {:.1} s (files in {})",
            self.nodes.last().expect("just pushed").ip,
            seg.address.addr(),
            waited.as_secs_f64(),
            dir.display()
        ));
        Ok(())
    }

    fn write_configs(&mut self) -> Result<(), StepError> {
        for node in &self.nodes {
            let path = node.conf_path();
            std::fs::create_dir_all(path.parent().expect("a directory"))
                .because("cannot create the config directory")?;
            std::fs::write(&path, node.conf()).because("cannot write the network config")?;
        }
        let first = &self.nodes[0];
        self.n.cmd(&format!("cat {}", first.conf_path().display()));
        self.n.out(&first.conf());
        self.n.say(
            "  (n2's is the same with its own socket; the demo names the namespaces n1, n2 for the reader:\n   \
             it holds them itself rather than in /run/netns)",
        );
        Ok(())
    }

    /// Starts a pause sandbox on node `node` and ADDs it (again while trestled says "try again later"). With
    /// `full`, shows the whole result.
    pub(super) fn add_pod(&mut self, node: usize, full: bool) -> Result<(), StepError> {
        let pause = Pause::start_detached(&self.opts.exe, Some(&self.nodes[node].ns))
            .because("cannot start a pause sandbox")?;
        let name = self.nodes[node].name.clone();
        self.n.say(&format!("\nA pod on {name}:"));
        self.n.cmd(&format!(
            "ip netns exec {name} trestlectl pause &   # pid {}: the sandbox, a new network namespace",
            pause.pid()
        ));
        self.pods.push(Pod {
            id: format!("pod-{name}"),
            node,
            pause: Some(pause),
            // Marked before the call: a runtime DELs after an ADD that failed or was cut short.
            attached: true,
            ip: None,
        });
        let pod = self.pods.len() - 1;
        let inv = self.pods[pod].invocation(&self.opts.bin_dir, "ADD");
        let env: Vec<String> = inv.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let conf_path = self.nodes[node].conf_path();
        self.n.cmd(&format!(
            "ip netns exec {name} env {} {} < {}",
            env.join(" "),
            inv.plugin.display(),
            conf_path.display()
        ));
        let (out, calls) =
            add_with_retry(&inv, &self.nodes[node].conf(), &self.nodes[node].ns, SETTLE)?;
        if !out.success {
            return Err(StepError::Plugin {
                command: "ADD".into(),
                stdout: out.stdout,
                stderr: format!("{}\n{}", out.stderr.trim(), self.nodes[node].daemon_log()),
            });
        }
        if calls > 1 {
            let times = match calls - 1 {
                1 => "once".to_owned(),
                n => format!("{n} times"),
            };
            self.n.say(&format!(
                "  (trestled answered \"try again later\" (code 11) {times} while it joined the cluster or claimed\n   \
                 a block; the plugin call was made again, as a kubelet does)"
            ));
        }
        let addr = result_address(&out.stdout)
            .ok_or_else(|| expected("an address in the ADD result", out.stdout.clone()))?;
        if full {
            let pretty = serde_json::from_str::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| out.stdout.clone());
            self.n.out(&pretty);
        }
        self.pods[pod].ip = Some(addr.addr());
        self.n.ok(&format!(
            "the pod on {name} got {addr} (gateway {})",
            super::machine::GATEWAY
        ));
        Ok(())
    }

    /// Shows pod `pod`'s eth0 and routes.
    pub(super) fn inspect_pod(&mut self, pod: usize) -> Result<(), StepError> {
        let ns = self.pods[pod].ns()?;
        let (addr, routes, mtu) = ns
            .run(
                || -> Result<(String, String, u32), trestle_netlink::Error> {
                    let mut nl = Netlink::open()?;
                    let mtu = nl.link_by_name("eth0")?.map_or(0, |l| l.mtu);
                    Ok((
                        show::ip_addr(&mut nl, Some("eth0"))?,
                        show::route_n(&mut nl)?,
                        mtu,
                    ))
                },
            )
            .because("cannot enter the pod's namespace")?
            .because("cannot read the pod's eth0")?;
        let name = &self.nodes[self.pods[pod].node].name;
        let path = self.pods[pod].netns_path();
        self.n.say(&format!("\nInside the pod on {name}:"));
        self.n
            .cmd(&format!("nsenter --net={path} ip addr show eth0"));
        self.n.out(&addr);
        self.n.cmd(&format!("nsenter --net={path} route -n"));
        self.n.out(&routes);
        let want = format!("inet {}/16", self.pods[pod].addr());
        if !addr.contains(&want) {
            return Err(expected(want, addr));
        }
        self.n.ok(
            "eth0 has the pool's prefix, /16: the pod takes all of 10.244.0.0/16 as on its link",
        );
        self.n.ok(&format!(
            "eth0's MTU is {mtu}, and no config asked for it: trestled answered it with the address (part 2 says why)"
        ));
        Ok(())
    }

    fn direct_routes(&mut self) -> Result<(), StepError> {
        let peers = [(0usize, 1usize), (1, 0)];
        let mut states = Vec::new();
        for (me, peer) in peers {
            let dst = IpAddr::V4(self.pods[peer].addr());
            let gw = IpAddr::V4(self.nodes[peer].ip.addr());
            let (state, _) = self.wait_state(me, "a direct route to its peer's block", |s| {
                s.route_to(dst).is_some_and(|r| r.gateway == Some(gw)) && s.unreachable().is_some()
            })?;
            let name = &self.nodes[me].name;
            self.n
                .cmd(&format!("ip -n {name} route | grep 'proto 116'"));
            self.n.out(&state.routes_text());
            states.push(state);
        }
        let route = states[0]
            .route_to(IpAddr::V4(self.pods[1].addr()))
            .copied()
            .expect("waited for");
        self.n.say(&format!(
            "\n  {} via {} dev eth0: n2's block, sent to n2's own underlay address out of eth0.\n  \
             n1 and n2 both hold an address of 192.168.1.0/24 on eth0: they share an L2 subnet, so n2 is a\n  \
             neighbour on the link and this is an ordinary route. The packet leaves as the pod sent it: no\n  \
             encapsulation, no tunnel device.",
            route.dst,
            self.nodes[1].ip.addr()
        ));
        self.n.say(
            "  unreachable 10.244.0.0/16 metric 4242: an address of the pool that no block route and no bridge\n  \
             covers is refused here, rather than sent out by the default route to the world.",
        );
        if states.iter().any(|s| s.vxlan.is_some()) {
            return Err(expected(
                format!("no {VXLAN} on nodes of one segment"),
                states[0].vxlan_text(),
            ));
        }
        self.n
            .ok("n1 reaches n2's block directly, and n2 reaches n1's");
        self.n.ok(&format!(
            "neither node has a {VXLAN} device: on one segment there is nothing to encapsulate"
        ));
        let proxy = states[0].proxy_arp.clone().unwrap_or_default();
        self.n.cmd(&format!(
            "ip netns exec n1 sysctl net.ipv4.conf.{BRIDGE}.proxy_arp"
        ));
        self.n
            .out(&format!("net.ipv4.conf.{BRIDGE}.proxy_arp = {proxy}"));
        if proxy != "1" {
            return Err(expected("proxy ARP on the pods' bridge", proxy));
        }
        self.n.say(&format!(
            "  A pod believes all of 10.244.0.0/16 is on its link, so it asks ARP for a pod of another node.\n  \
             {BRIDGE} answers with its own MAC, because the node's route to that address leaves by another\n  \
             interface (proxy ARP), and the node routes the packet on."
        ));
        Ok(())
    }

    /// Shows that pod `from` resolved pod `to`'s address to its node's bridge (proxy ARP).
    fn proxy_arp_seen(&mut self, from: usize, to: usize) -> Result<(), StepError> {
        let ns = self.pods[from].ns()?;
        let ip = IpAddr::V4(self.pods[to].addr());
        let entry = ns
            .run(|| -> Result<_, trestle_netlink::Error> {
                let mut nl = Netlink::open()?;
                Ok(nl
                    .neighbours(Some(Family::V4), None)?
                    .into_iter()
                    .find(|n| n.ip == ip))
            })
            .because("cannot enter the pod's namespace")?
            .because("cannot read the pod's ARP cache")?;
        let bridge_mac = self.nodes[self.pods[from].node]
            .ns
            .run(|| Netlink::open().and_then(|mut nl| nl.link_by_name(BRIDGE)))
            .because("cannot enter the node's namespace")?
            .because("cannot read the node's bridge")?
            .and_then(|l| l.mac);
        let Some(entry) = entry else {
            return Err(expected(
                format!("an ARP entry for {ip} in the pod"),
                "none",
            ));
        };
        self.n.cmd(&format!(
            "nsenter --net={} ip neigh show {ip}",
            self.pods[from].netns_path()
        ));
        let line = super::listing::neighbour_line(&entry);
        self.n.out(&line.replacen(' ', " dev eth0 ", 1));
        if entry.mac.is_none() || entry.mac != bridge_mac {
            return Err(expected(
                format!(
                    "{ip} resolved to {BRIDGE}'s MAC {:?}",
                    bridge_mac.map(format_mac)
                ),
                line,
            ));
        }
        let from_node = &self.nodes[self.pods[from].node].name;
        self.n.ok(&format!(
            "the pod on {from_node} reached {ip} at {BRIDGE}'s MAC on {from_node} ({}): proxy ARP answered for the remote pod",
            bridge_mac.map(format_mac).unwrap_or_default()
        ));
        Ok(())
    }

    /// Node `node` pings `dst` from its own namespace (the underlay), again until answered.
    pub(super) fn node_ping(&self, node: usize, dst: Ipv4Addr) -> Result<Duration, StepError> {
        super::ping_until(
            &self.nodes[node].ns,
            dst,
            "no answer to ICMP echo on the underlay",
        )
    }

    /// The routing state of every node, read now.
    pub(super) fn states(&self) -> Result<Vec<NodeState>, StepError> {
        (0..self.nodes.len()).map(|i| self.state(i)).collect()
    }
}
