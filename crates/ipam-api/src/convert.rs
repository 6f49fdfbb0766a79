//! Requests to `trestle-ipam-core` types and back, validating every field.
//!
//! The daemon runs every request through these functions before it touches its state, so a
//! hostile or malformed request gets an error naming the field, never a panic; the plugin uses
//! the `*_to_proto` direction. The identifiers go through `cni-proto`'s validators, the ranges
//! through `trestle-ipam-core`'s (host-local's rules).

use std::net::IpAddr;

use ipnet::IpNet;
use trestle_ipam_core::{Attachment, DnsConfig, IpamConfig, Range, RangeSet, RouteConfig};

use crate::v1;

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct FieldError {
    /// The field's path in the request, e.g. `range_sets[0].ranges[1].subnet`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Bounds on what one request may carry: generous for any real configuration, small enough
/// that a hostile client cannot make the daemon do unbounded work.
pub mod limits {
    /// Range sets per request (one address is allocated per set).
    pub const RANGE_SETS: usize = 16;
    /// Ranges per set.
    pub const RANGES: usize = 64;
    /// Requested addresses.
    pub const REQUESTED: usize = 16;
    /// Routes copied into the reply.
    pub const ROUTES: usize = 256;
    /// DNS entries per list.
    pub const DNS_ENTRIES: usize = 64;
    /// Any one string (a container ID, a pod name, a path, a DNS entry).
    pub const STRING: usize = 4096;
    /// Valid attachments in a GC request.
    pub const VALID_ATTACHMENTS: usize = 100_000;
}

/// Kubernetes pod metadata (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// A validated Allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateInput {
    /// What to allocate: network, range sets, requested addresses, routes, DNS.
    pub config: IpamConfig,
    /// For whom.
    pub attachment: Attachment,
    /// Its pod, if any.
    pub pod: PodMeta,
    /// `CNI_NETNS` as the plugin saw it ("" if none).
    pub netns: String,
    /// The namespace's inode, 0 if unknown.
    pub netns_inode: u64,
}

/// Validates an Allocate request.
pub fn allocate_input(req: &v1::AllocateRequest) -> Result<AllocateInput, FieldError> {
    let network = network(&req.network)?;
    let attachment = attachment(req.attachment.as_ref(), "attachment")?;
    let pod = pod(req.pod.as_ref())?;
    let netns = text(&req.netns, "netns")?;
    if !netns.is_empty() && !netns.starts_with('/') {
        return Err(bad("netns", "not an absolute path"));
    }
    let range_sets = range_sets(&req.range_sets)?;
    let requested = requested(&req.requested)?;
    let routes = routes(&req.routes)?;
    let dns = dns(req.dns.as_ref())?;
    Ok(AllocateInput {
        config: IpamConfig {
            network,
            range_sets,
            routes,
            data_dir: Default::default(),
            dns,
            requested,
            daemon: None,
        },
        attachment,
        pod,
        netns: netns.to_string(),
        netns_inode: req.netns_inode,
    })
}

/// Validates a network name (CNI's name syntax; it also keys the daemon's state).
pub fn network(name: &str) -> Result<String, FieldError> {
    cni_proto::validate_network_name(name).map_err(|e| bad("network", e.msg))?;
    if name.len() > 255 {
        return Err(bad("network", "longer than 255 bytes"));
    }
    Ok(name.to_string())
}

/// Validates an attachment: CNI's container ID and interface name rules.
pub fn attachment(att: Option<&v1::Attachment>, field: &str) -> Result<Attachment, FieldError> {
    let att = att.ok_or_else(|| bad(field, "missing"))?;
    text(&att.container_id, &format!("{field}.container_id"))?;
    cni_proto::validate_container_id(&att.container_id)
        .map_err(|e| bad(format!("{field}.container_id"), e.msg))?;
    cni_proto::validate_ifname(&att.ifname).map_err(|e| bad(format!("{field}.ifname"), e.msg))?;
    Ok(Attachment::new(
        att.container_id.clone(),
        att.ifname.clone(),
    ))
}

/// Validates a GC request's valid attachments.
pub fn valid_attachments(valid: &[v1::Attachment]) -> Result<Vec<Attachment>, FieldError> {
    if valid.len() > limits::VALID_ATTACHMENTS {
        return Err(bad(
            "valid",
            format!("more than {}", limits::VALID_ATTACHMENTS),
        ));
    }
    valid
        .iter()
        .enumerate()
        .map(|(i, a)| attachment(Some(a), &format!("valid[{i}]")))
        .collect()
}

fn text<'a>(s: &'a str, field: &str) -> Result<&'a str, FieldError> {
    if s.len() > limits::STRING {
        return Err(bad(field, format!("longer than {} bytes", limits::STRING)));
    }
    if s.chars().any(char::is_control) {
        return Err(bad(field, "contains control characters"));
    }
    Ok(s)
}

fn pod(pod: Option<&v1::Pod>) -> Result<PodMeta, FieldError> {
    let Some(p) = pod else {
        return Ok(PodMeta::default());
    };
    Ok(PodMeta {
        namespace: text(&p.namespace, "pod.namespace")?.to_string(),
        name: text(&p.name, "pod.name")?.to_string(),
        uid: text(&p.uid, "pod.uid")?.to_string(),
    })
}

fn count<T>(items: &[T], max: usize, field: &str) -> Result<(), FieldError> {
    if items.len() > max {
        return Err(bad(field, format!("more than {max} entries")));
    }
    Ok(())
}

fn opt_ip(s: &str, field: &str) -> Result<Option<IpAddr>, FieldError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| bad(field, format!("invalid IP address: {}", clip(s))))
}

/// At most 64 bytes of a hostile string in a message.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Validates range sets exactly as host-local validates `ipam.ranges`.
pub fn range_sets(sets: &[v1::RangeSet]) -> Result<Vec<RangeSet>, FieldError> {
    if sets.is_empty() {
        return Err(bad("range_sets", "no IP ranges specified"));
    }
    count(sets, limits::RANGE_SETS, "range_sets")?;
    let mut out: Vec<RangeSet> = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let field = format!("range_sets[{i}]");
        count(&set.ranges, limits::RANGES, &field)?;
        let ranges = set
            .ranges
            .iter()
            .enumerate()
            .map(|(j, r)| range(r, &format!("{field}.ranges[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let set = RangeSet::new(ranges).map_err(|e| bad(&field, e.to_string()))?;
        if let Some(j) = out.iter().position(|o| o.overlaps(&set)) {
            return Err(bad(&field, format!("overlaps with range_sets[{j}]")));
        }
        out.push(set);
    }
    Ok(out)
}

fn range(r: &v1::Range, field: &str) -> Result<Range, FieldError> {
    let subnet: IpNet = r.subnet.parse().map_err(|_| {
        bad(
            format!("{field}.subnet"),
            format!("invalid CIDR: {}", clip(&r.subnet)),
        )
    })?;
    Range::new(
        subnet,
        opt_ip(&r.range_start, &format!("{field}.range_start"))?,
        opt_ip(&r.range_end, &format!("{field}.range_end"))?,
        opt_ip(&r.gateway, &format!("{field}.gateway"))?,
    )
    .map_err(|e| bad(field, e.to_string()))
}

fn requested(ips: &[String]) -> Result<Vec<IpAddr>, FieldError> {
    count(ips, limits::REQUESTED, "requested")?;
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for (i, s) in ips.iter().enumerate() {
        let ip = opt_ip(s, &format!("requested[{i}]"))?
            .ok_or_else(|| bad(format!("requested[{i}]"), "empty"))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Validates routes (a request's, or a reply's on the plugin side).
pub fn routes(routes: &[v1::Route]) -> Result<Vec<RouteConfig>, FieldError> {
    count(routes, limits::ROUTES, "routes")?;
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("routes[{i}]");
            let dst = r.dst.parse().map_err(|_| {
                bad(
                    format!("{field}.dst"),
                    format!("invalid CIDR: {}", clip(&r.dst)),
                )
            })?;
            Ok(RouteConfig {
                dst,
                gw: opt_ip(&r.gw, &format!("{field}.gw"))?,
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                scope: r.scope,
            })
        })
        .collect()
}

/// Validates DNS settings.
pub fn dns(dns: Option<&v1::Dns>) -> Result<DnsConfig, FieldError> {
    let Some(d) = dns else {
        return Ok(DnsConfig::default());
    };
    let list = |items: &[String], field: &str| -> Result<Vec<String>, FieldError> {
        count(items, limits::DNS_ENTRIES, field)?;
        items
            .iter()
            .enumerate()
            .map(|(i, s)| text(s, &format!("{field}[{i}]")).map(str::to_string))
            .collect()
    };
    Ok(DnsConfig {
        nameservers: list(&d.nameservers, "dns.nameservers")?,
        domain: Some(text(&d.domain, "dns.domain")?.to_string()).filter(|s| !s.is_empty()),
        search: list(&d.search, "dns.search")?,
        options: list(&d.options, "dns.options")?,
    })
}

/// A range set as the API sends it.
pub fn range_set_to_proto(set: &RangeSet) -> v1::RangeSet {
    let ip = |ip: Option<IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
    v1::RangeSet {
        ranges: set
            .0
            .iter()
            .map(|r| v1::Range {
                subnet: r.subnet.to_string(),
                range_start: r.range_start.to_string(),
                range_end: r.range_end.to_string(),
                gateway: ip(r.gateway),
            })
            .collect(),
    }
}

/// A route as the API sends it.
pub fn route_to_proto(r: &RouteConfig) -> v1::Route {
    v1::Route {
        dst: r.dst.to_string(),
        gw: r.gw.map(|g| g.to_string()).unwrap_or_default(),
        mtu: r.mtu,
        advmss: r.advmss,
        priority: r.priority,
        table: r.table,
        scope: r.scope,
    }
}

/// DNS settings as the API sends them.
pub fn dns_to_proto(d: &DnsConfig) -> v1::Dns {
    v1::Dns {
        nameservers: d.nameservers.clone(),
        domain: d.domain.clone().unwrap_or_default(),
        search: d.search.clone(),
        options: d.options.clone(),
    }
}

/// An attachment as the API sends it.
pub fn attachment_to_proto(a: &Attachment) -> v1::Attachment {
    v1::Attachment {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
    }
}

/// The Allocate request for a parsed configuration (the plugin's side).
pub fn allocate_request(
    cfg: &IpamConfig,
    att: &Attachment,
    pod: &PodMeta,
    netns: (&str, u64),
    client: v1::Peer,
) -> v1::AllocateRequest {
    v1::AllocateRequest {
        client: Some(client),
        network: cfg.network.clone(),
        attachment: Some(attachment_to_proto(att)),
        pod: Some(v1::Pod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }),
        netns: netns.0.to_string(),
        netns_inode: netns.1,
        range_sets: cfg.range_sets.iter().map(range_set_to_proto).collect(),
        requested: cfg.requested.iter().map(IpAddr::to_string).collect(),
        routes: cfg.routes.iter().map(route_to_proto).collect(),
        dns: Some(dns_to_proto(&cfg.dns)),
    }
}

#[cfg(test)]
mod tests;
