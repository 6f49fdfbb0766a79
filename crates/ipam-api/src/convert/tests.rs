use super::*;
use proptest::prelude::*;
use prost::Message;

fn config() -> IpamConfig {
    let r = |s: &str| Range::new(s.parse().unwrap(), None, None, None).unwrap();
    IpamConfig {
        network: "net1".into(),
        range_sets: vec![
            RangeSet::new(vec![r("10.1.0.0/24"), r("10.2.0.0/24")]).unwrap(),
            RangeSet::new(vec![r("fd00::/120")]).unwrap(),
        ],
        routes: vec![RouteConfig {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some("10.1.0.1".parse().unwrap()),
            mtu: Some(1400),
            advmss: None,
            priority: Some(5),
            table: None,
            scope: Some(253),
        }],
        data_dir: Default::default(),
        dns: DnsConfig {
            nameservers: vec!["10.1.0.53".into()],
            domain: Some("cluster.local".into()),
            search: vec!["a".into(), "b".into()],
            options: vec!["ndots:5".into()],
        },
        requested: vec!["10.2.0.9".parse().unwrap()],
        daemon: None,
    }
}

fn request() -> v1::AllocateRequest {
    let pod = PodMeta {
        namespace: "default".into(),
        name: "web-0".into(),
        uid: "1234".into(),
    };
    allocate_request(
        &config(),
        &Attachment::new("c1", "eth0"),
        &pod,
        ("/run/netns/x", 42),
        crate::version::peer("test"),
    )
}

#[test]
fn a_configuration_survives_the_wire() {
    let req = v1::AllocateRequest::decode(request().encode_to_vec().as_slice()).unwrap();
    let input = allocate_input(&req).unwrap();
    assert_eq!(input.config, config());
    assert_eq!(input.attachment, Attachment::new("c1", "eth0"));
    assert_eq!(
        (input.netns.as_str(), input.netns_inode),
        ("/run/netns/x", 42)
    );
    assert_eq!(input.pod.name, "web-0");
}

#[test]
fn each_bad_field_is_named() {
    type Edit = fn(&mut v1::AllocateRequest);
    let cases: [(Edit, &str); 14] = [
        (|r| r.network = "../x".into(), "network"),
        (|r| r.network.clear(), "network"),
        (|r| r.attachment = None, "attachment"),
        (
            |r| r.attachment.as_mut().unwrap().container_id = "a/b".into(),
            "attachment.container_id",
        ),
        (
            |r| r.attachment.as_mut().unwrap().ifname = "x".repeat(16),
            "attachment.ifname",
        ),
        (|r| r.netns = "relative".into(), "netns"),
        (|r| r.pod.as_mut().unwrap().name = "a\nb".into(), "pod.name"),
        (|r| r.range_sets.clear(), "range_sets"),
        (
            |r| r.range_sets[1].ranges[0].subnet = "nope".into(),
            "range_sets[1].ranges[0].subnet",
        ),
        (
            |r| r.range_sets[0].ranges[0].gateway = "10.9.9.9".into(),
            "range_sets[0].ranges[0]",
        ),
        (
            |r| r.range_sets[1] = r.range_sets[0].clone(),
            "range_sets[1]",
        ),
        (|r| r.requested = vec!["x".into()], "requested[0]"),
        (|r| r.routes[0].dst = "10.0.0.0/33".into(), "routes[0].dst"),
        (
            |r| r.dns.as_mut().unwrap().search = vec!["s".into(); 65],
            "dns.search",
        ),
    ];
    for (edit, field) in cases {
        let mut req = request();
        edit(&mut req);
        let err = allocate_input(&req).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}

#[test]
fn limits_hold() {
    let mut req = request();
    req.range_sets = vec![req.range_sets[0].clone(); limits::RANGE_SETS + 1];
    assert_eq!(allocate_input(&req).unwrap_err().field, "range_sets");
    let mut req = request();
    req.netns = format!("/{}", "n".repeat(limits::STRING));
    assert_eq!(allocate_input(&req).unwrap_err().field, "netns");
    let many =
        vec![attachment_to_proto(&Attachment::new("c", "eth0")); limits::VALID_ATTACHMENTS + 1];
    assert_eq!(valid_attachments(&many).unwrap_err().field, "valid");
    let bad_one = vec![v1::Attachment {
        container_id: "c".into(),
        ifname: String::new(),
    }];
    assert_eq!(
        valid_attachments(&bad_one).unwrap_err().field,
        "valid[0].ifname"
    );
}

#[test]
fn hostile_strings_are_clipped_in_messages() {
    let mut req = request();
    req.range_sets[0].ranges[0].subnet = "é".repeat(3000);
    let err = allocate_input(&req).unwrap_err();
    assert!(err.reason.len() < 100, "{}", err.reason);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes: decoding fails or validation answers; nothing panics.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = v1::AllocateRequest::decode(bytes.as_slice()) {
            let _ = allocate_input(&req);
        }
        if let Ok(req) = v1::GcRequest::decode(bytes.as_slice()) {
            let _ = valid_attachments(&req.valid);
            let _ = network(&req.network);
        }
    }

    /// A valid request with one byte flipped or truncated: same.
    #[test]
    fn mutated_requests_never_panic(pos in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
        let mut bytes = request().encode_to_vec();
        let n = bytes.len();
        bytes[pos % n] = byte;
        bytes.truncate(cut.max(1) % (n + 1));
        if let Ok(req) = v1::AllocateRequest::decode(bytes.as_slice()) {
            let _ = allocate_input(&req);
        }
    }

    /// Arbitrary field values (not just bytes): validation answers without panicking.
    #[test]
    fn arbitrary_fields_never_panic(
        network in ".{0,40}", id in ".{0,40}", ifname in ".{0,20}",
        subnet in "[0-9a-f.:/]{0,30}", start in "[0-9a-f.:]{0,20}", gw in "[0-9a-f.:]{0,20}",
        req_ip in "[0-9a-f.:]{0,20}",
    ) {
        let mut req = request();
        req.network = network;
        req.attachment = Some(v1::Attachment { container_id: id, ifname });
        req.range_sets[0].ranges[0] = v1::Range { subnet, range_start: start, range_end: String::new(), gateway: gw };
        req.requested = vec![req_ip];
        let _ = allocate_input(&req);
    }
}
