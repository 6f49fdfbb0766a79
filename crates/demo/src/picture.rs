//! A picture of the demo's wiring, drawn from what netlink and nftables report: each sandbox with its `eth0`
//! addresses, the veth pair down to its host end, the bridge with the gateway address, and the masquerade
//! boundary. Reading the state ([`read_sandbox`], [`read_host`]) is separate from drawing it ([`render`]), which
//! has no I/O.

use std::collections::BTreeSet;
use trestle_netlink::Netlink;

/// The characters a picture is drawn with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Box-drawing characters, for a UTF-8 terminal.
    Unicode,
    /// Plain ASCII, for `--no-color` and other locales.
    Ascii,
}

impl Charset {
    /// Box drawing when the locale's character set is UTF-8 (`LC_ALL`, else `LC_CTYPE`, else `LANG`, as
    /// setlocale(3) reads them) and colour is not switched off; ASCII otherwise.
    pub fn for_terminal(no_color: bool, env: impl Fn(&str) -> Option<String>) -> Charset {
        let locale = ["LC_ALL", "LC_CTYPE", "LANG"]
            .iter()
            .filter_map(|k| env(k))
            .find(|v| !v.is_empty())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !no_color && (locale.contains("utf-8") || locale.contains("utf8")) {
            Charset::Unicode
        } else {
            Charset::Ascii
        }
    }
}

/// Glyphs of one charset.
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
    arrow: char,
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
    arrow: '▼',
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
    arrow: 'v',
};

/// One sandbox (a network namespace) as the picture shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// First line: which pod.
    pub title: String,
    /// Second line: what holds the namespace (a process, or a runtime's containers).
    pub holder: String,
    /// `eth0`'s addresses with their prefix length.
    pub addresses: Vec<String>,
    /// `eth0`'s index in the sandbox.
    pub index: u32,
    /// The index of `eth0`'s veth peer in the host namespace.
    pub peer_index: Option<u32>,
}

/// The host side: the bridge and its ports, and masquerade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The bridge's name.
    pub bridge: String,
    /// The bridge's addresses (the pods' gateway).
    pub bridge_addresses: Vec<String>,
    /// The bridge's ports: index and name.
    pub ports: Vec<(u32, String)>,
    /// Masqueraded subnets.
    pub masquerade: Vec<String>,
    /// `net.ipv4.ip_forward` of the host namespace.
    pub ip_forward: bool,
}

/// Why the wiring could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An interface the picture needs is not there.
    #[error("no interface {0} in the namespace")]
    Missing(String),
    /// A netlink request failed.
    #[error("cannot read links and addresses")]
    Netlink(#[from] trestle_netlink::Error),
}

/// Reads the sandbox side of the current network namespace: interface `ifname`.
pub fn read_sandbox(title: String, holder: String, ifname: &str) -> Result<Sandbox, Error> {
    let mut nl = Netlink::open()?;
    let link = nl
        .link_by_name(ifname)?
        .ok_or_else(|| Error::Missing(ifname.to_owned()))?;
    let addresses = global_addresses(&mut nl, link.index)?;
    Ok(Sandbox {
        title,
        holder,
        addresses,
        index: link.index,
        peer_index: link.peer_index,
    })
}

/// Reads the host side of the current network namespace: bridge `bridge`, its ports and the masquerade state.
pub fn read_host(bridge: &str, masquerade: Vec<String>) -> Result<Host, Error> {
    let mut nl = Netlink::open()?;
    let br = nl
        .link_by_name(bridge)?
        .ok_or_else(|| Error::Missing(bridge.to_owned()))?;
    let bridge_addresses = global_addresses(&mut nl, br.index)?;
    let ports = nl
        .links_with_master(br.index)?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let ip_forward = trestle_netlink::sysctl::get("net/ipv4/ip_forward")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    Ok(Host {
        bridge: bridge.to_owned(),
        bridge_addresses,
        ports,
        masquerade,
        ip_forward,
    })
}

/// A link's IPv4 addresses and its global IPv6 ones (not the link-local address every interface has), with
/// their prefix lengths.
fn global_addresses(nl: &mut Netlink, index: u32) -> Result<Vec<String>, Error> {
    Ok(nl
        .addresses(Some(index))?
        .iter()
        .filter(|a| a.address.addr().is_ipv4() || a.scope == 0)
        .map(|a| a.address.to_string())
        .collect())
}

/// The name of the bridge port that is `sandbox`'s veth peer, if the bridge has it.
pub fn host_end<'h>(host: &'h Host, sandbox: &Sandbox) -> Option<&'h str> {
    let peer = sandbox.peer_index?;
    host.ports
        .iter()
        .find(|(index, _)| *index == peer)
        .map(|(_, name)| name.as_str())
}

/// Columns between two sandbox boxes.
const GAP: usize = 3;
/// The narrowest box interior.
const MIN_INNER: usize = 20;

fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(s: &str, w: usize) -> String {
    format!("{s}{}", " ".repeat(w.saturating_sub(width(s))))
}

/// A line of `len` spaces with `marks` placed at their columns.
fn marks_line(len: usize, marks: &[(usize, &str)]) -> String {
    let mut cells: Vec<char> = vec![' '; len];
    for (col, text) in marks {
        for (i, c) in text.chars().enumerate() {
            if cells.len() <= col + i {
                cells.resize(col + i + 1, ' ');
            }
            cells[col + i] = c;
        }
    }
    cells.iter().collect::<String>().trim_end().to_owned()
}

/// Draws the wiring: one box per sandbox, its veth pair down to the bridge, the bridge with its addresses, and
/// the masquerade boundary below it.
pub fn render(sandboxes: &[Sandbox], host: &Host, charset: Charset) -> String {
    let g = match charset {
        Charset::Unicode => &UNICODE,
        Charset::Ascii => &ASCII,
    };
    let contents: Vec<Vec<String>> = sandboxes.iter().map(box_lines).collect();
    let inner = contents
        .iter()
        .flatten()
        .map(|l| width(l) + 2)
        .max()
        .unwrap_or(0)
        .max(MIN_INNER);
    let boxw = inner + 2;
    let n = sandboxes.len().max(1);
    let bridge_text = bridge_lines(host);
    let widest = bridge_text.iter().map(|l| width(l)).max().unwrap_or(0);
    let total = (n * boxw + (n - 1) * GAP).max(widest + 4);
    let centres: Vec<usize> = (0..sandboxes.len())
        .map(|i| i * (boxw + GAP) + boxw / 2)
        .collect();
    let boxes_row = |f: &dyn Fn(usize) -> String| -> String {
        (0..sandboxes.len())
            .map(f)
            .collect::<Vec<_>>()
            .join(&" ".repeat(GAP))
            .trim_end()
            .to_owned()
    };
    let horizontal = |len: usize, tee: Option<(usize, char)>| -> String {
        (0..len)
            .map(|i| match tee {
                Some((at, c)) if at == i => c,
                _ => g.h,
            })
            .collect()
    };
    let mut out = Vec::new();
    out.push(boxes_row(&|_| {
        format!("{}{}{}", g.top_left, horizontal(inner, None), g.top_right)
    }));
    let rows = contents.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..rows {
        out.push(boxes_row(&|i| {
            let text = contents[i].get(r).map(String::as_str).unwrap_or("");
            format!("{} {} {}", g.v, pad(text, inner - 2), g.v)
        }));
    }
    out.push(boxes_row(&|_| {
        format!(
            "{}{}{}",
            g.bottom_left,
            horizontal(inner, Some((boxw / 2 - 1, g.tee_down))),
            g.bottom_right
        )
    }));
    let v = g.v.to_string();
    let wires: Vec<(usize, &str)> = centres.iter().map(|&c| (c, v.as_str())).collect();
    let mut labelled = wires.clone();
    labelled.extend(centres.iter().map(|&c| (c + 2, "veth pair")));
    out.push(marks_line(total, &labelled));
    let names: Vec<(usize, String)> = sandboxes
        .iter()
        .zip(&centres)
        .map(|(s, &c)| {
            let name = host_end(host, s)
                .unwrap_or("(not on the bridge)")
                .to_owned();
            (c.saturating_sub(width(&name) / 2), name)
        })
        .collect();
    let name_marks: Vec<(usize, &str)> = names.iter().map(|(c, n)| (*c, n.as_str())).collect();
    out.push(marks_line(total, &name_marks));
    out.push(marks_line(total, &wires));
    let mut top: Vec<char> = horizontal(total - 2, None).chars().collect();
    for &c in &centres {
        top[c - 1] = g.tee_up;
    }
    let mid = total / 2;
    out.push(format!(
        "{}{}{}",
        g.top_left,
        top.iter().collect::<String>(),
        g.top_right
    ));
    for line in &bridge_text {
        out.push(format!("{} {} {}", g.v, pad(line, total - 4), g.v));
    }
    out.push(format!(
        "{}{}{}",
        g.bottom_left,
        horizontal(total - 2, Some((mid - 1, g.tee_down))),
        g.bottom_right
    ));
    let forwarding = if host.ip_forward {
        "routed by the host (ip_forward = 1)"
    } else {
        "not routed (ip_forward = 0)"
    };
    out.push(marks_line(total, &[(mid, &v), (mid + 2, forwarding)]));
    out.extend(masquerade_lines(host, g, total, mid));
    out.join("\n") + "\n"
}

fn box_lines(s: &Sandbox) -> Vec<String> {
    let mut lines = vec![s.title.clone(), s.holder.clone()];
    if s.addresses.is_empty() {
        lines.push("eth0 (no address)".to_owned());
    }
    lines.extend(s.addresses.iter().map(|a| format!("eth0 {a}")));
    lines
}

fn bridge_lines(host: &Host) -> Vec<String> {
    let gw = if host.bridge_addresses.is_empty() {
        "no address".to_owned()
    } else {
        host.bridge_addresses.join(", ")
    };
    vec![
        format!("bridge {} (in the host namespace)", host.bridge),
        format!("gateway {gw}"),
    ]
}

fn masquerade_lines(host: &Host, g: &Glyphs, total: usize, mid: usize) -> Vec<String> {
    let v = g.v.to_string();
    let subnets: BTreeSet<&str> = host.masquerade.iter().map(String::as_str).collect();
    if subnets.is_empty() {
        return vec![
            marks_line(total, &[(mid, &v)]),
            marks_line(total, &[(mid, &g.arrow.to_string())]),
            marks_line(
                total,
                &[(
                    mid.saturating_sub(20),
                    "no masquerade: pods keep their source address",
                )],
            ),
        ];
    }
    let label = " masquerade boundary ";
    let left = (total - width(label)) / 2;
    let dashes = |n: usize| g.dash.to_string().repeat(n);
    let mut out = vec![format!(
        "{}{label}{}",
        dashes(left),
        dashes(total - left - width(label))
    )];
    let list = subnets.into_iter().collect::<Vec<_>>().join(", ");
    out.push(marks_line(
        total,
        &[
            (mid, &v),
            (mid + 2, &format!("packets from {list} to anywhere else")),
        ],
    ));
    out.push(marks_line(
        total,
        &[
            (mid, &v),
            (mid + 2, "leave with the host's address as source"),
        ],
    ));
    out.push(marks_line(total, &[(mid, &g.arrow.to_string())]));
    let world = "the host's other interfaces";
    out.push(marks_line(
        total,
        &[(mid.saturating_sub(width(world) / 2), world)],
    ));
    out
}

#[cfg(test)]
mod tests;
