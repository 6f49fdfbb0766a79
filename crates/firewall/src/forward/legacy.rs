//! The legacy (x_tables, `iptables-legacy`) backend of forward accept: reading what one family's `filter` table
//! holds of trestle's, and changing it.
//!
//! # Reading, in-process
//! [`read`] asks the kernel for the table's blob with the two getsockopts `iptables-legacy` itself uses
//! (`IPT_SO_GET_INFO`, then `IPT_SO_GET_ENTRIES`; `IP6T_*` for IPv6) on a raw socket of the calling thread's
//! network namespace, and parses it here ([`parse`] is a pure function over those bytes). No process is run:
//! CHECK and every ADD look, and most of them find everything in place.
//!
//! The kernel instantiates a legacy table the first time anyone asks for it (any getsockopt naming it), and
//! keeps it for the namespace's life: on a host whose firewall is nf_tables only, a legacy `filter` table would
//! appear beside it (`iptables-nft` then warns that legacy tables are present, and tools that pick their backend
//! by which tables exist, such as Kubernetes' `iptables-wrapper`, may pick legacy). So [`read`] first looks in
//! the thread's `/proc/thread-self/net/ip_tables_names` whether the table exists, and calls no getsockopt when it
//! does not.
//!
//! # Changing, through `iptables-legacy-restore`
//! [`apply`] is the only process trestle runs for its firewall. Changing an x_tables table means replacing the
//! whole table blob (`IPT_SO_SET_REPLACE`): every rule of every other program re-encoded with correct offsets and
//! jump targets, then the old counters handed back (`IPT_SO_SET_ADD_COUNTERS`), all under the `xtables.lock` that
//! every iptables command takes. `iptables-legacy-restore` does exactly that and is what the table's other users
//! run; re-implementing it in-process would be a second, subtler copy of libiptc for a rare event. It runs once
//! per network added or removed (the plan is empty otherwise), never per pod. Measured on the development VM
//! (Debian 12's iptables 1.8.9, kernel 6.18, 40 rounds): ensure of one network 1.1-7.3 ms, median 3-4 ms, and
//! the same for its removal; a [`read`] 26-90 µs, median 34 µs (release build). The tests
//! `apply_and_read_in_a_namespace_*` print one of each.

use super::rules::{Kind, Op, Rule, View, CHAIN, FORWARD, JUMP_COMMENT};
use crate::names::Family;
use crate::Error;
use ipnet::IpNet;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How trestle names a legacy rule for deletion: x_tables rules have no handle, `iptables -D` finds a rule by its
/// spec, so the handle is what it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LegacyHandle {
    /// The jump from `FORWARD` to [`CHAIN`] (there is only one spec for it).
    Jump,
    /// A rule of [`CHAIN`].
    Rule(Rule),
}

/// `IPT_SO_GET_INFO` / `IP6T_SO_GET_INFO` (`IPT_BASE_CTL`, 64, for both families).
const SO_GET_INFO: libc::c_int = 64;
/// `IPT_SO_GET_ENTRIES` / `IP6T_SO_GET_ENTRIES`.
const SO_GET_ENTRIES: libc::c_int = 65;
/// `XT_TABLE_MAXNAMELEN`: the table name field of the getsockopt arguments.
const TABLE_NAME_LEN: usize = 32;
/// `NF_INET_NUMHOOKS`.
const HOOKS: usize = 5;
/// `NF_INET_FORWARD`.
const FORWARD_HOOK: usize = 2;
/// `sizeof(struct ipt_getinfo)` (the IPv6 one is identical): name, `valid_hooks` @32, `hook_entry[5]` @36,
/// `underflow[5]` @56, `num_entries` @76, `size` @80.
const INFO_LEN: usize = 84;
/// `offsetof(struct ipt_get_entries, entrytable)`: name, `size` @32, then the entries at 8-byte alignment (an
/// entry holds `u64` counters).
const GET_ENTRIES_HEADER: usize = 40;
/// `sizeof(struct xt_entry_match)` = `sizeof(struct xt_entry_target)`: `u16` size, `char name[29]`, `u8`
/// revision; the extension's data follows.
const EXT_HEADER: usize = 32;
/// The name field of an extension header (`XT_EXTENSION_MAXNAMELEN`).
const EXT_NAME: Range<usize> = 2..31;
/// A standard target's verdict for `NF_DROP` (`-NF_DROP - 1`).
const VERDICT_DROP: i32 = -1;
/// A standard target's verdict for `NF_ACCEPT` (`-NF_ACCEPT - 1`).
const VERDICT_ACCEPT: i32 = -2;
/// `XT_RETURN` (`-NF_REPEAT - 1`): a user chain's final entry, its "policy".
const VERDICT_RETURN: i32 = -5;
/// `XT_ERROR_TARGET`: the head of a user chain (its name is the target's data), and the table's last entry.
const ERROR_TARGET: &[u8] = b"ERROR";
/// `XT_MAX_COMMENT_LEN`: the comment match's data, a NUL-terminated `char[256]`.
const COMMENT_LEN: usize = 256;
/// `offsetof(struct xt_conntrack_mtinfo{1,2,3}, match_flags)`; `invert_flags` follows, then `state_mask` (a
/// `u8` in revision 1, a `u16` in revisions 2 and 3).
const CONNTRACK_FLAGS: usize = 146;
/// `XT_CONNTRACK_STATE`, the only option of `--ctstate`.
const CONNTRACK_STATE: u16 = 1;
/// `XT_CONNTRACK_STATE_BIT(IP_CT_ESTABLISHED) | XT_CONNTRACK_STATE_BIT(IP_CT_RELATED)`.
const RELATED_ESTABLISHED: u16 = 0b110;
/// How often [`read`] starts over when the table changed between its getsockopts.
const READ_ATTEMPTS: usize = 5;
/// Seconds `iptables-legacy-restore` waits for the `xtables.lock` another iptables command holds.
const LOCK_WAIT_SECS: &str = "5";
/// Where the restore programs are looked for after `PATH`: a CNI plugin's `PATH` can be nearly empty.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];
/// The environment passed through to the restore program: the variables iptables itself reads (its extension
/// directory, its lock file), so that it behaves as the administrator's own iptables commands.
const PASSED_ENV: [&str; 2] = ["XTABLES_LIBDIR", "XT_LOCK_NAME"];

/// Byte layout of one family's entries (`struct ipt_entry` of `linux/netfilter_ipv4/ip_tables.h`, `struct
/// ip6t_entry` of `linux/netfilter_ipv6/ip6_tables.h`), the same on x86_64 and aarch64.
#[derive(Debug)]
struct Layout {
    /// Size of the entry header; the matches follow it, then the target.
    entry: usize,
    /// Address length: `src`, `dst`, `smsk` and `dmsk` are the first four fields.
    addr: usize,
    /// The rest of the address header (interfaces and their masks, protocol, TOS for IPv6, flags, inverse
    /// flags; trailing padding left out): all zero in a rule that matches on an address only.
    plain: Range<usize>,
    /// Offset of `u16 target_offset` (entry header plus matches).
    target_offset: usize,
    /// Offset of `u16 next_offset` (entry header plus matches plus target).
    next_offset: usize,
}

/// `struct ipt_entry`: `ipt_ip` (84 bytes: 4 addresses, 2 x 16 interface bytes, 2 x 16 mask bytes, `u16 proto`
/// @80, `u8 flags` @82, `u8 invflags` @83), `nfcache` @84, then the offsets, `comefrom` @92, counters @96.
const IPV4: Layout = Layout {
    entry: 112,
    addr: 4,
    plain: 16..84,
    target_offset: 88,
    next_offset: 90,
};

/// `struct ip6t_entry`: `ip6t_ip6` (136 bytes: 4 addresses, interfaces and masks @64..128, `u16 proto` @128,
/// `u8 tos` @130, `u8 flags` @131, `u8 invflags` @132, padding), `nfcache` @136, the offsets, `comefrom` @144,
/// counters @152.
const IPV6: Layout = Layout {
    entry: 168,
    addr: 16,
    plain: 64..133,
    target_offset: 140,
    next_offset: 142,
};

/// What differs between the two families, beside the layout.
#[derive(Debug)]
struct Spec {
    layout: &'static Layout,
    /// The calling thread's list of instantiated tables. `/proc/net` is `/proc/self/net`, which shows the
    /// namespace of the process's main thread, not of a thread that entered another namespace.
    names: &'static str,
    domain: libc::c_int,
    level: libc::c_int,
    /// For [`Error::LegacyRead`].
    program: &'static str,
    /// The program [`apply`] runs.
    restore: &'static str,
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

fn spec(family: Family) -> &'static Spec {
    match family {
        Family::V4 => &SPEC_V4,
        Family::V6 => &SPEC_V6,
    }
}

/// What `IPT_SO_GET_INFO` says of a table: where its built-in chains start and end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Info {
    /// Bit `h` set: the table has hook `h`'s chain.
    valid_hooks: u32,
    /// Offset of each built-in chain's first entry in the entries.
    hook_entry: [u32; HOOKS],
    /// Offset of each built-in chain's policy entry (its last).
    underflow: [u32; HOOKS],
    /// Byte size of the entries.
    size: u32,
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

/// Reads what the calling thread's network namespace's legacy `filter` table of `family` holds of trestle's.
/// `None` when there is no such table (x_tables absent, or nobody has used its `filter` table in this namespace):
/// it is then not created.
///
/// Only rules exactly as [`script`] writes them count (an address, the comment, the conntrack state for
/// replies, `ACCEPT`, nothing else), since only those can be deleted by that spec; anything else in [`CHAIN`] is
/// someone else's and ignored.
pub(crate) fn read(family: Family) -> Result<Option<View<LegacyHandle>>, Error> {
    let spec = spec(family);
    let fail = |source| Error::LegacyRead {
        program: spec.program,
        source,
    };
    if !filter_exists(spec).map_err(fail)? {
        return Ok(None);
    }
    let (info, entries) = fetch(spec).map_err(fail)?;
    parse(family, &info, &entries)
        .map(Some)
        .map_err(|what| fail(io::Error::new(io::ErrorKind::InvalidData, what)))
}

/// Whether the namespace has a legacy `filter` table of this family. A missing list means x_tables itself is
/// not there (`ip_tables` not loaded).
fn filter_exists(spec: &Spec) -> io::Result<bool> {
    match std::fs::read_to_string(spec.names) {
        Ok(names) => Ok(names.lines().any(|name| name == "filter")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The table's info and entries, consistent with each other: the kernel answers `GET_ENTRIES` only for the size
/// the caller names (`EAGAIN` otherwise), and the info is read again afterwards, since a change that kept the size
/// could still have moved the chains.
fn fetch(spec: &Spec) -> io::Result<(Info, Vec<u8>)> {
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
/// `FORWARD` policy, [`CHAIN`], the jumps to it, and the rules in it that [`script`] could have written.
fn parse(family: Family, info: &Info, bytes: &[u8]) -> Result<View<LegacyHandle>, &'static str> {
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
    Ok(View {
        drops: entries[policy].verdict() == Some(VERDICT_DROP),
        chain: chain.is_some(),
        jumps: entries[first..policy]
            .iter()
            .filter(|e| is_jump(layout, e, start))
            .map(|_| LegacyHandle::Jump)
            .collect(),
        rules,
        foreign: body.len() - count,
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

/// Whether `e` is the jump [`script`] inserts: the comment alone, jumping to [`CHAIN`]'s first entry.
fn is_jump(layout: &Layout, e: &Entry, chain_start: Option<usize>) -> bool {
    let Some(start) = chain_start.and_then(|s| i32::try_from(s).ok()) else {
        return false;
    };
    e.verdict() == Some(start)
        && all_zero(&e.ip[..4 * layout.addr])
        && all_zero(&e.ip[layout.plain.clone()])
        && matches!(&e.matches[..], [c] if comment(c).as_deref() == Some(JUMP_COMMENT))
}

/// The rule `e` is, when [`script`] could have written it; `None` for anything else.
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
fn subnet(addr: &[u8], mask: &[u8]) -> Option<IpNet> {
    let (ip, bits) = match (<[u8; 4]>::try_from(addr), <[u8; 4]>::try_from(mask)) {
        (Ok(a), Ok(m)) => (
            IpAddr::V4(Ipv4Addr::from(a)),
            u128::from(u32::from_be_bytes(m)) << 96,
        ),
        _ => {
            let a = <[u8; 16]>::try_from(addr).ok()?;
            let m = <[u8; 16]>::try_from(mask).ok()?;
            (IpAddr::V6(Ipv6Addr::from(a)), u128::from_be_bytes(m))
        }
    };
    // Contiguous: the ones all come first (the IPv4 mask was shifted to the top).
    let prefix = bits.leading_ones();
    if bits.checked_shl(prefix).unwrap_or(0) != 0 {
        return None;
    }
    let prefix = u8::try_from(prefix).ok()?;
    Some(IpNet::new(ip, prefix).ok()?.trunc())
}

/// The `iptables-legacy-restore --noflush` input carrying out `ops` in order, as one transaction.
///
/// `Op::NewChain` declares the chain (`:TRESTLE-FORWARD - [0:0]`), which under `--noflush` creates a missing
/// chain but flushes an existing one: only a plan that found no chain asks for it. Comments are quoted, with `\`
/// and `"` escaped as iptables-restore's tokenizer wants (inside quotes, `\` takes the next character literally;
/// an unescaped `\` would vanish). A line break cannot be written at all (the input is read line by line):
/// [`apply`] refuses such a comment.
pub(crate) fn script(ops: &[Op<LegacyHandle>]) -> String {
    let mut out = String::from("*filter\n");
    for op in ops {
        let line = match op {
            Op::NewChain => format!(":{CHAIN} - [0:0]"),
            Op::InsertJump => format!("-I {FORWARD} 1 {}", jump_spec()),
            Op::Append(rule) => format!("-A {CHAIN} {}", rule_spec(rule)),
            Op::Delete(LegacyHandle::Rule(rule)) => format!("-D {CHAIN} {}", rule_spec(rule)),
            // The handle names a jump, whichever op carries it.
            Op::Delete(LegacyHandle::Jump) | Op::DeleteJump(_) => {
                format!("-D {FORWARD} {}", jump_spec())
            }
            Op::DeleteChain => format!("-X {CHAIN}"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

fn jump_spec() -> String {
    format!("-m comment --comment {} -j {CHAIN}", quote(JUMP_COMMENT))
}

/// A rule's matches and target, the same for appending and deleting (`-D` finds the rule by them).
fn rule_spec(rule: &Rule) -> String {
    let comment = quote(&rule.comment);
    match rule.kind {
        Kind::From => format!("-s {} -m comment --comment {comment} -j ACCEPT", rule.subnet),
        Kind::RepliesTo => format!(
            "-d {} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment {comment} -j ACCEPT",
            rule.subnet
        ),
    }
}

/// One argument for iptables-restore: in double quotes, `\` and `"` escaped.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Carries out `ops` on the calling thread's network namespace's legacy `filter` table of `family`: one
/// `iptables-legacy-restore --noflush` (`ip6tables-legacy-restore`), all ops in one transaction, nothing done when
/// any fails. No process for an empty plan. See the module documentation for why this is a process.
pub(crate) fn apply(family: Family, ops: &[Op<LegacyHandle>]) -> Result<(), Error> {
    if ops.is_empty() {
        return Ok(());
    }
    let program = spec(family).restore;
    let fail = |detail: String| Error::LegacyRestore { program, detail };
    writable(family, ops).map_err(fail)?;
    let path = find_program(program)
        .ok_or_else(|| fail("not found on PATH, in /usr/sbin or /sbin".into()))?;
    let mut command = Command::new(&path);
    command
        .args(["--noflush", "-w", LOCK_WAIT_SECS])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in PASSED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", path.display())))?;
    // A few hundred bytes, far below a pipe's buffer, so writing all before reading cannot block. A program that
    // exits early breaks the pipe; its status and stderr then say why.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script(ops).as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot wait for {}: {e}", path.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!("{}: {}", out.status, stderr.trim())));
    }
    match written {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(fail(format!("cannot write its input: {e}"))),
        None => Err(fail("no input pipe".into())),
    }
}

/// Refuses what the restore input cannot carry, before anything runs: a comment with a line break (network names
/// are free text), or a subnet of the other family.
fn writable(family: Family, ops: &[Op<LegacyHandle>]) -> Result<(), String> {
    for op in ops {
        let rule = match op {
            Op::Append(rule) | Op::Delete(LegacyHandle::Rule(rule)) => rule,
            _ => continue,
        };
        if rule.comment.contains(['\n', '\r']) {
            return Err(format!(
                "the comment {:?} has a line break, which iptables-restore cannot read",
                rule.comment
            ));
        }
        if Family::of(rule.subnet.addr()) != family {
            return Err(format!("{} is not of this table's family", rule.subnet));
        }
    }
    Ok(())
}

/// The first executable `name` in the absolute directories of `PATH`, then in [`SBIN_DIRS`].
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::super::rules::{plan_ensure, plan_remove, wanted};
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn layout(family: Family) -> &'static Layout {
        spec(family).layout
    }

    /// An extension as the kernel returns it: header, data, padded to 8 bytes (`XT_ALIGN`).
    fn ext(name: &str, revision: u8, data: &[u8]) -> Vec<u8> {
        let size = (EXT_HEADER + data.len()).next_multiple_of(8);
        let mut out = vec![0; size];
        out[..2].copy_from_slice(&(size as u16).to_ne_bytes());
        out[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out[EXT_NAME.end] = revision;
        out[EXT_HEADER..EXT_HEADER + data.len()].copy_from_slice(data);
        out
    }

    fn standard(verdict: i32) -> Vec<u8> {
        ext("", 0, &verdict.to_ne_bytes())
    }

    fn error(name: &str) -> Vec<u8> {
        let mut data = [0; 32];
        data[..name.len()].copy_from_slice(name.as_bytes());
        ext("ERROR", 0, &data)
    }

    fn comment_match(text: &str) -> Vec<u8> {
        let mut data = [0; COMMENT_LEN];
        data[..text.len()].copy_from_slice(text.as_bytes());
        ext("comment", 0, &data)
    }

    /// `--ctstate RELATED,ESTABLISHED` as `xt_conntrack_mtinfo3` (164 bytes).
    fn conntrack_match(state: u16) -> Vec<u8> {
        let mut data = [0; 164];
        data[CONNTRACK_FLAGS..CONNTRACK_FLAGS + 2].copy_from_slice(&CONNTRACK_STATE.to_ne_bytes());
        data[CONNTRACK_FLAGS + 4..CONNTRACK_FLAGS + 6].copy_from_slice(&state.to_ne_bytes());
        ext("conntrack", 3, &data)
    }

    /// An entry with source and destination subnets, matches and a target.
    fn entry(
        family: Family,
        s: Option<IpNet>,
        d: Option<IpNet>,
        matches: &[Vec<u8>],
        target: Vec<u8>,
    ) -> Vec<u8> {
        let l = layout(family);
        let mut out = vec![0; l.entry];
        for (i, n) in [(0, s), (1, d)] {
            if let Some(n) = n {
                let put = |out: &mut Vec<u8>, field: usize, bytes: Vec<u8>| {
                    out[field * l.addr..(field + 1) * l.addr].copy_from_slice(&bytes)
                };
                put(&mut out, i, crate::names::addr_bytes(n.network()));
                put(&mut out, i + 2, crate::names::addr_bytes(n.netmask()));
            }
        }
        for m in matches {
            out.extend_from_slice(m);
        }
        let target_at = out.len() as u16;
        out.extend_from_slice(&target);
        let next = out.len() as u16;
        out[l.target_offset..l.target_offset + 2].copy_from_slice(&target_at.to_ne_bytes());
        out[l.next_offset..l.next_offset + 2].copy_from_slice(&next.to_ne_bytes());
        out
    }

    /// A table as iptables-legacy lays one out: INPUT, FORWARD (the jump, a foreign rule, policy), OUTPUT, a user
    /// chain with a trestle-looking rule, TRESTLE-FORWARD with trestle rules and look-alikes, the final ERROR.
    /// Returns the info and the entries.
    fn table(family: Family, forward_policy: i32, with_chain: bool) -> (Info, Vec<u8>) {
        let (a, other, foreign) = match family {
            Family::V4 => (net("10.1.0.0/24"), net("10.7.0.0/24"), net("192.0.2.0/24")),
            Family::V6 => (net("fd00:1::/64"), net("fd00:7::/64"), net("2001:db8::/32")),
        };
        let c = format!("trestle a {a}");
        let e = |s, d, m: &[Vec<u8>], t| entry(family, s, d, m, t);
        let ct = conntrack_match(RELATED_ESTABLISHED);
        let mut entries = vec![
            e(None, None, &[], standard(VERDICT_ACCEPT)),
            // The jump; its verdict is patched below once the chain's offset is known.
            e(None, None, &[comment_match(JUMP_COMMENT)], standard(0)),
            e(Some(foreign), None, &[], standard(VERDICT_ACCEPT)),
            e(None, None, &[], standard(forward_policy)),
            e(None, None, &[], standard(VERDICT_ACCEPT)),
            e(None, None, &[], error("OTHER")),
            e(
                Some(other),
                None,
                &[comment_match(&format!("trestle b {other}"))],
                standard(VERDICT_ACCEPT),
            ),
            e(None, None, &[], standard(VERDICT_RETURN)),
        ];
        let head = entries.len();
        if with_chain {
            let mut iface = e(
                Some(a),
                None,
                &[comment_match(&c)],
                standard(VERDICT_ACCEPT),
            );
            iface[layout(family).plain.start] = b'e';
            let mut inverted = e(
                Some(a),
                None,
                &[comment_match(&c)],
                standard(VERDICT_ACCEPT),
            );
            inverted[layout(family).plain.end - 1] = 0x08;
            let mut holes = e(
                Some(a),
                None,
                &[comment_match(&c)],
                standard(VERDICT_ACCEPT),
            );
            holes[2 * layout(family).addr] = 0xfe;
            entries.extend([
                e(None, None, &[], error(CHAIN)),
                e(
                    Some(a),
                    None,
                    &[comment_match(&c)],
                    standard(VERDICT_ACCEPT),
                ),
                e(
                    None,
                    Some(a),
                    &[ct.clone(), comment_match(&c)],
                    standard(VERDICT_ACCEPT),
                ),
                iface,
                inverted,
                holes,
                e(
                    None,
                    Some(a),
                    &[comment_match(&c)],
                    standard(VERDICT_ACCEPT),
                ),
                e(
                    None,
                    Some(a),
                    &[conntrack_match(0b10), comment_match(&c)],
                    standard(VERDICT_ACCEPT),
                ),
                e(Some(a), None, &[comment_match(&c)], standard(VERDICT_DROP)),
                e(
                    Some(a),
                    Some(a),
                    &[comment_match(&c)],
                    standard(VERDICT_ACCEPT),
                ),
                e(Some(a), None, &[], standard(VERDICT_ACCEPT)),
                e(None, None, &[], standard(VERDICT_RETURN)),
            ]);
        }
        entries.push(e(None, None, &[], error("ERROR")));
        let offsets: Vec<u32> = entries
            .iter()
            .scan(0, |at, e| {
                let this = *at;
                *at += e.len() as u32;
                Some(this)
            })
            .collect();
        if with_chain {
            let jump = &mut entries[1];
            let at = jump.len() - 8;
            jump[at..at + 4].copy_from_slice(&(offsets[head + 1] as i32).to_ne_bytes());
        }
        let bytes = entries.concat();
        let info = Info {
            valid_hooks: 0b1110,
            hook_entry: [0, offsets[0], offsets[1], offsets[4], 0],
            underflow: [0, offsets[0], offsets[3], offsets[4], 0],
            size: bytes.len() as u32,
        };
        (info, bytes)
    }

    #[test]
    fn layouts_match_the_kernel_headers() {
        // The sizes the kernel headers give (checked with offsetof/sizeof on x86_64): an entry with a standard
        // target is `struct ipt_standard` / `struct ip6t_standard`, the table's last is `ipt_error`.
        assert_eq!(
            entry(Family::V4, None, None, &[], standard(0)).len(),
            112 + 40
        );
        assert_eq!(
            entry(Family::V6, None, None, &[], standard(0)).len(),
            168 + 40
        );
        assert_eq!(
            entry(Family::V4, None, None, &[], error("ERROR")).len(),
            112 + 64
        );
        assert_eq!(comment_match("x").len(), 288);
        assert_eq!(conntrack_match(0).len(), 200);
        for l in [&IPV4, &IPV6] {
            assert_eq!(l.next_offset, l.target_offset + 2);
            assert!(l.plain.end <= l.target_offset && l.plain.start == 4 * l.addr);
        }
    }

    #[test]
    fn parse_finds_the_jump_and_exactly_the_rules_trestle_writes() {
        for (family, a) in [
            (Family::V4, net("10.1.0.0/24")),
            (Family::V6, net("fd00:1::/64")),
        ] {
            let (info, bytes) = table(family, VERDICT_DROP, true);
            let view = parse(family, &info, &bytes).unwrap();
            let want = wanted("a", &[a]);
            assert!(view.drops && view.chain, "{view:?}");
            assert_eq!(view.jumps, [LegacyHandle::Jump]);
            let rules: Vec<Rule> = view.rules.iter().map(|(r, _)| r.clone()).collect();
            assert_eq!(rules, want, "{family:?}");
            for (rule, handle) in &view.rules {
                assert_eq!(handle, &LegacyHandle::Rule(rule.clone()));
            }
        }
    }

    #[test]
    fn parse_without_chain_or_drop() {
        for family in [Family::V4, Family::V6] {
            let (info, bytes) = table(family, VERDICT_ACCEPT, false);
            let view = parse(family, &info, &bytes).unwrap();
            assert_eq!(
                view,
                View {
                    drops: false,
                    chain: false,
                    jumps: vec![],
                    rules: vec![],
                    foreign: 0
                }
            );
        }
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        let (info, bytes) = table(Family::V4, VERDICT_DROP, true);
        // Every truncation, and a pseudo-random corruption of every byte in turn, parse or fail cleanly.
        for len in 0..bytes.len() {
            let _ = parse(Family::V4, &info, &bytes[..len]);
        }
        let mut x: u32 = 0x2545_f491;
        for i in 0..bytes.len() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut bad = bytes.clone();
            bad[i] ^= (x as u8) | 1;
            let _ = parse(Family::V4, &info, &bad);
            let _ = parse(Family::V6, &info, &bad);
        }
        let mut zero_next = bytes.clone();
        zero_next[IPV4.next_offset..IPV4.next_offset + 2].fill(0);
        assert!(parse(Family::V4, &info, &zero_next).is_err());
        let mut off = info.clone();
        off.hook_entry[FORWARD_HOOK] += 8;
        assert!(parse(Family::V4, &off, &bytes).is_err());
        let mut no_forward = info;
        no_forward.valid_hooks = 0b1010;
        assert!(parse(Family::V4, &no_forward, &bytes).is_err());
    }

    #[test]
    fn subnets_need_contiguous_masks() {
        assert_eq!(
            subnet(&[10, 1, 0, 0], &[255, 255, 255, 0]),
            Some(net("10.1.0.0/24"))
        );
        assert_eq!(subnet(&[10, 1, 0, 0], &[255; 4]), Some(net("10.1.0.0/32")));
        assert_eq!(subnet(&[10, 1, 0, 0], &[255, 0, 255, 0]), None);
        let mut v6 = [0; 16];
        v6[..8].fill(0xff);
        assert_eq!(
            subnet(&[0xfd; 16], &v6),
            Some(net("fdfd:fdfd:fdfd:fdfd::/64"))
        );
        v6[15] = 1;
        assert_eq!(subnet(&[0xfd; 16], &v6), None);
    }

    #[test]
    fn script_writes_every_op_in_order() {
        let a = wanted("a", &[net("10.1.0.0/24")]);
        let ops = [
            Op::NewChain,
            Op::Append(a[0].clone()),
            Op::Append(a[1].clone()),
            Op::InsertJump,
            Op::Delete(LegacyHandle::Rule(a[0].clone())),
            Op::Delete(LegacyHandle::Rule(a[1].clone())),
            Op::DeleteJump(LegacyHandle::Jump),
            Op::DeleteChain,
        ];
        let s = "-s 10.1.0.0/24 -m comment --comment \"trestle a 10.1.0.0/24\" -j ACCEPT";
        let d = "-d 10.1.0.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \
                 \"trestle a 10.1.0.0/24\" -j ACCEPT";
        let jump = "-m comment --comment \"trestle: pod networks\" -j TRESTLE-FORWARD";
        assert_eq!(
            script(&ops),
            format!(
                "*filter\n:TRESTLE-FORWARD - [0:0]\n-A TRESTLE-FORWARD {s}\n-A TRESTLE-FORWARD {d}\n\
                 -I FORWARD 1 {jump}\n-D TRESTLE-FORWARD {s}\n-D TRESTLE-FORWARD {d}\n-D FORWARD {jump}\n\
                 -X TRESTLE-FORWARD\nCOMMIT\n"
            )
        );
    }

    #[test]
    fn comments_are_escaped_and_line_breaks_refused() {
        assert_eq!(quote(r#"a "b" c\d  e"#), r#""a \"b\" c\\d  e""#);
        let odd = wanted("x\ny", &[net("10.1.0.0/24")]);
        assert!(writable(Family::V4, &[Op::Append(odd[0].clone())]).is_err());
        let v6 = wanted("x", &[net("fd00::/64")]);
        assert!(writable(Family::V4, &[Op::Append(v6[0].clone())]).is_err());
        assert!(writable(Family::V6, &[Op::Append(v6[0].clone())]).is_ok());
        assert!(apply(Family::V4, &[]).is_ok(), "an empty plan runs nothing");
    }

    /// The privileged tests: a namespace of the test's own, iptables-legacy run inside it.
    mod ns {
        use super::*;
        use std::time::Instant;
        use trestle_netns::NetNs;

        /// Runs `f` on a thread inside a fresh namespace, which dies with the test.
        fn in_fresh_namespace<R: Send>(f: impl FnOnce() -> R + Send) -> R {
            let ns = NetNs::new_anonymous().expect("create namespace");
            ns.run(f).expect("enter namespace")
        }

        /// Runs a command in the calling thread's namespace (a child inherits the thread's); its stdout.
        fn run(args: &[&str]) -> String {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .expect("run");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("utf-8")
        }

        fn tool(family: Family, suffix: &str) -> String {
            format!("{}-legacy{suffix}", spec(family).program)
        }

        fn table_names(family: Family) -> String {
            std::fs::read_to_string(spec(family).names).unwrap_or_default()
        }

        /// `iptables-legacy-save -t filter` without its comment lines and chain counters.
        fn saved(family: Family) -> Vec<String> {
            run(&[&tool(family, "-save"), "-t", "filter"])
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
                .collect()
        }

        fn rules_of(view: &View<LegacyHandle>) -> Vec<Rule> {
            view.rules.iter().map(|(r, _)| r.clone()).collect()
        }

        fn view(family: Family) -> View<LegacyHandle> {
            read(family).unwrap().expect("a filter table")
        }

        #[test]
        #[ignore = "privileged: needs root and iptables-legacy"]
        fn read_of_a_namespace_without_tables_is_none_and_creates_none() {
            for family in [Family::V4, Family::V6] {
                in_fresh_namespace(|| {
                    assert!(!table_names(family).lines().any(|n| n == "filter"));
                    assert!(read(family).unwrap().is_none());
                    assert!(
                        !table_names(family).lines().any(|n| n == "filter"),
                        "{family:?}"
                    );
                });
            }
        }

        #[test]
        #[ignore = "privileged: needs root and iptables-legacy"]
        fn a_fresh_kernel_table_has_the_header_sizes() {
            // Three built-in chains of one `ipt_standard` each, and `ipt_error`: the entry and target sizes of
            // the headers, as the kernel itself lays them out.
            for (family, entry) in [(Family::V4, 112), (Family::V6, 168)] {
                in_fresh_namespace(|| {
                    run(&[&tool(family, ""), "-w", "5", "-S"]);
                    let (info, bytes) = fetch(spec(family)).unwrap();
                    let std = entry as u32 + 40;
                    assert_eq!(info.size as usize, bytes.len());
                    assert_eq!(info.size, 3 * std + entry as u32 + 64, "{family:?}");
                    assert_eq!(info.valid_hooks, 0b1110);
                    assert_eq!(&info.hook_entry[1..4], &[0, std, 2 * std]);
                    assert_eq!(info.underflow[1..4], info.hook_entry[1..4]);
                    let view = parse(family, &info, &bytes).unwrap();
                    assert!(
                        !view.drops
                            && !view.chain
                            && view.jumps.is_empty()
                            && view.rules.is_empty()
                    );
                });
            }
        }

        #[test]
        #[ignore = "privileged: needs root and iptables-legacy"]
        fn apply_and_read_in_a_namespace_v4() {
            round_trip(
                Family::V4,
                net("10.1.0.0/24"),
                net("10.2.0.0/24"),
                "192.0.2.0/24",
            );
        }

        #[test]
        #[ignore = "privileged: needs root and iptables-legacy"]
        fn apply_and_read_in_a_namespace_v6() {
            round_trip(
                Family::V6,
                net("fd00:1::/64"),
                net("fd00:2::/64"),
                "2001:db8::/32",
            );
        }

        /// Ensure of two networks and removal of both, against the real table, which must end as it began.
        fn round_trip(family: Family, a: IpNet, b: IpNet, foreign: &str) {
            in_fresh_namespace(|| {
                let iptables = tool(family, "");
                let ipt = |args: &str| {
                    let mut all = vec![iptables.as_str(), "-w", "5"];
                    all.extend(args.split(' '));
                    run(&all)
                };
                ipt("-P FORWARD DROP");
                ipt(&format!("-A FORWARD -s {foreign} -j ACCEPT"));
                let before = saved(family);
                let empty = view(family);
                assert!(
                    empty.drops && !empty.chain && empty.jumps.is_empty() && empty.rules.is_empty()
                );

                let want_a = wanted("net a", &[a]);
                let ops = plan_ensure(&empty, &want_a);
                let started = Instant::now();
                apply(family, &ops).unwrap();
                let applied = started.elapsed();
                let started = Instant::now();
                let after = view(family);
                let read_took = started.elapsed();
                eprintln!(
                    "{family:?}: apply of {} ops {applied:?}, read {read_took:?}",
                    ops.len()
                );
                assert_eq!(after.jumps, [LegacyHandle::Jump]);
                assert!(after.chain && after.drops);
                assert_eq!(rules_of(&after), want_a);
                assert!(plan_ensure(&after, &want_a).is_empty());
                let c = format!("\"trestle net a {a}\"");
                assert_eq!(
                    ipt("-S"),
                    format!(
                        "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N TRESTLE-FORWARD\n\
                         -A FORWARD -m comment --comment \"trestle: pod networks\" -j TRESTLE-FORWARD\n\
                         -A FORWARD -s {foreign} -j ACCEPT\n\
                         -A TRESTLE-FORWARD -s {a} -m comment --comment {c} -j ACCEPT\n\
                         -A TRESTLE-FORWARD -d {a} -m conntrack --ctstate RELATED,ESTABLISHED -m comment \
                         --comment {c} -j ACCEPT\n"
                    )
                );

                // Look-alikes someone else added to the chain are not trestle's.
                let look_alikes = [
                    format!("TRESTLE-FORWARD -s {a} -i eth0 -m comment --comment trestle_net_a -j ACCEPT"),
                    format!("TRESTLE-FORWARD ! -s {a} -m comment --comment x -j ACCEPT"),
                    format!("TRESTLE-FORWARD -d {a} -m comment --comment x -j ACCEPT"),
                    format!(
                        "TRESTLE-FORWARD -d {a} -m conntrack --ctstate ESTABLISHED \
                         -m comment --comment x -j ACCEPT"
                    ),
                    format!("TRESTLE-FORWARD -s {a} -m comment --comment x -j RETURN"),
                ];
                for rule in &look_alikes {
                    ipt(&format!("-A {rule}"));
                }
                assert_eq!(rules_of(&view(family)), want_a);
                for rule in &look_alikes {
                    ipt(&format!("-D {rule}"));
                }

                // A second network, then the first goes.
                let want_b = wanted("net b", &[b]);
                apply(family, &plan_ensure(&view(family), &want_b)).unwrap();
                assert_eq!(
                    rules_of(&view(family)),
                    [want_a.clone(), want_b.clone()].concat()
                );
                assert_eq!(view(family).jumps.len(), 1);
                apply(family, &plan_remove(&view(family), "net a")).unwrap();
                let only_b = view(family);
                assert_eq!(rules_of(&only_b), want_b);
                assert_eq!(only_b.jumps, [LegacyHandle::Jump]);

                // The last one takes the chain and the jump, and the table is as it was.
                apply(family, &plan_remove(&only_b, "net b")).unwrap();
                let gone = view(family);
                assert!(
                    !gone.chain && gone.jumps.is_empty() && gone.rules.is_empty() && gone.drops
                );
                assert_eq!(saved(family), before);
            });
        }

        #[test]
        #[ignore = "privileged: needs root and iptables-legacy"]
        fn odd_comments_survive_the_restore_quoting() {
            in_fresh_namespace(|| {
                run(&["iptables-legacy", "-w", "5", "-P", "FORWARD", "DROP"]);
                let want = wanted("q\"uo\\te 'x'\ttab  two", &[net("10.3.0.0/24")]);
                apply(Family::V4, &plan_ensure(&view(Family::V4), &want)).unwrap();
                assert_eq!(rules_of(&view(Family::V4)), want);
                apply(
                    Family::V4,
                    &plan_remove(&view(Family::V4), "q\"uo\\te 'x'\ttab  two"),
                )
                .unwrap();
                assert!(!view(Family::V4).chain);

                let broken = wanted("line\nbreak", &[net("10.4.0.0/24")]);
                let before = saved(Family::V4);
                let err = apply(Family::V4, &plan_ensure(&view(Family::V4), &broken)).unwrap_err();
                assert!(matches!(err, Error::LegacyRestore { .. }), "{err}");
                assert_eq!(saved(Family::V4), before);
            });
        }

        #[test]
        #[ignore = "privileged: needs root and iptables-legacy"]
        fn a_refused_restore_changes_nothing_and_says_why() {
            in_fresh_namespace(|| {
                run(&["iptables-legacy", "-w", "5", "-P", "FORWARD", "DROP"]);
                let before = saved(Family::V4);
                // Deleting a rule that is not there fails the whole transaction, the chain included.
                let ghost = wanted("ghost", &[net("10.5.0.0/24")]);
                let ops = [
                    Op::NewChain,
                    Op::Delete(LegacyHandle::Rule(ghost[0].clone())),
                ];
                let err = apply(Family::V4, &ops).unwrap_err();
                let Error::LegacyRestore { program, detail } = &err else {
                    panic!("{err:?}");
                };
                assert_eq!(*program, "iptables-legacy-restore");
                assert!(detail.contains("exit status"), "{detail}");
                assert_eq!(saved(Family::V4), before);
            });
        }
    }
}
