//! What the demo reads of the host's firewall: trestle's masquerade and its forward rules.

use super::{failed, Error};
use std::path::Path;
use trestle_firewall::Firewall;

fn open() -> Result<Firewall, Error> {
    Firewall::open(Path::new(trestle_firewall::LOCK_PATH))
        .map_err(failed("cannot open the firewall"))
}

/// The masqueraded subnets of every trestle network in the current namespace.
pub(super) fn masquerade_entries() -> Result<Vec<trestle_firewall::MasqEntry>, Error> {
    open()?
        .list()
        .map_err(failed("cannot list the masquerade rules"))
}

/// The masquerade state of the current namespace, one line per covered subnet.
pub(super) fn masquerade_listing() -> Result<String, Error> {
    let entries = masquerade_entries()?;
    if entries.is_empty() {
        return Ok("(nothing)".into());
    }
    Ok(entries
        .iter()
        .map(|e| {
            format!(
                "network {}: traffic from {} to anywhere outside {} is masqueraded",
                e.network.as_deref().unwrap_or(&e.network_id),
                e.subnet,
                e.subnet
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The forward filter of the current namespace, told for the narration.
pub(super) struct Forward {
    /// Which filter tables drop forwarded packets, in a sentence.
    pub(super) intro: String,
    /// trestle's forward rules, one line per subnet and table.
    pub(super) listing: String,
    /// The conclusion.
    pub(super) verdict: String,
    /// The tables whose `FORWARD` drops.
    dropping: Vec<&'static str>,
    /// The subnets let through, per table.
    pub(super) subnets: Vec<(&'static str, String)>,
}

impl Forward {
    /// Whether every table that drops lets `subnet` through.
    pub(super) fn covers(&self, subnet: &str) -> bool {
        self.dropping
            .iter()
            .filter(|b| !b.starts_with("ip6"))
            .all(|b| self.subnets.iter().any(|(t, s)| t == b && s == subnet))
    }
}

/// Reads the forward filter (see `trestle_firewall::Firewall::forward_state`).
pub(super) fn forward_listing() -> Result<Forward, Error> {
    let state = open()?
        .forward_state()
        .map_err(failed("cannot read the forward filter"))?;
    let subnets: Vec<(&'static str, String)> = state
        .subnets
        .iter()
        .map(|(b, s, _)| (*b, s.to_string()))
        .collect();
    let listing = if state.subnets.is_empty() {
        "(nothing)".to_owned()
    } else {
        state
            .subnets
            .iter()
            .map(|(b, s, c)| {
                format!(
                    "{b}: from {s} accepted, to {s} accepted when established or related  ({c})"
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (intro, verdict) = if state.dropping.is_empty() {
        (
            "The host's forward filter drops nothing here (no iptables FORWARD policy of DROP), so trestle adds\n\
             no forward rule (it would on a host running Docker, whose FORWARD policy drops):"
                .to_owned(),
            "forwarded traffic passes: nothing to add".to_owned(),
        )
    } else {
        (
            format!(
                "The host's FORWARD policy is DROP ({}), as Docker sets it, and br_netfilter sends even frames\n\
                 bridged between two pods through it: trestle lets the network's own traffic through (forwardAccept):",
                state.dropping.join(", ")
            ),
            "the network's traffic passes the host's forward filter".to_owned(),
        )
    };
    Ok(Forward {
        intro,
        listing,
        verdict,
        dropping: state.dropping,
        subnets,
    })
}
