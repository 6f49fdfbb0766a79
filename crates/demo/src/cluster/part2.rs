//! Part 2: a second segment behind a router namespace, a third node on it, and the VXLAN tunnel trestled makes
//! to reach it: routes, the device, neighbour and FDB entries, the MTU, traffic, and the picture.

use std::net::{IpAddr, Ipv4Addr};

use trestle_netlink::{format_mac, Netlink};

use ipnet::Ipv4Net;

use super::machine::{route_via, Router, Segment, VXLAN};
use super::{expected, Act, Because, StepError, StepResult};

/// The pod payload that makes a 1450-byte IP packet (20 bytes of IP header, 8 of ICMP).
const FULL_PAYLOAD: usize = 1450 - 28;

impl Act<'_> {
    pub(super) fn part2(&mut self) -> StepResult {
        self.n
            .say("\n--- Part 2 of 2: a node behind a router, over VXLAN ---");
        self.step(
            "a second segment, behind a router",
            "Real clusters span subnets: racks, rooms, zones. The world gets a second bridge, seg2\n\
             (192.168.2.0/24), and a router joins the two segments: a namespace of its own with a leg on each\n\
             and forwarding on. Node n3 is plugged into seg2 and starts its trestled with the same arguments.",
            |a| a.second_segment(),
        )?;
        self.step(
            "a pod on n3",
            "The same sandbox and plugin call, the same config (with n3's socket).",
            |a| {
                let path = a.nodes[2].conf_path();
                std::fs::create_dir_all(path.parent().expect("a directory"))
                    .because("cannot create the config directory")?;
                std::fs::write(&path, a.nodes[2].conf())
                    .because("cannot write the network config")?;
                a.add_pod(2, false)?;
                a.inspect_pod(2)
            },
        )?;
        self.step(
            "the tunnel, as n1's kernel holds it",
            "n3's host record and its block reached every trestled through etcd's watch. n1 and n2 made a VXLAN\n\
             device and the three entries that send a packet for n3's block through it.",
            |a| a.tunnel_on_n1(),
        )?;
        self.step(
            "pod to pod through the tunnel",
            "ICMP echo and TCP between the pods on n1 and n3, both ways; then the largest packet the tunnel takes.",
            |a| {
                a.show_ping(0, 2)?;
                a.show_ping(2, 0)?;
                a.show_tcp(0, 2, 8081)?;
                a.show_tcp(2, 0, 8082)?;
                a.n.ok("both servers saw the other pod's own address: no NAT across the tunnel either");
                a.full_size()
            },
        )?;
        self.step(
            "the wiring of three nodes and the tunnel, drawn from the live state",
            "As before, read back through netlink; the dashed lines are the VXLAN tunnels trestled programmed\n\
             (a pair of nodes each), carried as UDP by the underlay and through the router.",
            |a| a.draw(),
        )
    }

    fn second_segment(&mut self) -> Result<(), StepError> {
        // The world is a switch on seg2 (no address there); 192.168.2.1, seg2's gateway, is the router's.
        let seg2 = Segment::number(2);
        self.world
            .run(|| seg2.create_bridge())
            .because("cannot enter the world namespace")?
            .because("cannot make the segment's bridge")?;
        self.n
            .cmd("ip link add seg2 type bridge && ip link set seg2 up   # in the world");
        self.segments.push(seg2.clone());
        let on_seg1 = Ipv4Net::new(Ipv4Addr::new(192, 168, 1, 254), 24).expect("a /24");
        let router = Router::create(
            self.world,
            &[(&self.segments[0], on_seg1), (&seg2, seg2.address)],
        )?;
        self.n.cmd("ip netns add router");
        for s in ["seg1", "seg2"] {
            self.n.cmd(&format!(
                "ip link add r-{s} type veth peer name {s} netns router && ip link set r-{s} master {s} up"
            ));
        }
        self.n.cmd(&format!(
            "ip -n router addr add {on_seg1} dev seg1 && ip -n router addr add {} dev seg2",
            seg2.address
        ));
        self.n
            .cmd("ip netns exec router sysctl -w net.ipv4.ip_forward=1");
        self.router = Some(router);
        // What is on seg1 (the world, for etcd's answers; n1 and n2) learns the way to seg2. The nodes keep
        // their default route: the underlay interface trestled found stays the same.
        let seg2_net = seg2.address.trunc();
        route_via(self.world, seg2_net, on_seg1.addr())?;
        for i in [0, 1] {
            route_via(&self.nodes[i].ns, seg2_net, on_seg1.addr())?;
        }
        self.n.cmd(&format!(
            "ip route add {seg2_net} via {}   # in the world, and in n1 and n2 (ip -n n1 ..., ip -n n2 ...)",
            on_seg1.addr()
        ));
        self.add_node("n3", 1, Ipv4Addr::new(192, 168, 2, 13))?;
        let n1 = self.nodes[0].ip.addr();
        let rtt = self.node_ping(2, n1)?;
        self.n.ok(&format!(
            "n3 (192.168.2.13) reaches n1 ({n1}) through the router: reply in {:.3} ms",
            rtt.as_secs_f64() * 1e3
        ));
        self.n.say(
            "\n  n3 shares no subnet with n1 or n2. n1 cannot hand a packet to 192.168.2.13 on its link, and\n  \
             the router knows nothing of 10.244.0.0/16: sent to it, a pod's packet would go nowhere. So trestled\n  \
             tunnels: the pod's packet travels inside a UDP packet from n1's address to n3's, which the router\n  \
             forwards like any other.",
        );
        Ok(())
    }

    fn tunnel_on_n1(&mut self) -> Result<(), StepError> {
        let n3 = IpAddr::V4(self.nodes[2].ip.addr());
        let to_n3 = IpAddr::V4(self.pods[2].addr());
        for me in [0, 1] {
            self.wait_state(me, "a route over VXLAN to n3's block", |s| {
                s.route_to(to_n3)
                    .is_some_and(|r| s.via_vxlan(r) && r.onlink && r.gateway == Some(n3))
                    && s.fdb.iter().any(|e| e.dst == Some(n3))
                    && s.neighbours.iter().any(|e| e.ip == n3)
            })?;
        }
        let pods = [self.pods[0].addr(), self.pods[1].addr()];
        let (n3_state, _) =
            self.wait_state(2, "routes over VXLAN to n1's and n2's blocks", |s| {
                pods.iter().all(|p| {
                    s.route_to(IpAddr::V4(*p))
                        .is_some_and(|r| s.via_vxlan(r) && r.onlink)
                })
            })?;
        let s = self.state(0)?;
        self.n.cmd("ip -n n1 route | grep 'proto 116'");
        self.n.out(&s.routes_text());
        let route = *s.route_to(to_n3).expect("waited for");
        let mtu = route.mtu.unwrap_or(0);
        self.n.say(&format!(
            "  {} via {n3} dev {VXLAN} onlink mtu {mtu}:\n  \
             n3's block, through the tunnel device. The next hop is n3's underlay address, which is on no\n  \
             subnet of {VXLAN} (the device has no address): `onlink` tells the kernel to take it as on the\n  \
             link anyway. The route to n2 is unchanged: direct.",
            route.dst
        ));
        self.n.cmd(&format!("ip -n n1 -d link show {VXLAN}"));
        self.n.out(&s.vxlan_text());
        self.n.say(
            "  VNI 4096 and UDP port 4789 are the same on every node; `local` is n1's underlay address;\n  \
             `nolearning`: trestled writes every entry itself from etcd, nothing is learned from traffic or flooded.",
        );
        self.n.cmd(&format!("ip -n n1 neigh show dev {VXLAN}"));
        self.n.out(&s.neighbours_text());
        self.n.say(&format!(
            "  To send on {VXLAN} the kernel needs the next hop's MAC. This permanent entry gives it: n3's\n  \
             address is n3's VTEP MAC (the MAC of n3's own {VXLAN}). No ARP ever crosses the tunnel."
        ));
        self.n.cmd(&format!("bridge -n n1 fdb show dev {VXLAN}"));
        self.n.out(&s.fdb_text());
        self.n.say(
            "  The VXLAN device looks up the frame's destination MAC in its forwarding database: this entry says\n  \
             where to send it, in a UDP packet to 192.168.2.13:4789. The underlay, and the router, see only UDP\n  \
             between two node addresses.",
        );
        self.check_vtep(&s, &n3_state)?;
        self.n.say(&format!(
            "\n  mtu {mtu} = 1500 - 50: the underlay's MTU less what VXLAN wraps around a packet (outer IPv4\n  \
             header 20, UDP 8, VXLAN 8, the inner Ethernet header 14). Every pod got {mtu} from trestled (the\n  \
             smallest underlay MTU of the cluster less 50), even those made before n3 joined: no path is too\n  \
             small for any pod, and no config says so."
        ));
        self.n.cmd("ip -n n3 route | grep 'proto 116'");
        self.n.out(&n3_state.routes_text());
        self.n
            .ok("n3 reaches both n1's and n2's blocks over VXLAN: it shares a subnet with neither");
        self.status_everywhere()
    }

    /// n3's VTEP MAC is the one derived from its name, everywhere it appears; n2 stays out of n1's FDB.
    fn check_vtep(
        &mut self,
        n1: &super::listing::NodeState,
        n3: &super::listing::NodeState,
    ) -> Result<(), StepError> {
        let derived = trestle_routes::host::vtep_mac("n3");
        let n3_device = n3.vxlan.as_ref().and_then(|(l, _)| l.mac);
        let n3_ip = IpAddr::V4(self.nodes[2].ip.addr());
        let fdb = n1.fdb.iter().find(|e| e.dst == Some(n3_ip)).map(|e| e.mac);
        let neigh = n1
            .neighbours
            .iter()
            .find(|e| e.ip == n3_ip)
            .and_then(|e| e.mac);
        if [n3_device, fdb, neigh] != [Some(derived); 3] {
            return Err(expected(
                format!(
                    "n3's VTEP MAC {} on its device and in n1's entries",
                    format_mac(derived)
                ),
                format!("device {n3_device:?}, fdb {fdb:?}, neighbour {neigh:?}"),
            ));
        }
        self.n.ok(&format!(
            "n3's VTEP MAC {} is derived from its name (48 bits of an FNV-1a hash of \"n3\", marked locally\n     \
             administered): the same on every run, in n3's host record, on n3's {VXLAN}, and in n1's entries",
            format_mac(derived)
        ));
        let n2_ip = IpAddr::V4(self.nodes[1].ip.addr());
        if n1.fdb.iter().any(|e| e.dst == Some(n2_ip)) {
            return Err(expected("no FDB entry for n2 on n1", n1.fdb_text()));
        }
        self.n
            .ok("n1's FDB has no entry for n2: n2 is still reached directly");
        Ok(())
    }

    /// CNI STATUS on every node succeeds once its kernel holds what etcd says.
    fn status_everywhere(&mut self) -> Result<(), StepError> {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let inv = trestle_operator::runtime::Invocation::new(
                &self.opts.bin_dir.join("trestle"),
                "STATUS",
                "",
                "",
                "",
            );
            let start = std::time::Instant::now();
            loop {
                let out = inv
                    .run(node.conf().as_bytes(), Some(&node.ns))
                    .because("cannot run the plugin")?;
                if out.success {
                    break;
                }
                super::machine::interrupted()?;
                if start.elapsed() > super::SETTLE {
                    return Err(StepError::Plugin {
                        command: "STATUS".into(),
                        stdout: out.stdout,
                        stderr: out.stderr.trim().to_owned(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        self.n
            .ok("CNI STATUS succeeds on n1, n2 and n3: every node's kernel holds what etcd says");
        Ok(())
    }

    /// The largest packet crosses with Don't Fragment set; one byte more cannot leave the pod.
    fn full_size(&mut self) -> Result<(), StepError> {
        let ns = self.pods[0].ns()?;
        let dst = self.pods[2].addr();
        let mut crossed = None;
        for seq in 100..103 {
            let r = ns
                .run(|| trestle_operator::probe::ping_df(dst, seq, FULL_PAYLOAD, super::PROBE))
                .because("cannot enter the pod's namespace")?;
            if let Ok(rtt) = r {
                crossed = Some(rtt);
                break;
            }
        }
        let Some(rtt) = crossed else {
            return Err(expected(
                format!(
                    "a {}-byte packet with DF set to cross the tunnel",
                    FULL_PAYLOAD + 28
                ),
                "no answer",
            ));
        };
        let bigger = ns
            .run(|| trestle_operator::probe::ping_df(dst, 200, FULL_PAYLOAD + 1, super::PROBE))
            .because("cannot enter the pod's namespace")?;
        let mtu = ns
            .run(|| Netlink::open().and_then(|mut nl| nl.link_by_name("eth0")))
            .because("cannot enter the pod's namespace")?
            .because("cannot read the pod's eth0")?
            .map_or(0, |l| l.mtu);
        match bigger {
            Ok(_) => Err(expected(
                format!(
                    "a {}-byte packet with DF set not to leave the pod",
                    FULL_PAYLOAD + 29
                ),
                "it was answered",
            )),
            Err(e) => {
                self.n.ok(&format!(
                    "a {}-byte packet with Don't Fragment set crosses the tunnel (reply in {:.3} ms); one byte more \
                     cannot leave the pod, whose eth0 has MTU {mtu} ({e})",
                    FULL_PAYLOAD + 28,
                    rtt.as_secs_f64() * 1e3
                ));
                Ok(())
            }
        }
    }
}
