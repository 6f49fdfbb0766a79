use super::*;

fn node(name: &str, segment: usize, ip: &str, vxlan: bool) -> NodeBox {
    NodeBox {
        name: name.into(),
        pod: Some(PodBox {
            title: format!("pod on {name}"),
            holder: "pause pid 4242".into(),
            address: "10.244.0.2/16".into(),
            mtu: 1450,
            host_end: Some(format!("veth{name}0000")),
        }),
        bridge: "cbr0 10.244.0.1/16".into(),
        proxy_arp: true,
        paths: vec!["to n2: eth0".into()],
        vxlan_mtu: vxlan.then_some(1450),
        underlay: format!("eth0 {ip}"),
        outer: format!("u-{name}"),
        segment,
    }
}

fn world(segments: usize) -> World {
    World {
        segments: (1..=segments)
            .map(|s| format!("seg{s} 192.168.{s}.1/24"))
            .collect(),
        lines: vec!["world namespace".into(), "etcd on 192.168.1.1:2379".into()],
    }
}

/// The column of the first line holding `needle`.
fn column_of(text: &str, needle: &str) -> usize {
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"));
    line[..line.find(needle).unwrap()].chars().count()
}

#[test]
fn two_nodes_on_one_segment_hang_from_it_with_their_pods_above() {
    let nodes = [
        node("n1", 0, "192.168.1.11/24", false),
        node("n2", 0, "192.168.1.12/24", false),
    ];
    let text = render(&nodes, &world(1), &[], Charset::Unicode);
    // Each pod sits above its node, in the node's column.
    assert_eq!(column_of(&text, "pod on n1"), column_of(&text, "node n1"));
    assert_eq!(column_of(&text, "pod on n2"), column_of(&text, "node n2"));
    assert!(column_of(&text, "node n2") > column_of(&text, "eth0 192.168.1.11/24"));
    // Both wires end on the one segment, which one wire joins to the world.
    let seg = text.lines().find(|l| l.starts_with('─')).unwrap();
    assert_eq!(seg.matches('┴').count(), 2, "{text}");
    assert_eq!(seg.matches('┬').count(), 1, "{text}");
    assert!(text.contains("│ seg1 192.168.1.1/24"), "{text}");
    assert!(text.contains("│ etcd on 192.168.1.1:2379"), "{text}");
    assert!(
        text.contains("vethn10000") && text.contains("u-n2"),
        "{text}"
    );
    assert!(
        !text.contains("VXLAN") && !text.contains("trestle.vxlan"),
        "{text}"
    );
    // Every row of the two node boxes is as wide as their borders.
    let rows: Vec<usize> = text
        .lines()
        .filter(|l| l.contains("node n1") || l.contains("cbr0") || l.contains("eth0 192"))
        .map(|l| l.chars().count())
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows.iter().all(|&w| w == rows[0]), "{text}");
}

#[test]
fn a_third_node_on_another_segment_gets_tunnels_drawn_past_the_wires_between() {
    let nodes = [
        node("n1", 0, "192.168.1.11/24", true),
        node("n2", 0, "192.168.1.12/24", true),
        node("n3", 1, "192.168.2.13/24", true),
    ];
    let text = render(&nodes, &world(2), &[(0, 2), (1, 2)], Charset::Unicode);
    let n1n3 = text.lines().find(|l| l.contains("VXLAN n1 ⇄ n3")).unwrap();
    // The tunnel from n1 to n3 passes n2's wire without touching it.
    assert_eq!(n1n3.matches('●').count(), 2, "{text}");
    assert!(n1n3.contains("╌│╌"), "{text}");
    assert!(text.contains("VXLAN n2 ⇄ n3"), "{text}");
    assert!(
        text.contains("trestle.vxlan") && text.contains("mtu 1450"),
        "{text}"
    );
    // Two segments, side by side, each with its wire into the world.
    let world_top = text.lines().rfind(|l| l.starts_with('┌')).unwrap();
    assert_eq!(world_top.matches('┴').count(), 2, "{text}");
    assert!(
        column_of(&text, "seg2 192.168.2.1/24") > column_of(&text, "node n2"),
        "{text}"
    );
    // The underlay addresses share a row.
    let row = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap();
    assert_eq!(row("eth0 192.168.1.11/24"), row("eth0 192.168.2.13/24"));
}

#[test]
fn ascii_has_no_other_characters() {
    let mut nodes = [
        node("n1", 0, "192.168.1.11/24", true),
        node("n3", 1, "192.168.2.13/24", true),
    ];
    nodes[1].pod = None;
    nodes[1].proxy_arp = false;
    let text = render(&nodes, &world(2), &[(0, 1)], Charset::Ascii);
    assert!(text.is_ascii(), "{text}");
    assert!(
        text.contains("VXLAN n1 <-> n3") && text.contains("*~~"),
        "{text}"
    );
    assert!(text.contains("+---"), "{text}");
    // No pod above n3: its node box has no wire coming in.
    assert_eq!(text.matches("veth pair").count(), 3, "{text}");
}
