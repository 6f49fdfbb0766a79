//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::IpAddr;

use serde_json::{json, Value};
use trestle_ipam_core::{ConfigInput, IpamConfig, IpamError};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn parse(stdin: &Value) -> Result<IpamConfig, IpamError> {
    IpamConfig::parse(ConfigInput {
        stdin,
        cni_args_ips: vec![],
        multiple_sets_per_family: true,
    })
}

/// A network config with the given `ipam.ranges`.
pub fn with_ranges(ranges: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": "testnet", "ipam": {"type": "trestle-ipam", "ranges": ranges}})
}

pub fn cfg(ranges: Value) -> IpamConfig {
    parse(&with_ranges(ranges)).unwrap()
}

pub fn addrs(alloc: &trestle_ipam_core::Allocation) -> Vec<String> {
    alloc.ips.iter().map(|i| i.address.to_string()).collect()
}
