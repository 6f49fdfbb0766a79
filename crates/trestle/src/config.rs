//! The bridge plugin's network config: the reference `bridge` keys, their defaults and their validation. Every
//! check here runs before ADD changes anything.

use cni_proto::{CniArgs, CniError, ErrorCode, NetConf};
use serde_json::{Map, Value};
use trestle_firewall::BackendKind;

/// Keys trestle's CNI_ARGS accept: `MAC` is ours, `IP` is the IPAM plugin's (it reads the same environment).
/// Anything else needs `IgnoreUnknown=1`, as the Go library requires (Kubernetes always sends it).
pub const CNI_ARGS_KEYS: [&str; 2] = ["MAC", "IP"];

/// The default bridge name, as the reference plugin's.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Parsed bridge config.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// Bridge device name.
    pub bridge: String,
    /// Put the gateway address on the bridge and enable forwarding.
    pub is_gateway: bool,
    /// Add a default route via the gateway in the container (implies `is_gateway`).
    pub is_default_gateway: bool,
    /// Replace a conflicting bridge address instead of failing.
    pub force_address: bool,
    /// Masquerade pod traffic leaving the pod subnet.
    pub ip_masq: bool,
    /// MTU of the bridge and veth (None: kernel default).
    pub mtu: Option<u32>,
    /// Hairpin mode on the host port.
    pub hairpin_mode: bool,
    /// Bridge in promiscuous mode.
    pub promisc_mode: bool,
    /// Access VLAN of the host port (0: none).
    pub vlan: u16,
    /// Keep VLAN 1 on the port when `vlan` is set.
    pub preserve_default_vlan: bool,
    /// Duplicate address detection in the container.
    pub enable_dad: bool,
    /// Leave the container interface down.
    pub disable_container_interface: bool,
    /// Isolate the host port from other isolated ports.
    pub port_isolation: bool,
    /// The IPAM plugin type, when L3 is wanted.
    pub ipam_type: Option<String>,
    /// Who installs the masquerade rules (`ipMasqBackend`).
    pub masq_backend: BackendKind,
    /// Let the network's traffic through a host `FORWARD` chain whose policy drops (`forwardAccept`, on unless
    /// set to false).
    pub forward_accept: bool,
    /// MAC for the container interface (CNI_ARGS < args.cni.mac < runtimeConfig.mac).
    pub mac: Option<[u8; 6]>,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, format!("invalid {key}: {why}"))
}

fn get_bool(raw: &Map<String, Value>, key: &str) -> Result<bool, CniError> {
    get_bool_or(raw, key, false)
}

fn get_bool_or(raw: &Map<String, Value>, key: &str, default: bool) -> Result<bool, CniError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(key, format!("expected true or false, got {v}"))),
    }
}

fn get_uint(raw: &Map<String, Value>, key: &str, max: u64) -> Result<u64, CniError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= max)
            .ok_or_else(|| invalid(key, format!("expected an integer from 0 to {max}, got {v}"))),
    }
}

impl BridgeConfig {
    /// Reads and validates the config and the MAC sources. `cni_args` is the raw `CNI_ARGS`.
    pub fn parse(conf: &NetConf, cni_args: &str) -> Result<BridgeConfig, CniError> {
        let raw = &conf.raw;
        reject_unimplemented(raw)?;
        let bridge = match raw.get("bridge") {
            None | Some(Value::Null) => DEFAULT_BRIDGE.to_owned(),
            Some(Value::String(s)) if s.is_empty() => DEFAULT_BRIDGE.to_owned(),
            Some(Value::String(s)) => {
                cni_proto::validate_ifname(s).map_err(|_| {
                    invalid("bridge", format!("{s:?} is not a valid interface name"))
                })?;
                s.clone()
            }
            Some(v) => return Err(invalid("bridge", format!("expected a string, got {v}"))),
        };
        let is_default_gateway = get_bool(raw, "isDefaultGateway")?;
        let mtu = get_uint(raw, "mtu", 65_535)? as u32;
        if mtu != 0 && mtu < crate::result::MIN_MTU {
            return Err(invalid(
                "mtu",
                format!(
                    "{mtu} is below the kernel's minimum of {}",
                    crate::result::MIN_MTU
                ),
            ));
        }
        let cfg = BridgeConfig {
            bridge,
            is_gateway: get_bool(raw, "isGateway")? || is_default_gateway,
            is_default_gateway,
            force_address: get_bool(raw, "forceAddress")?,
            ip_masq: get_bool(raw, "ipMasq")?,
            mtu: (mtu != 0).then_some(mtu),
            hairpin_mode: get_bool(raw, "hairpinMode")?,
            promisc_mode: get_bool(raw, "promiscMode")?,
            vlan: get_uint(raw, "vlan", 4094)? as u16,
            preserve_default_vlan: get_bool(raw, "preserveDefaultVlan")?,
            enable_dad: get_bool(raw, "enabledad")?,
            disable_container_interface: get_bool(raw, "disableContainerInterface")?,
            port_isolation: get_bool(raw, "portIsolation")?,
            ipam_type: ipam_type(conf)?,
            masq_backend: masq_backend(raw)?,
            forward_accept: get_bool_or(raw, "forwardAccept", true)?,
            mac: mac(conf, cni_args)?,
        };
        cfg.check_combinations()?;
        Ok(cfg)
    }

    fn check_combinations(&self) -> Result<(), CniError> {
        if self.hairpin_mode && self.promisc_mode {
            return Err(invalid(
                "hairpinMode",
                "cannot be combined with promiscMode",
            ));
        }
        if self.disable_container_interface && self.ipam_type.is_some() {
            return Err(invalid(
                "disableContainerInterface",
                "cannot be set with an IPAM plugin (addresses need the interface up)",
            ));
        }
        Ok(())
    }
}

/// `macspoofchk` and `vlanTrunk` are reference keys trestle does not implement yet: refuse them loudly (code 2)
/// rather than silently giving weaker isolation than configured.
fn reject_unimplemented(raw: &Map<String, Value>) -> Result<(), CniError> {
    if let Some(v) = raw
        .get("macspoofchk")
        .filter(|v| **v != Value::Bool(false) && !v.is_null())
    {
        return Err(CniError::new(
            ErrorCode::UnsupportedField,
            format!("unsupported field macspoofchk: {v} (not implemented by trestle)"),
        ));
    }
    if let Some(v) = raw.get("vlanTrunk").filter(|v| !v.is_null()) {
        return Err(CniError::new(
            ErrorCode::UnsupportedField,
            format!("unsupported field vlanTrunk: {v} (not implemented by trestle)"),
        ));
    }
    Ok(())
}

/// `ipMasqBackend`: trestle masquerades through nftables; `iptables` is accepted as nftables because, on every
/// kernel trestle supports, iptables itself is nf_tables underneath, and a config written for the reference plugin
/// must keep working. `none` (trestle's own value) installs no rules: the host's firewall does it.
fn masq_backend(raw: &Map<String, Value>) -> Result<BackendKind, CniError> {
    match raw.get("ipMasqBackend") {
        None | Some(Value::Null) => Ok(BackendKind::default()),
        Some(Value::String(s)) => s.parse().map_err(|_| {
            invalid(
                "ipMasqBackend",
                format!("{s:?} is not \"nftables\", \"iptables\" or \"none\""),
            )
        }),
        Some(v) => Err(invalid(
            "ipMasqBackend",
            format!("expected a string, got {v}"),
        )),
    }
}

fn ipam_type(conf: &NetConf) -> Result<Option<String>, CniError> {
    let Some(ipam) = conf.ipam.as_ref() else {
        return Ok(None);
    };
    match ipam.get("type") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.contains('/') => {
            Err(invalid("ipam.type", format!("{s:?} contains '/'")))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid("ipam.type", format!("expected a string, got {v}"))),
    }
}

fn mac(conf: &NetConf, cni_args: &str) -> Result<Option<[u8; 6]>, CniError> {
    let args = CniArgs::parse(cni_args, &CNI_ARGS_KEYS)?;
    let sources = [
        ("runtimeConfig.mac", conf.runtime_config.mac.clone()),
        ("args.cni.mac", conf.args_cni_mac()),
        ("CNI_ARGS MAC", args.get("MAC").map(str::to_owned)),
    ];
    for (field, value) in sources {
        if let Some(s) = value {
            let mac = trestle_netlink::parse_mac(&s)
                .ok_or_else(|| invalid(field, format!("{s:?} is not a MAC address")))?;
            return check_unicast(mac)
                .map(Some)
                .map_err(|why| invalid(field, format!("{s:?} {why}")));
        }
    }
    Ok(None)
}

/// The kernel gives a device only a unicast, non-zero hardware address (`EADDRNOTAVAIL` otherwise, after the
/// bridge was made).
fn check_unicast(mac: [u8; 6]) -> Result<[u8; 6], &'static str> {
    if mac[0] & 1 == 1 {
        Err("is a multicast address")
    } else if mac == [0; 6] {
        Err("is all zeros")
    } else {
        Ok(mac)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The config of `{"type":"trestle"}`: every default.
    pub(crate) fn minimal() -> BridgeConfig {
        parse(r#"{"cniVersion":"1.0.0","name":"n","type":"trestle"}"#, "").unwrap()
    }

    fn parse(json: &str, args: &str) -> Result<BridgeConfig, CniError> {
        let conf = cni_proto::parse_request(cni_proto::Command::Add, json.as_bytes())?;
        BridgeConfig::parse(&conf, args)
    }

    fn with(extra: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"trestle",{extra}}}"#)
    }

    #[test]
    fn defaults_are_the_reference_bridge_s() {
        let c = minimal();
        assert_eq!(c.bridge, DEFAULT_BRIDGE);
        assert!(
            !c.is_gateway && !c.ip_masq && !c.hairpin_mode && c.mtu.is_none() && c.mac.is_none()
        );
        assert_eq!(c.vlan, 0);
        let c = parse(&with(r#""isDefaultGateway":true"#), "").unwrap();
        assert!(c.is_gateway, "isDefaultGateway implies isGateway");
    }

    #[test]
    fn mac_sources_in_order_and_unicast_only() {
        let c = parse(
            &with(r#""args":{"cni":{"mac":"02:00:00:00:00:02"}}"#),
            "MAC=02:00:00:00:00:03",
        )
        .unwrap();
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 2]));
        let c = parse(
            &with(r#""ipam":{}"#),
            "IgnoreUnknown=1;MAC=02:00:00:00:00:03",
        )
        .unwrap();
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 3]));
        for (args, why) in [
            ("MAC=01:00:5e:00:00:01", "multicast"),
            ("MAC=ff:ff:ff:ff:ff:ff", "multicast"),
            ("MAC=00:00:00:00:00:00", "all zeros"),
            ("MAC=02:00:00:00:00", "not a MAC"),
        ] {
            let err = parse(&with(r#""ipam":{}"#), args).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidConfig as u32, "{args}");
            assert!(
                err.msg.contains("CNI_ARGS MAC") && err.msg.contains(why),
                "{args}: {}",
                err.msg
            );
        }
    }

    #[test]
    fn forward_accept_is_on_unless_turned_off() {
        assert!(minimal().forward_accept);
        assert!(
            !parse(&with(r#""forwardAccept":false"#), "")
                .unwrap()
                .forward_accept
        );
        assert!(
            parse(&with(r#""forwardAccept":null"#), "")
                .unwrap()
                .forward_accept
        );
        let err = parse(&with(r#""forwardAccept":"no""#), "").unwrap_err();
        assert!(err.msg.contains("forwardAccept"), "{}", err.msg);
    }

    #[test]
    fn masquerade_backends() {
        for (v, kind) in [
            ("nftables", BackendKind::Nftables),
            ("iptables", BackendKind::Nftables),
            ("none", BackendKind::None),
        ] {
            let c = parse(&with(&format!(r#""ipMasqBackend":"{v}""#)), "").unwrap();
            assert_eq!(c.masq_backend, kind, "{v}");
        }
        assert_eq!(minimal().masq_backend, BackendKind::Nftables);
        let err = parse(&with(r#""ipMasqBackend":"firewalld""#), "").unwrap_err();
        assert!(
            err.msg.contains("ipMasqBackend") && err.msg.contains("firewalld"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn out_of_range_numbers_name_their_key() {
        for (extra, key) in [
            (r#""mtu":67"#, "mtu"),
            (r#""mtu":65536"#, "mtu"),
            (r#""vlan":4095"#, "vlan"),
            (r#""hairpinMode":"yes""#, "hairpinMode"),
            (r#""bridge":"a/b""#, "bridge"),
        ] {
            let err = parse(&with(extra), "").unwrap_err();
            assert!(err.msg.contains(key), "{extra}: {}", err.msg);
        }
        assert_eq!(parse(&with(r#""mtu":68"#), "").unwrap().mtu, Some(68));
    }
}
