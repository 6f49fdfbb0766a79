//! host-local compatible configuration parsing.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::dns::DnsConfig;
use crate::error::IpamError;
use crate::ipmath::canonical;
use crate::range::{invalid_at, Range, RangeSet};

/// host-local's default state root.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A route copied into the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Destination; host bits are kept as written, as Go's `types.IPNet` does.
    pub dst: IpNet,
    /// Next hop; `None` means the interface's gateway.
    pub gw: Option<IpAddr>,
    /// CNI 1.1 `mtu`.
    pub mtu: Option<u32>,
    /// CNI 1.1 `advmss`.
    pub advmss: Option<u32>,
    /// CNI 1.1 `priority`.
    pub priority: Option<u32>,
    /// CNI 1.1 `table`.
    pub table: Option<u32>,
    /// CNI 1.1 `scope`.
    pub scope: Option<u32>,
}

/// The inputs of [`IpamConfig::parse`].
#[derive(Debug, Clone)]
pub struct ConfigInput<'a> {
    /// The whole stdin object: `name`, `cniVersion`, `ipam`, `runtimeConfig`, `args`.
    pub stdin: &'a Value,
    /// Addresses from `CNI_ARGS` `IP=`, already parsed by the caller.
    pub cni_args_ips: Vec<IpAddr>,
    /// False below cniVersion 0.3.0, which allows one range set per address family.
    pub multiple_sets_per_family: bool,
}

/// A validated IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// Network name; the state lives in `<data_dir>/<network>`.
    pub network: String,
    /// Range sets in host-local's order: `runtimeConfig.ipRanges`, legacy range, `ranges`.
    pub range_sets: Vec<RangeSet>,
    /// Routes for the result.
    pub routes: Vec<RouteConfig>,
    /// State root (`ipam.dataDir`, default [`DEFAULT_DATA_DIR`]).
    pub data_dir: PathBuf,
    /// DNS for the result, parsed from `ipam.resolvConf` if set.
    pub dns: DnsConfig,
    /// Requested addresses in order: `CNI_ARGS`, `args.cni.ips`, `runtimeConfig.ips`; no repeats.
    pub requested: Vec<IpAddr>,
    /// `ipam.daemon`: ask `trestled` instead of allocating from `dataDir` (daemon mode).
    pub daemon: Option<DaemonSettings>,
}

/// The default socket of `trestled`.
pub const DEFAULT_SOCKET: &str = "/run/trestle/ipam.sock";

/// `ipam.daemon`: how the plugin reaches `trestled`. `true` or `{}` takes every default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// `socket`: the daemon's unix socket (default [`DEFAULT_SOCKET`]).
    pub socket: PathBuf,
    /// `deleteQueue`: where a DEL is queued while the daemon cannot take it (default
    /// [`crate::DEFAULT_QUEUE_DIR`]); the daemon's `--delete-queue` must name the same.
    pub delete_queue: PathBuf,
    /// `connectTimeoutMs`: how long a call keeps retrying to connect (default 1000): an ADD
    /// with the daemon down answers code 11 after about this long.
    pub connect_timeout_ms: u64,
    /// `timeoutMs`: the deadline of one operation, connecting and resending included
    /// (default 10000).
    pub timeout_ms: u64,
}

impl Default for DaemonSettings {
    fn default() -> DaemonSettings {
        DaemonSettings {
            socket: PathBuf::from(DEFAULT_SOCKET),
            delete_queue: PathBuf::from(crate::queue::DEFAULT_QUEUE_DIR),
            connect_timeout_ms: 1000,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDaemon {
    Flag(bool),
    Settings(RawDaemonSettings),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDaemonSettings {
    socket: Option<String>,
    delete_queue: Option<String>,
    connect_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

fn parse_daemon(raw: Option<&Value>) -> Result<Option<DaemonSettings>, IpamError> {
    let Some(v) = raw.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let raw: RawDaemon = from_value(v, "ipam.daemon")?;
    let s = match raw {
        RawDaemon::Flag(false) => return Ok(None),
        RawDaemon::Flag(true) => RawDaemonSettings::default(),
        RawDaemon::Settings(s) => s,
    };
    let d = DaemonSettings::default();
    let path = |v: Option<String>, field: &str, default: PathBuf| match v {
        None => Ok(default),
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        Some(p) => Err(IpamError::invalid(
            field,
            format!("{p:?} is not an absolute path"),
        )),
    };
    let ms = |v: Option<u64>, field: &str, default: u64| match v {
        None => Ok(default),
        Some(ms) if (1..=600_000).contains(&ms) => Ok(ms),
        Some(ms) => Err(IpamError::invalid(
            field,
            format!("{ms} is not within 1-600000"),
        )),
    };
    Ok(Some(DaemonSettings {
        socket: path(s.socket, "ipam.daemon.socket", d.socket)?,
        delete_queue: path(s.delete_queue, "ipam.daemon.deleteQueue", d.delete_queue)?,
        connect_timeout_ms: ms(
            s.connect_timeout_ms,
            "ipam.daemon.connectTimeoutMs",
            d.connect_timeout_ms,
        )?,
        timeout_ms: ms(s.timeout_ms, "ipam.daemon.timeoutMs", d.timeout_ms)?,
    }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    data_dir: Option<String>,
    resolv_conf: Option<String>,
    daemon: Option<Value>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
    mtu: Option<u32>,
    advmss: Option<u32>,
    priority: Option<u32>,
    table: Option<u32>,
    scope: Option<u32>,
}

impl IpamConfig {
    /// Parses and validates the configuration exactly as host-local's `LoadIPAMConfig`.
    pub fn parse(input: ConfigInput<'_>) -> Result<IpamConfig, IpamError> {
        let stdin = input.stdin;
        let network = parse_name(stdin.get("name"))?;
        let ipam = stdin
            .get("ipam")
            .filter(|v| !v.is_null())
            .ok_or_else(|| IpamError::invalid("ipam", "IPAM config missing 'ipam' key"))?;
        let raw: RawIpam = from_value(ipam, "ipam")?;
        let requested = parse_requested(&input)?;
        let range_sets = parse_sets(stdin, &raw)?;
        check_families(&range_sets, stdin, input.multiple_sets_per_family)?;
        check_set_overlaps(&range_sets)?;
        let dns = match raw.resolv_conf.as_deref().filter(|p| !p.is_empty()) {
            Some(path) => DnsConfig::from_file(path.as_ref())?,
            None => DnsConfig::default(),
        };
        let data_dir = raw.data_dir.filter(|d| !d.is_empty());
        Ok(IpamConfig {
            network,
            range_sets,
            routes: parse_routes(&raw.routes)?,
            data_dir: PathBuf::from(data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)),
            dns,
            requested,
            daemon: parse_daemon(raw.daemon.as_ref())?,
        })
    }

    /// The state directory of this network: `<data_dir>/<network>`.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }
}

fn from_value<T: serde::de::DeserializeOwned>(v: &Value, field: &str) -> Result<T, IpamError> {
    T::deserialize(v).map_err(|e| IpamError::invalid(field, e.to_string()))
}

/// The network name becomes a directory name, so it must match the CNI name syntax
/// (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`); this also rules out `..` and `/`.
fn parse_name(v: Option<&Value>) -> Result<String, IpamError> {
    let name = v.and_then(Value::as_str).unwrap_or_default();
    if !is_valid_name(name) {
        return Err(IpamError::invalid(
            "name",
            format!("network name {name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
        ));
    }
    Ok(name.to_string())
}

pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_sets(stdin: &Value, raw: &RawIpam) -> Result<Vec<RangeSet>, IpamError> {
    let mut sets = Vec::new();
    if let Some(ranges) = stdin.pointer("/runtimeConfig/ipRanges") {
        let runtime: Vec<Vec<RawRange>> = from_value(ranges, "runtimeConfig.ipRanges")?;
        for (i, set) in runtime.iter().enumerate() {
            sets.push(parse_set(set, &format!("runtimeConfig.ipRanges[{i}]"))?);
        }
    }
    // host-local only honours the legacy single range when its subnet is set.
    if raw.legacy.subnet.as_deref().is_some_and(|s| !s.is_empty()) {
        sets.push(parse_set(std::slice::from_ref(&raw.legacy), "ipam")?);
    }
    for (i, set) in raw.ranges.iter().enumerate() {
        sets.push(parse_set(set, &format!("ipam.ranges[{i}]"))?);
    }
    if sets.is_empty() {
        return Err(IpamError::invalid("ipam.ranges", "no IP ranges specified"));
    }
    Ok(sets)
}

fn parse_set(raw: &[RawRange], field: &str) -> Result<RangeSet, IpamError> {
    let ranges = raw
        .iter()
        .enumerate()
        .map(|(i, r)| parse_range(r, &format!("{field}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    RangeSet::new(ranges).map_err(invalid_at(field))
}

fn parse_range(raw: &RawRange, field: &str) -> Result<Range, IpamError> {
    let subnet_field = format!("{field}.subnet");
    let subnet = raw
        .subnet
        .as_deref()
        .ok_or_else(|| IpamError::invalid(&subnet_field, "missing"))?;
    let subnet: IpNet = subnet.parse().map_err(|_| {
        IpamError::invalid(&subnet_field, format!("invalid CIDR address: {subnet}"))
    })?;
    let ip = |v: &Option<String>, key: &str| opt_ip(v.as_deref(), &format!("{field}.{key}"));
    Range::new(
        subnet,
        ip(&raw.range_start, "rangeStart")?,
        ip(&raw.range_end, "rangeEnd")?,
        ip(&raw.gateway, "gateway")?,
    )
    .map_err(invalid_at(field))
}

/// Go's `net.IP` JSON decoding treats an empty string like a missing key.
fn opt_ip(v: Option<&str>, field: &str) -> Result<Option<IpAddr>, IpamError> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<IpAddr>()
            .map(|ip| Some(canonical(ip)))
            .map_err(|_| IpamError::invalid(field, format!("invalid IP address: {s}"))),
    }
}

fn check_families(sets: &[RangeSet], stdin: &Value, multiple: bool) -> Result<(), IpamError> {
    let v4 = sets.iter().filter(|s| s.is_ipv4()).count();
    if !multiple && (v4 > 1 || sets.len() - v4 > 1) {
        let version = stdin
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(IpamError::Unsupported {
            field: "ipam.ranges".to_string(),
            reason: format!(
                "CNI version {version} does not support more than 1 address per family"
            ),
        });
    }
    Ok(())
}

fn check_set_overlaps(sets: &[RangeSet]) -> Result<(), IpamError> {
    for (i, a) in sets.iter().enumerate() {
        if let Some(j) = sets[i + 1..].iter().position(|b| a.overlaps(b)) {
            return Err(IpamError::invalid(
                "ipam.ranges",
                format!("range set {i} overlaps with {}", i + j + 1),
            ));
        }
    }
    Ok(())
}

fn parse_routes(raw: &[RawRoute]) -> Result<Vec<RouteConfig>, IpamError> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("ipam.routes[{i}]");
            let dst = r
                .dst
                .as_deref()
                .ok_or_else(|| IpamError::invalid(format!("{field}.dst"), "missing"))?;
            let dst = dst.parse::<IpNet>().map_err(|_| {
                IpamError::invalid(
                    format!("{field}.dst"),
                    format!("invalid CIDR address: {dst}"),
                )
            })?;
            Ok(RouteConfig {
                dst,
                gw: opt_ip(r.gw.as_deref(), &format!("{field}.gw"))?,
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                scope: r.scope,
            })
        })
        .collect()
}

/// Requested addresses: `CNI_ARGS` `IP=`, then `args.cni.ips`, then `runtimeConfig.ips`.
/// A `/prefix` suffix is accepted and ignored, as host-local does for `runtimeConfig.ips`.
fn parse_requested(input: &ConfigInput<'_>) -> Result<Vec<IpAddr>, IpamError> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        let ip = canonical(ip);
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    input.cni_args_ips.iter().copied().for_each(&mut push);
    for (pointer, field) in [
        ("/args/cni/ips", "args.cni.ips"),
        ("/runtimeConfig/ips", "runtimeConfig.ips"),
    ] {
        let Some(v) = input.stdin.pointer(pointer).filter(|v| !v.is_null()) else {
            continue;
        };
        let list: Vec<String> = from_value(v, field)?;
        for s in &list {
            push(
                parse_ip_or_cidr(s).ok_or_else(|| {
                    IpamError::invalid(field, format!("cannot understand ip: {s}"))
                })?,
            );
        }
    }
    Ok(out)
}

fn parse_ip_or_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()))
}
