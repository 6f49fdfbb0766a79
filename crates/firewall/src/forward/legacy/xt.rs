//! The in-process reading of a legacy table: the x_tables blob layout of `linux/netfilter_ipv4/ip_tables.h` and
//! `linux/netfilter_ipv6/ip6_tables.h`, the two getsockopts that fetch a table's info and entries, and the parsing
//! of those entries into what the table holds of trestle's.

use super::super::rules::{Anchor, Kind, Rule, View, CHAIN, DOCKER_USER, JUMP_COMMENT};
use super::LegacyHandle;
use crate::names::{masked_net, Family};
use ipnet::IpNet;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `IPT_SO_GET_INFO` / `IP6T_SO_GET_INFO` (`IPT_BASE_CTL`, 64, for both families).
const SO_GET_INFO: libc::c_int = 64;
/// `IPT_SO_GET_ENTRIES` / `IP6T_SO_GET_ENTRIES`.
const SO_GET_ENTRIES: libc::c_int = 65;
/// `XT_TABLE_MAXNAMELEN`: the table name field of the getsockopt arguments.
const TABLE_NAME_LEN: usize = 32;
/// `NF_INET_NUMHOOKS`.
const HOOKS: usize = 5;
/// `NF_INET_FORWARD`.
pub(super) const FORWARD_HOOK: usize = 2;
/// `sizeof(struct ipt_getinfo)` (the IPv6 one is identical): name, `valid_hooks` @32, `hook_entry[5]` @36,
/// `underflow[5]` @56, `num_entries` @76, `size` @80.
const INFO_LEN: usize = 84;
/// `offsetof(struct ipt_get_entries, entrytable)`: name, `size` @32, then the entries at 8-byte alignment (an
/// entry holds `u64` counters).
const GET_ENTRIES_HEADER: usize = 40;
/// `sizeof(struct xt_entry_match)` = `sizeof(struct xt_entry_target)`: `u16` size, `char name[29]`, `u8`
/// revision; the extension's data follows.
pub(super) const EXT_HEADER: usize = 32;
/// The name field of an extension header (`XT_EXTENSION_MAXNAMELEN`).
pub(super) const EXT_NAME: Range<usize> = 2..31;
/// A standard target's verdict for `NF_DROP` (`-NF_DROP - 1`).
pub(super) const VERDICT_DROP: i32 = -1;
/// A standard target's verdict for `NF_ACCEPT` (`-NF_ACCEPT - 1`).
pub(super) const VERDICT_ACCEPT: i32 = -2;
/// `XT_RETURN` (`-NF_REPEAT - 1`): a user chain's final entry, its "policy".
pub(super) const VERDICT_RETURN: i32 = -5;
/// `XT_ERROR_TARGET`: the head of a user chain (its name is the target's data), and the table's last entry.
const ERROR_TARGET: &[u8] = b"ERROR";
/// `XT_MAX_COMMENT_LEN`: the comment match's data, a NUL-terminated `char[256]`.
pub(super) const COMMENT_LEN: usize = 256;
/// `offsetof(struct xt_conntrack_mtinfo{1,2,3}, match_flags)`; `invert_flags` follows, then `state_mask` (a
/// `u8` in revision 1, a `u16` in revisions 2 and 3).
pub(super) const CONNTRACK_FLAGS: usize = 146;
/// `XT_CONNTRACK_STATE`, the only option of `--ctstate`.
pub(super) const CONNTRACK_STATE: u16 = 1;
/// `XT_CONNTRACK_STATE_BIT(IP_CT_ESTABLISHED) | XT_CONNTRACK_STATE_BIT(IP_CT_RELATED)`.
pub(super) const RELATED_ESTABLISHED: u16 = 0b110;
/// How often [`read`](super::read) starts over when the table changed between its getsockopts.
const READ_ATTEMPTS: usize = 5;

/// Byte layout of one family's entries (`struct ipt_entry` of `linux/netfilter_ipv4/ip_tables.h`, `struct
/// ip6t_entry` of `linux/netfilter_ipv6/ip6_tables.h`), the same on x86_64 and aarch64.
#[derive(Debug)]
pub(super) struct Layout {
    /// Size of the entry header; the matches follow it, then the target.
    pub(super) entry: usize,
    /// Address length: `src`, `dst`, `smsk` and `dmsk` are the first four fields.
    pub(super) addr: usize,
    /// The rest of the address header (interfaces and their masks, protocol, TOS for IPv6, flags, inverse
    /// flags; trailing padding left out): all zero in a rule that matches on an address only.
    pub(super) plain: Range<usize>,
    /// Offset of `u16 target_offset` (entry header plus matches).
    pub(super) target_offset: usize,
    /// Offset of `u16 next_offset` (entry header plus matches plus target).
    pub(super) next_offset: usize,
}

/// `struct ipt_entry`: `ipt_ip` (84 bytes: 4 addresses, 2 x 16 interface bytes, 2 x 16 mask bytes, `u16 proto`
/// @80, `u8 flags` @82, `u8 invflags` @83), `nfcache` @84, then the offsets, `comefrom` @92, counters @96.
pub(super) const IPV4: Layout = Layout {
    entry: 112,
    addr: 4,
    plain: 16..84,
    target_offset: 88,
    next_offset: 90,
};

/// `struct ip6t_entry`: `ip6t_ip6` (136 bytes: 4 addresses, interfaces and masks @64..128, `u16 proto` @128,
/// `u8 tos` @130, `u8 flags` @131, `u8 invflags` @132, padding), `nfcache` @136, the offsets, `comefrom` @144,
/// counters @152.
pub(super) const IPV6: Layout = Layout {
    entry: 168,
    addr: 16,
    plain: 64..133,
    target_offset: 140,
    next_offset: 142,
};

/// What differs between the two families, beside the layout.
#[derive(Debug)]
pub(super) struct Spec {
    pub(super) layout: &'static Layout,
    /// The calling thread's list of instantiated tables. `/proc/net` is `/proc/self/net`, which shows the
    /// namespace of the process's main thread, not of a thread that entered another namespace.
    pub(super) names: &'static str,
    domain: libc::c_int,
    level: libc::c_int,
    /// For [`Error::LegacyRead`](crate::Error::LegacyRead).
    pub(super) program: &'static str,
    /// The program [`apply`](super::apply) runs.
    pub(super) restore: &'static str,
}

const SPEC_V4: Spec = Spec {
    layout: &IPV4,
    names: "/proc/thread-self/net/ip_tables_names",
    domain: libc::AF_INET,
    level: libc::SOL_IP,
    program: "iptables",
    restore: "iptables-legacy-restore",
};

const SPEC_V6: Spec = Spec {
    layout: &IPV6,
    names: "/proc/thread-self/net/ip6_tables_names",
    domain: libc::AF_INET6,
    level: libc::SOL_IPV6,
    program: "ip6tables",
    restore: "ip6tables-legacy-restore",
};

pub(super) fn spec(family: Family) -> &'static Spec {
    match family {
        Family::V4 => &SPEC_V4,
        Family::V6 => &SPEC_V6,
    }
}

/// What `IPT_SO_GET_INFO` says of a table: where its built-in chains start and end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Info {
    /// Bit `h` set: the table has hook `h`'s chain.
    pub(super) valid_hooks: u32,
    /// Offset of each built-in chain's first entry in the entries.
    pub(super) hook_entry: [u32; HOOKS],
    /// Offset of each built-in chain's policy entry (its last).
    pub(super) underflow: [u32; HOOKS],
    /// Byte size of the entries.
    pub(super) size: u32,
}

impl Info {
    /// Decodes a `struct ipt_getinfo` (host byte order).
    fn decode(buf: &[u8; INFO_LEN]) -> Info {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        Info {
            valid_hooks: word(32),
            hook_entry: std::array::from_fn(|h| word(36 + 4 * h)),
            underflow: std::array::from_fn(|h| word(56 + 4 * h)),
            size: word(80),
        }
    }
}

/// Whether the namespace has a legacy `filter` table of this family. A missing list means x_tables itself is
/// not there (`ip_tables` not loaded).
pub(super) fn filter_exists(spec: &Spec) -> io::Result<bool> {
    match std::fs::read_to_string(spec.names) {
        Ok(names) => Ok(names.lines().any(|name| name == "filter")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The table's info and entries, consistent with each other: the kernel answers `GET_ENTRIES` only for the size
/// the caller names (`EAGAIN` otherwise), and the info is read again afterwards, since a change that kept the size
/// could still have moved the chains.
pub(super) fn fetch(spec: &Spec) -> io::Result<(Info, Vec<u8>)> {
    let sock = raw_socket(spec.domain)?;
    for _ in 0..READ_ATTEMPTS {
        let info = get_info(&sock, spec.level)?;
        let Some(entries) = get_entries(&sock, spec.level, info.size)? else {
            continue;
        };
        if get_info(&sock, spec.level)? == info {
            return Ok((info, entries));
        }
    }
    Err(io::Error::other(
        "the table changed while it was read, every time",
    ))
}

/// A raw socket of the calling thread's namespace: the x_tables getsockopts are served on any `AF_INET`
/// (`AF_INET6`) socket, and a raw one is what iptables uses (it needs `CAP_NET_RAW`, which a plugin has as root).
fn raw_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `getsockopt(level, opt)` into `buf`; returns the length the kernel reports.
fn getsockopt(
    sock: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "getsockopt buffer too large"))?;
    // SAFETY: `buf` is valid for writes of `len` bytes and the kernel writes at most `len` bytes; `len` is a valid
    // `socklen_t` the kernel may update. The x_tables structures are read byte-wise, so alignment does not matter.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// A table name field: "filter", NUL-padded.
fn table_name() -> [u8; TABLE_NAME_LEN] {
    let mut name = [0; TABLE_NAME_LEN];
    name[..6].copy_from_slice(b"filter");
    name
}

/// `IPT_SO_GET_INFO` for `filter` (the kernel insists on the exact structure size).
fn get_info(sock: &OwnedFd, level: libc::c_int) -> io::Result<Info> {
    let mut buf = [0u8; INFO_LEN];
    buf[..TABLE_NAME_LEN].copy_from_slice(&table_name());
    let len = getsockopt(sock, level, SO_GET_INFO, &mut buf)?;
    if len != INFO_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short IPT_SO_GET_INFO answer",
        ));
    }
    Ok(Info::decode(&buf))
}

/// `IPT_SO_GET_ENTRIES` for `filter`, `size` bytes of entries; `None` when the table no longer has that size
/// (`EAGAIN`) or the answer came back short, so the caller starts over.
fn get_entries(sock: &OwnedFd, level: libc::c_int, size: u32) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; GET_ENTRIES_HEADER + size as usize];
    buf[..TABLE_NAME_LEN].copy_from_slice(&table_name());
    buf[TABLE_NAME_LEN..TABLE_NAME_LEN + 4].copy_from_slice(&size.to_ne_bytes());
    match getsockopt(sock, level, SO_GET_ENTRIES, &mut buf) {
        Ok(len) if len == buf.len() => Ok(Some(buf.split_off(GET_ENTRIES_HEADER))),
        Ok(_) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One match or target of an entry.
#[derive(Debug)]
struct Ext<'a> {
    /// Up to the first NUL; empty for the standard target.
    name: &'a [u8],
    revision: u8,
    data: &'a [u8],
}

impl<'a> Ext<'a> {
    /// Splits an extension of exactly its `size` bytes.
    fn new(bytes: &'a [u8]) -> Ext<'a> {
        let name = &bytes[EXT_NAME];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Ext {
            name: &name[..end],
            revision: bytes[EXT_NAME.end],
            data: &bytes[EXT_HEADER..],
        }
    }
}

/// One entry (a rule, a policy, a chain head) at `offset` in the entries.
#[derive(Debug)]
struct Entry<'a> {
    offset: usize,
    /// The address header (`ipt_ip` / `ip6t_ip6`).
    ip: &'a [u8],
    matches: Vec<Ext<'a>>,
    target: Ext<'a>,
}

impl Entry<'_> {
    /// The standard target's verdict (a negative `NF_*` verdict, `XT_RETURN`, or a jump's offset); `None` for any
    /// other target.
    fn verdict(&self) -> Option<i32> {
        match (self.target.name, self.target.data) {
            (b"", [a, b, c, d, ..]) => Some(i32::from_ne_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    /// The chain name an `ERROR` entry carries.
    fn error_name(&self) -> Option<&[u8]> {
        if self.target.name != ERROR_TARGET {
            return None;
        }
        let data = self.target.data;
        Some(&data[..data.iter().position(|&b| b == 0).unwrap_or(data.len())])
    }
}

fn u16_at(bytes: &[u8], at: usize) -> usize {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]]) as usize
}

/// Splits the entries, checking every offset, so that nothing later indexes out of bounds and the walk always
/// advances (an entry is at least its header plus a target header).
fn walk<'a>(layout: &Layout, bytes: &'a [u8]) -> Result<Vec<Entry<'a>>, &'static str> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < layout.entry {
            return Err("truncated entry");
        }
        let target_at = u16_at(rest, layout.target_offset);
        let next = u16_at(rest, layout.next_offset);
        if target_at < layout.entry || target_at + EXT_HEADER > next || next > rest.len() {
            return Err("entry offsets out of bounds");
        }
        let entry = &rest[..next];
        let mut matches = Vec::new();
        let mut at = layout.entry;
        while at < target_at {
            matches.push(Ext::new(extension(entry, at, target_at)?));
            at += u16_at(entry, at);
        }
        let target = Ext::new(extension(entry, target_at, next)?);
        entries.push(Entry {
            offset,
            ip: &entry[..layout.plain.end],
            matches,
            target,
        });
        offset += next;
    }
    Ok(entries)
}

/// The extension starting at `at`, which must end by `end`.
fn extension(entry: &[u8], at: usize, end: usize) -> Result<&[u8], &'static str> {
    if at + EXT_HEADER > end {
        return Err("truncated match or target");
    }
    let size = u16_at(entry, at);
    if size < EXT_HEADER || at + size > end {
        return Err("match or target size out of bounds");
    }
    Ok(&entry[at..at + size])
}

/// What a table holds of trestle's, from its info and entries as `IPT_SO_GET_ENTRIES` returns them: the
/// `FORWARD` policy, [`CHAIN`], the jumps to it, and the rules in it that [`script`](super::script) could have
/// written.
pub(super) fn parse(
    family: Family,
    info: &Info,
    bytes: &[u8],
) -> Result<View<LegacyHandle>, &'static str> {
    let layout = spec(family).layout;
    let entries = walk(layout, bytes)?;
    if info.valid_hooks & (1 << FORWARD_HOOK) == 0 {
        return Err("the filter table has no FORWARD chain");
    }
    let at = |offset: u32| {
        entries
            .iter()
            .position(|e| e.offset == offset as usize)
            .ok_or("a built-in chain does not start at an entry")
    };
    let (first, policy) = (
        at(info.hook_entry[FORWARD_HOOK])?,
        at(info.underflow[FORWARD_HOOK])?,
    );
    if policy < first {
        return Err("FORWARD ends before it starts");
    }
    let chain = user_chain(&entries, info, CHAIN.as_bytes());
    // A jump's verdict is the offset of the chain's first entry, past its head.
    let start = chain.and_then(|rules| rules.first()).map(|e| e.offset);
    let body = chain.map(rules_of_chain).unwrap_or_default();
    let rules: Vec<_> = body
        .iter()
        .filter_map(|e| trestle_rule(layout, e))
        .map(|rule| (rule.clone(), LegacyHandle::Rule(rule)))
        .collect();
    let count = rules.len();
    let forward = &entries[first..policy];
    let jumps_to = |start: Option<usize>| {
        move |e: &&Entry| start.is_some_and(|s| i32::try_from(s).ok() == e.verdict())
    };
    let ours = forward.iter().filter(|e| is_jump(layout, e, start)).count();
    let docker_user = user_chain(&entries, info, DOCKER_USER.as_bytes())
        .and_then(|rules| rules.first())
        .map(|e| e.offset);
    Ok(View {
        drops: entries[policy].verdict() == Some(VERDICT_DROP),
        chain: chain.is_some(),
        jumps: vec![LegacyHandle::Jump; ours],
        rules,
        // Jumps to the chain that are not trestle's keep it too: deleting it would fail.
        foreign: body.len() - count + forward.iter().filter(jumps_to(start)).count() - ours,
        docker_user: forward
            .iter()
            .position(|e| jumps_to(docker_user)(&e))
            .map(|index| Anchor { index, handle: 0 }),
    })
}

/// The entries of the user chain `name` after its head, its final `RETURN` included (so the first of them is
/// where a jump lands, also in an empty chain); `None` when there is no such chain. A chain runs up to the next
/// chain's start: the next head (`ERROR` entry), or a built-in chain's first entry.
fn user_chain<'e, 'a>(
    entries: &'e [Entry<'a>],
    info: &Info,
    name: &[u8],
) -> Option<&'e [Entry<'a>]> {
    let head = entries.iter().position(|e| e.error_name() == Some(name))?;
    let starts_chain = |e: &Entry| {
        e.error_name().is_some()
            || (0..HOOKS).any(|h| {
                info.valid_hooks & (1 << h) != 0 && info.hook_entry[h] as usize == e.offset
            })
    };
    let body = &entries[head + 1..];
    let end = body.iter().position(starts_chain).unwrap_or(body.len());
    Some(&body[..end])
}

/// A user chain's rules: its body without the final `RETURN`, which is the chain's policy, not a rule.
fn rules_of_chain<'e, 'a>(body: &'e [Entry<'a>]) -> &'e [Entry<'a>] {
    match body.split_last() {
        Some((last, rules))
            if last.verdict() == Some(VERDICT_RETURN) && last.matches.is_empty() =>
        {
            rules
        }
        _ => body,
    }
}

/// Whether `e` is the jump [`script`](super::script) inserts: the comment alone, jumping to [`CHAIN`]'s first
/// entry.
fn is_jump(layout: &Layout, e: &Entry, chain_start: Option<usize>) -> bool {
    let Some(start) = chain_start.and_then(|s| i32::try_from(s).ok()) else {
        return false;
    };
    e.verdict() == Some(start)
        && all_zero(&e.ip[..4 * layout.addr])
        && all_zero(&e.ip[layout.plain.clone()])
        && matches!(&e.matches[..], [c] if comment(c).as_deref() == Some(JUMP_COMMENT))
}

/// The rule `e` is, when [`script`](super::script) could have written it; `None` for anything else.
fn trestle_rule(layout: &Layout, e: &Entry) -> Option<Rule> {
    if e.verdict() != Some(VERDICT_ACCEPT) || !all_zero(&e.ip[layout.plain.clone()]) {
        return None;
    }
    let field = |i: usize| &e.ip[i * layout.addr..(i + 1) * layout.addr];
    let (src, dst, smsk, dmsk) = (field(0), field(1), field(2), field(3));
    let (kind, addr, mask) = match (all_zero(smsk), all_zero(dmsk)) {
        (false, true) if all_zero(dst) => (Kind::From, src, smsk),
        (true, false) if all_zero(src) => (Kind::RepliesTo, dst, dmsk),
        _ => return None,
    };
    let text = match (kind, &e.matches[..]) {
        (Kind::From, [c]) => comment(c)?,
        (Kind::RepliesTo, [ct, c]) if replies_state(ct) => comment(c)?,
        _ => return None,
    };
    Some(Rule {
        kind,
        subnet: subnet(addr, mask)?,
        comment: text,
    })
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The text of a `comment` match (UTF-8, up to its NUL).
fn comment(m: &Ext) -> Option<String> {
    if m.name != b"comment" || m.revision != 0 || m.data.len() < COMMENT_LEN {
        return None;
    }
    let text = &m.data[..COMMENT_LEN];
    let end = text.iter().position(|&b| b == 0)?;
    String::from_utf8(text[..end].to_vec()).ok()
}

/// Whether `m` is `-m conntrack --ctstate RELATED,ESTABLISHED` and nothing more (revisions 1 to 3 share the
/// offsets; iptables 1.8 writes revision 3).
fn replies_state(m: &Ext) -> bool {
    if m.name != b"conntrack"
        || !(1..=3).contains(&m.revision)
        || m.data.len() < CONNTRACK_FLAGS + 6
    {
        return false;
    }
    let state = match m.revision {
        1 => u16::from(m.data[CONNTRACK_FLAGS + 4]),
        _ => u16_at(m.data, CONNTRACK_FLAGS + 4) as u16,
    };
    u16_at(m.data, CONNTRACK_FLAGS) as u16 == CONNTRACK_STATE
        && u16_at(m.data, CONNTRACK_FLAGS + 2) == 0
        && state == RELATED_ESTABLISHED
}

/// The subnet of an address and its mask; `None` for a mask iptables cannot write as a prefix length.
pub(super) fn subnet(addr: &[u8], mask: &[u8]) -> Option<IpNet> {
    masked_net(addr, mask).map(|net| net.trunc())
}
