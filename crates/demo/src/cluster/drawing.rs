//! A picture of the cluster act's wiring, in the conventions of `picture.rs`: a box per network namespace, a
//! vertical line per veth pair with the kernel's name of its far end, box drawing or ASCII. Each node is a
//! column: its pod, the veth down to the bridge, the node (bridge, how it reaches each peer, the VXLAN device, its
//! `eth0`), the veth down to its segment; under the segments, the world that holds them (and routes between
//! them), and a dashed line per VXLAN tunnel. The caller reads the live state into [`NodeBox`]es; [`render`] has
//! no I/O.

use super::super::picture::Charset;

/// One pod, as its node's column shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBox {
    /// First line: which pod.
    pub title: String,
    /// Second line: what holds its namespace.
    pub holder: String,
    /// `eth0`'s address with its prefix.
    pub address: String,
    /// `eth0`'s MTU.
    pub mtu: u32,
    /// The name of its veth's end in the node (a port of the bridge), if found.
    pub host_end: Option<String>,
}

/// One node's column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBox {
    /// The node's name.
    pub name: String,
    /// Its pod, if it has one.
    pub pod: Option<PodBox>,
    /// The bridge and its address (`cbr0 10.244.0.1/16`).
    pub bridge: String,
    /// Whether the bridge answers ARP for remote pods.
    pub proxy_arp: bool,
    /// How it reaches each peer, one line each (`to n2: eth0`).
    pub paths: Vec<String>,
    /// The VXLAN device's MTU, when trestled made one.
    pub vxlan_mtu: Option<u32>,
    /// The underlay address (`eth0 192.168.1.11/24`).
    pub underlay: String,
    /// The world's end of its `eth0` veth.
    pub outer: String,
    /// Index of its segment in [`World::segments`].
    pub segment: usize,
}

/// What is under the nodes: the segments and the namespace that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// Each segment's label (`seg1 192.168.1.1/24`).
    pub segments: Vec<String>,
    /// The world box's lines.
    pub lines: Vec<String>,
}

struct Glyphs {
    h: char,
    v: char,
    top_left: char,
    top_right: char,
    bottom_left: char,
    bottom_right: char,
    tee_down: char,
    tee_up: char,
    dash: char,
    end: char,
    both_ways: &'static str,
}

const UNICODE: Glyphs = Glyphs {
    h: '─',
    v: '│',
    top_left: '┌',
    top_right: '┐',
    bottom_left: '└',
    bottom_right: '┘',
    tee_down: '┬',
    tee_up: '┴',
    dash: '╌',
    end: '●',
    both_ways: "⇄",
};

const ASCII: Glyphs = Glyphs {
    h: '-',
    v: '|',
    top_left: '+',
    top_right: '+',
    bottom_left: '+',
    bottom_right: '+',
    tee_down: '+',
    tee_up: '+',
    dash: '~',
    end: '*',
    both_ways: "<->",
};

/// Columns between two node columns.
const GAP: usize = 3;
/// The narrowest box interior.
const MIN_INNER: usize = 20;

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Rows of characters, each as wide as needed, written at columns.
struct Canvas(Vec<Vec<char>>);

impl Canvas {
    fn row(&mut self) -> usize {
        self.0.push(Vec::new());
        self.0.len() - 1
    }

    fn put(&mut self, row: usize, col: usize, text: &str) {
        let r = &mut self.0[row];
        for (i, c) in text.chars().enumerate() {
            if r.len() <= col + i {
                r.resize(col + i + 1, ' ');
            }
            r[col + i] = c;
        }
    }

    fn put_char(&mut self, row: usize, col: usize, c: char) {
        self.put(row, col, &c.to_string());
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for r in &self.0 {
            out.push_str(r.iter().collect::<String>().trim_end());
            out.push('\n');
        }
        out
    }
}

fn pod_lines(p: &PodBox) -> Vec<String> {
    vec![
        p.title.clone(),
        p.holder.clone(),
        format!("eth0 {}", p.address),
        format!("     mtu {}", p.mtu),
    ]
}

fn node_lines(n: &NodeBox, rows: usize) -> Vec<String> {
    let mut lines = vec![format!("node {}", n.name), n.bridge.clone()];
    if n.proxy_arp {
        lines.push("     proxy ARP on".into());
    }
    lines.extend(n.paths.iter().cloned());
    if let Some(mtu) = n.vxlan_mtu {
        lines.push("trestle.vxlan".into());
        lines.push(format!("     mtu {mtu}"));
    }
    // The underlay goes last, on the same row in every column: the wire to the segment leaves under it.
    while lines.len() + 1 < rows {
        lines.push(String::new());
    }
    lines.push(n.underlay.clone());
    lines
}

/// Draws the nodes side by side, their segments under them and the world under the segments; `tunnels` are pairs
/// of indices into `nodes`. Nodes of one segment must be next to each other.
pub fn render(
    nodes: &[NodeBox],
    world: &World,
    tunnels: &[(usize, usize)],
    charset: Charset,
) -> String {
    let g = match charset {
        Charset::Unicode => &UNICODE,
        Charset::Ascii => &ASCII,
    };
    let rows = nodes
        .iter()
        .map(|n| node_lines(n, 0).len())
        .max()
        .unwrap_or(0);
    let node_text: Vec<Vec<String>> = nodes.iter().map(|n| node_lines(n, rows)).collect();
    let pod_text: Vec<Option<Vec<String>>> = nodes
        .iter()
        .map(|n| n.pod.as_ref().map(pod_lines))
        .collect();
    let inner = node_text
        .iter()
        .flatten()
        .chain(pod_text.iter().flatten().flatten())
        .map(|l| width(l) + 2)
        .max()
        .unwrap_or(0)
        .max(MIN_INNER);
    let boxw = inner + 2;
    let left = |i: usize| i * (boxw + GAP);
    let centre = |i: usize| left(i) + boxw / 2;
    let columns = nodes.len() * boxw + nodes.len().saturating_sub(1) * GAP;
    let widest_world = world.lines.iter().map(|l| width(l) + 4).max().unwrap_or(0);
    let total = columns.max(widest_world);
    let mut c = Canvas(Vec::new());

    // The pods, and their veth down to the node.
    let pod_rows = pod_text.iter().flatten().map(Vec::len).max().unwrap_or(0);
    if pod_rows > 0 {
        let top = c.row();
        let body: Vec<usize> = (0..pod_rows).map(|_| c.row()).collect();
        let bottom = c.row();
        let wire = c.row();
        let names = c.row();
        for (i, text) in pod_text.iter().enumerate() {
            let Some(text) = text else { continue };
            draw_box(&mut c, g, left(i), boxw, top, &body, bottom, text);
            c.put_char(bottom, centre(i), g.tee_down);
            c.put_char(wire, centre(i), g.v);
            c.put(wire, centre(i) + 2, "veth pair");
            let name = nodes[i].pod.as_ref().and_then(|p| p.host_end.clone());
            let name = name.unwrap_or_else(|| "(not on the bridge)".into());
            c.put(names, centre(i).saturating_sub(width(&name) / 2), &name);
        }
    }

    // The nodes.
    let top = c.row();
    let body: Vec<usize> = (0..rows).map(|_| c.row()).collect();
    let bottom = c.row();
    for (i, text) in node_text.iter().enumerate() {
        draw_box(&mut c, g, left(i), boxw, top, &body, bottom, text);
        if pod_text[i].is_some() {
            c.put_char(top, centre(i), g.tee_up);
        }
        c.put_char(bottom, centre(i), g.tee_down);
    }
    let wire = c.row();
    let names = c.row();
    for (i, n) in nodes.iter().enumerate() {
        c.put_char(wire, centre(i), g.v);
        c.put(wire, centre(i) + 2, "veth pair");
        c.put(
            names,
            centre(i).saturating_sub(width(&n.outer) / 2),
            &n.outer,
        );
    }

    // The tunnels: between the two nodes' wires, the other wires passing through.
    for &(a, b) in tunnels {
        let (a, b) = (a.min(b), a.max(b));
        let row = c.row();
        for i in 0..nodes.len() {
            c.put_char(row, centre(i), g.v);
        }
        for col in centre(a)..=centre(b) {
            if !(a..=b).any(|i| centre(i) == col) {
                c.put_char(row, col, g.dash);
            }
        }
        c.put_char(row, centre(a), g.end);
        c.put_char(row, centre(b), g.end);
        let label = format!("VXLAN {} {} {}", nodes[a].name, g.both_ways, nodes[b].name);
        c.put(row, centre(nodes.len() - 1).max(centre(b)) + 2, &label);
    }

    // The segments, each under its nodes, and a wire from each down into the world.
    let line = c.row();
    let labels = c.row();
    let mut downs = Vec::new();
    for (s, label) in world.segments.iter().enumerate() {
        let on: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].segment == s)
            .collect();
        let (Some(&first), Some(&last)) = (on.first(), on.last()) else {
            continue;
        };
        let (from, to) = (left(first), left(last) + boxw - 1);
        for col in from..=to {
            c.put_char(line, col, g.h);
        }
        for &i in &on {
            c.put_char(line, centre(i), g.tee_up);
        }
        // Off the box's corner column, so the world's top border reads as a line with a tee in it.
        let down = from + 2;
        c.put_char(line, down, g.tee_down);
        c.put_char(labels, down, g.v);
        c.put(labels, down + 2, label);
        downs.push(down);
    }

    // The world.
    let top = c.row();
    let body: Vec<usize> = (0..world.lines.len()).map(|_| c.row()).collect();
    let bottom = c.row();
    draw_box(&mut c, g, 0, total, top, &body, bottom, &world.lines);
    for d in downs {
        c.put_char(top, d, g.tee_up);
    }
    c.text()
}

/// A box `w` columns wide at column `x`: its top on row `top`, `text` on the rows `body`, its bottom on `bottom`.
#[allow(clippy::too_many_arguments)]
fn draw_box(
    c: &mut Canvas,
    g: &Glyphs,
    x: usize,
    w: usize,
    top: usize,
    body: &[usize],
    bottom: usize,
    text: &[String],
) {
    let h = g.h.to_string().repeat(w - 2);
    c.put(top, x, &format!("{}{h}{}", g.top_left, g.top_right));
    for (k, &row) in body.iter().enumerate() {
        let t = text.get(k).map(String::as_str).unwrap_or("");
        let pad = " ".repeat((w - 4).saturating_sub(width(t)));
        c.put(row, x, &format!("{} {t}{pad} {}", g.v, g.v));
    }
    c.put(
        bottom,
        x,
        &format!("{}{h}{}", g.bottom_left, g.bottom_right),
    );
}

#[cfg(test)]
mod tests;
