//! trestled end to end: the real daemon on a socket of its own, the real plugin binary, and
//! gRPC clients for the load and version tests.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{address, allocate_req, config, error_code, plugin, Node, NO_NETNS};
use trestle_ipam::daemon::DaemonClient;
use trestle_ipam_api::v1;
use trestle_ipam_core::IpamConfig;

/// Polls `f` every 50 ms for up to 20 s (a loaded CI machine delays the daemon's timers).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Allocate over `d`, which must succeed.
fn allocate(d: &mut DaemonClient, cfg: &IpamConfig, id: &str) -> v1::AllocateReply {
    let req = allocate_req(cfg, id);
    d.allocate(&req).unwrap()
}

fn release_req(network: &str, id: &str) -> v1::ReleaseRequest {
    v1::ReleaseRequest {
        client: Some(trestle_ipam_api::version::peer("test")),
        network: network.into(),
        attachment: Some(v1::Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }),
        queued_at_ns: 0,
    }
}

#[test]
fn the_plugin_adds_checks_and_deletes_through_the_daemon() {
    let mut node = Node::new();
    node.start();
    let conf = node.conf("net1", "10.50.0.0/24");
    let ip = address(&plugin("ADD", "c1", NO_NETNS, &conf));
    assert_eq!(ip, "10.50.0.2/24");
    assert!(plugin("CHECK", "c1", NO_NETNS, &conf).status.success());
    // A resent ADD (a plugin killed after the daemon answered) gets the same address.
    assert_eq!(address(&plugin("ADD", "c1", NO_NETNS, &conf)), ip);
    assert_eq!(
        address(&plugin("ADD", "c2", NO_NETNS, &conf)),
        "10.50.0.3/24"
    );
    assert!(plugin("STATUS", "", NO_NETNS, &conf).status.success());
    assert!(plugin("DEL", "c1", NO_NETNS, &conf).status.success());
    assert!(
        plugin("DEL", "c1", NO_NETNS, &conf).status.success(),
        "DEL is idempotent"
    );
    assert_eq!(error_code(&plugin("CHECK", "c1", NO_NETNS, &conf)), 113);
    let held = node.allocations();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].2, "c2");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    assert!(plugin("GC", "", NO_NETNS, &gc).status.success());
    assert!(node.allocations().is_empty());
    assert!(
        node.log()
            .contains("allocate network=net1 container=c1 ifname=eth0"),
        "{}",
        node.log()
    );
}

#[test]
fn an_exhausted_pool_is_named_and_code_11() {
    let mut node = Node::new();
    node.start();
    let conf = node.conf("tiny", "10.51.0.0/30");
    address(&plugin("ADD", "a", NO_NETNS, &conf));
    let out = plugin("ADD", "b", NO_NETNS, &conf);
    assert_eq!(error_code(&out), 11);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no IP addresses available in range set") && text.contains("tiny"),
        "{text}"
    );
}

#[test]
fn with_the_daemon_down_add_is_11_fast_status_50_and_del_is_queued_then_applied() {
    let mut node = Node::new();
    node.start();
    let conf = node.conf("down", "10.52.0.0/24");
    let ip = address(&plugin("ADD", "c1", NO_NETNS, &conf));
    assert_eq!(node.stop().code(), Some(0), "graceful stop");

    let start = Instant::now();
    let out = plugin("ADD", "c2", NO_NETNS, &conf);
    let took = start.elapsed();
    assert_eq!(error_code(&out), 11);
    assert!(took < Duration::from_secs(2), "ADD took {took:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("trestled is not running at"));
    assert_eq!(error_code(&plugin("STATUS", "", NO_NETNS, &conf)), 50);

    let del = plugin("DEL", "c1", NO_NETNS, &conf);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stdout)
    );
    assert!(del.stdout.is_empty());
    assert_eq!(
        std::fs::read_dir(node.queue()).unwrap().count(),
        1,
        "the release is queued"
    );

    // Applied before the daemon serves: the address is free at the first ADD.
    node.start();
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert_eq!(std::fs::read_dir(node.queue()).unwrap().count(), 0);
    assert_eq!(
        address(&plugin("ADD", "c3", NO_NETNS, &conf)),
        "10.52.0.3/24"
    );
    assert_ne!(ip, "10.52.0.3/24");
}

#[test]
fn a_queued_del_never_frees_a_later_add_of_the_same_attachment() {
    let mut node = Node::new();
    node.start();
    let conf = node.conf("late", "10.53.0.0/24");
    address(&plugin("ADD", "c1", NO_NETNS, &conf));
    node.kill9();
    assert!(plugin("DEL", "c1", NO_NETNS, &conf).status.success());
    // Hold the queued entry back until after a new ADD of c1, as a DEL that lost a race would.
    let parked = node.path("parked");
    std::fs::rename(node.queue(), &parked).unwrap();
    node.start();
    assert!(node.allocations().len() == 1);
    assert!(plugin("DEL", "c1", NO_NETNS, &conf).status.success());
    let again = address(&plugin("ADD", "c1", NO_NETNS, &conf));
    std::fs::rename(&parked, node.queue()).unwrap();
    // The daemon applies the queue every second.
    wait_for("the queued DEL to be applied", || {
        std::fs::read_dir(node.queue()).unwrap().count() == 0
    });
    let held = node.allocations();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].1, again.split('/').next().unwrap());
}

#[test]
fn a_queued_del_never_frees_what_a_later_add_was_given_again() {
    let mut node = Node::new();
    node.start();
    let conf = node.conf("again", "10.53.1.0/24");
    let ip = address(&plugin("ADD", "c1", NO_NETNS, &conf));
    node.kill9();
    // The DEL never reaches the daemon: queued, and held back as one written late would be.
    assert!(plugin("DEL", "c1", NO_NETNS, &conf).status.success());
    let parked = node.path("parked");
    std::fs::rename(node.queue(), &parked).unwrap();
    node.start();
    // The runtime ADDs the attachment again: it is told the address it still holds.
    assert_eq!(address(&plugin("ADD", "c1", NO_NETNS, &conf)), ip);
    std::fs::rename(&parked, node.queue()).unwrap();
    wait_for("the queued DEL to be applied", || {
        std::fs::read_dir(node.queue()).unwrap().count() == 0
    });
    let held = node.allocations();
    assert_eq!(
        held.len(),
        1,
        "the re-acknowledged address was freed: {held:?}"
    );
    assert_eq!(held[0].1, ip.split('/').next().unwrap());
}

#[test]
fn a_delete_queue_others_can_write_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let mut node = Node::new();
    node.start();
    let conf = node.conf("untrusted", "10.59.0.0/24");
    address(&plugin("ADD", "c9", NO_NETNS, &conf));
    // Anyone may now drop entries in it: the daemon applies none (and says why).
    std::fs::set_permissions(node.queue(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let queued = node.queue().join("1-forged.del");
    let forged = serde_json::json!({
        "network": "untrusted", "container_id": "c9", "ifname": "eth0", "queued_at_ns": u64::MAX
    });
    std::fs::write(&queued, forged.to_string()).unwrap();
    // The daemon looks at the queue every second.
    wait_for("the daemon to refuse the queue", || {
        node.log().contains("delete queue ignored")
    });
    assert_eq!(node.allocations().len(), 1, "{:?}", node.allocations());
    assert!(queued.exists());
    // Said once in the log, and for as long as it lasts in STATUS and `trestlectl ipam show`.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(node.log().matches("delete queue ignored").count(), 1);
    let warnings = || {
        node.client()
            .status(&v1::StatusRequest::default())
            .unwrap()
            .warnings
    };
    assert!(
        warnings()
            .iter()
            .any(|w| w.contains("delete queue ignored")),
        "{:?}",
        warnings()
    );
    let show = std::process::Command::new(common::bin("trestlectl"))
        .args(["ipam", "show", "--socket"])
        .arg(node.socket())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("warning: delete queue ignored"), "{shown}");
    // Fixed: the warning goes, and the queue is applied again.
    std::fs::set_permissions(node.queue(), std::fs::Permissions::from_mode(0o700)).unwrap();
    wait_for("the queue to be applied", || node.allocations().is_empty());
    assert!(warnings().is_empty());
}

#[test]
fn list_pages_through_every_allocation_exactly_once() {
    let mut node = Node::new();
    node.start();
    let mut d = node.client();
    let (a, b) = (
        config("pages-a", "10.60.0.0/21"),
        config("pages-b", "10.61.0.0/24"),
    );
    for i in 0..1200 {
        allocate(&mut d, &a, &format!("a{i}"));
    }
    for i in 0..100 {
        allocate(&mut d, &b, &format!("b{i}"));
    }
    let page = |network: &str, token: String| {
        let req = v1::ListRequest {
            network: network.into(),
            page_size: 500,
            page_token: token,
            ..Default::default()
        };
        node.client().list(&req).unwrap()
    };
    let mut seen = HashSet::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let reply = page("", token);
        pages += 1;
        assert_eq!(reply.pools.len(), if pages == 1 { 2 } else { 0 });
        assert!(reply.allocations.len() <= 500);
        for x in reply.allocations {
            assert!(seen.insert((x.network, x.address)), "listed twice");
        }
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    assert_eq!((seen.len(), pages), (1300, 3));
    // One network's pages hold that network alone; an unpaged List (API minor 0) has all.
    let only_b = page("pages-b", String::new());
    assert_eq!(only_b.allocations.len(), 100);
    assert!(only_b.next_page_token.is_empty());
    assert_eq!(node.allocations().len(), 1300);
    let bad = node
        .client()
        .list(&v1::ListRequest {
            page_size: 10,
            page_token: "garbage".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(format!("{bad:?}").contains("invalid page token"), "{bad:?}");
}

#[test]
fn thirty_two_clients_times_a_thousand_cycles_no_duplicate_no_leak() {
    let mut node = Node::new();
    node.start();
    let cfg = Arc::new(config("load", "10.60.0.0/16"));
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let (cfg, held) = (cfg.clone(), held.clone());
            let mut d = node.client();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    let id = format!("c{t}-{i}");
                    let ip = allocate(&mut d, &cfg, &id).addresses[0].address.clone();
                    assert!(
                        held.lock().unwrap().insert(ip.clone()),
                        "{ip} handed out twice"
                    );
                    held.lock().unwrap().remove(&ip);
                    let rel = release_req("load", &id);
                    let freed = d.release(&rel).unwrap();
                    assert_eq!(freed.released.len(), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        node.allocations().is_empty(),
        "leaked: {:?}",
        node.allocations()
    );
}

#[test]
fn kill_9_during_concurrent_adds_loses_no_acknowledged_address() {
    let mut node = Node::new();
    node.start();
    let conf = Arc::new(node.conf("k9", "10.61.0.0/16"));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let (conf, acked, failed, stop) =
                (conf.clone(), acked.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("k{t}-{i}");
                    let out = plugin("ADD", &id, NO_NETNS, &conf);
                    if out.status.success() {
                        acked.lock().unwrap().push((id, address(&out)));
                    } else {
                        assert_eq!(
                            error_code(&out),
                            11,
                            "{}",
                            String::from_utf8_lossy(&out.stdout)
                        );
                        failed.lock().unwrap().push(id);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        node.kill9();
        std::thread::sleep(Duration::from_millis(300));
        node.start();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let held = node.allocations();
    let by_id: std::collections::HashMap<&str, &str> = held
        .iter()
        .map(|(_, ip, id, _)| (id.as_str(), ip.as_str()))
        .collect();
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 50, "only {} ADDs succeeded", acked.len());
    for (id, ip) in acked.iter() {
        assert_eq!(
            by_id.get(id.as_str()).copied(),
            ip.split('/').next(),
            "{id} lost its address"
        );
    }
    let distinct: HashSet<&str> = held.iter().map(|h| h.1.as_str()).collect();
    assert_eq!(distinct.len(), held.len());
    // The runtime DELs every failed ADD: afterwards only acknowledged ones remain.
    for id in failed.lock().unwrap().iter() {
        assert!(plugin("DEL", id, NO_NETNS, &conf).status.success());
    }
    assert_eq!(node.allocations().len(), acked.len());
}

#[test]
fn a_socket_activated_restart_during_500_adds_loses_none() {
    let mut node = Node::new();
    node.activate();
    node.start();
    let conf = Arc::new(node.conf("act", "10.62.0.0/16"));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ips: Arc<Mutex<Vec<String>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (conf, next, ips) = (conf.clone(), next.clone(), ips.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 500 {
                    return;
                }
                let out = plugin("ADD", &format!("a{i}"), NO_NETNS, &conf);
                ips.lock().unwrap().push(address(&out));
            })
        })
        .collect();
    // One graceful restart and one kill -9, each while ADDs are in flight.
    while next.load(std::sync::atomic::Ordering::Relaxed) < 150 {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(node.stop().code(), Some(0));
    node.start();
    while next.load(std::sync::atomic::Ordering::Relaxed) < 320 {
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill9();
    node.start();
    for w in workers {
        w.join().unwrap();
    }
    assert!(node.log().contains("(socket-activated)"), "{}", node.log());
    let ips = ips.lock().unwrap();
    assert_eq!(ips.len(), 500);
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 500, "duplicates");
    assert_eq!(node.allocations().len(), 500);
}

#[test]
fn killing_the_daemon_during_a_thousand_dels_fails_none_and_leaks_nothing() {
    let mut node = Node::new();
    node.start();
    let conf = Arc::new(node.conf("dels", "10.63.0.0/16"));
    let cfg = config("dels", "10.63.0.0/16");
    let mut d = node.client();
    for i in 0..1000 {
        allocate(&mut d, &cfg, &format!("d{i}"));
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (conf, next) = (conf.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 1000 {
                    return;
                }
                let out = plugin("DEL", &format!("d{i}"), NO_NETNS, &conf);
                assert!(
                    out.status.success(),
                    "DEL d{i}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            })
        })
        .collect();
    for at in [200, 600] {
        while next.load(std::sync::atomic::Ordering::Relaxed) < at {
            std::thread::sleep(Duration::from_millis(2));
        }
        node.kill9();
        std::thread::sleep(Duration::from_millis(200));
        node.start();
    }
    for w in workers {
        w.join().unwrap();
    }
    // Queued releases are applied at start and then every second.
    wait_for("every queued release to be applied", || {
        node.allocations().is_empty()
    });
}

#[test]
fn a_reboot_voids_the_allocations_of_the_earlier_boot() {
    let mut node = Node::new();
    node.start();
    let conf = node.conf("boot", "10.54.0.0/24");
    address(&plugin("ADD", "c1", NO_NETNS, &conf));
    node.stop();
    node.start();
    assert_eq!(node.allocations().len(), 1, "a restart keeps them");
    node.stop();
    std::fs::write(node.path("boot_id"), "boot-2\n").unwrap();
    node.start();
    assert!(node.allocations().is_empty());
    assert_eq!(
        address(&plugin("ADD", "c2", NO_NETNS, &conf)),
        "10.54.0.3/24",
        "the cursor survives"
    );
}

#[test]
fn a_second_instance_on_the_same_store_refuses_to_start() {
    let mut node = Node::new();
    node.start();
    let (status, log) = node.start_expecting_failure();
    assert_eq!(status.code(), Some(1));
    assert!(log.contains("another trestled (pid"), "{log}");
    assert!(node.allocations().is_empty(), "the first one still serves");
}

#[test]
fn a_corrupt_store_file_does_not_stop_the_daemon() {
    let mut node = Node::new();
    std::fs::create_dir_all(node.path("state")).unwrap();
    std::fs::write(node.path("state/ipam.redb"), vec![0xa5u8; 8192]).unwrap();
    // Killed while it rebuilds (told to wait a minute before it looks): the next start must
    // rebuild again, not trust the new store that merely looks clean.
    let mut first = trestle_testkit::Daemon::spawn(
        node.command_for_test().args(["--rebuild-settle", "60"]),
        &node.path("trestled.log"),
    )
    .unwrap();
    wait_for("the rebuild to start", || {
        node.log().contains("rebuilding allocations")
    });
    let status = node.client().status(&v1::StatusRequest::default());
    let reply = status.unwrap();
    assert!(!reply.ready, "not ready while rebuilding");
    assert!(reply.reason.contains("rebuilding"), "{}", reply.reason);
    first.kill9();
    node.start();
    let log = node.log();
    assert_eq!(log.matches("keeping it as").count(), 1, "{log}");
    assert_eq!(log.matches("rebuilding allocations").count(), 2, "{log}");
    assert!(log.contains("store rebuilt"), "{log}");
    let conf = node.conf("corrupt", "10.55.0.0/24");
    address(&plugin("ADD", "c1", NO_NETNS, &conf));
    // Rebuilt and committed: a third start has nothing to rebuild.
    node.kill9();
    node.start();
    assert_eq!(node.log().matches("rebuilding allocations").count(), 2);
    assert_eq!(node.allocations().len(), 1);
}

/// The v1.0-era minimum of a request: only the fields a first client would send.
#[derive(Clone, PartialEq, prost::Message)]
struct MinimalAllocate {
    #[prost(string, tag = "2")]
    network: String,
    #[prost(message, optional, tag = "3")]
    attachment: Option<v1::Attachment>,
    #[prost(message, repeated, tag = "7")]
    range_sets: Vec<v1::RangeSet>,
}

/// A later client: its own version, and a field this daemon has never heard of.
#[derive(Clone, PartialEq, prost::Message)]
struct FutureAllocate {
    #[prost(message, optional, tag = "1")]
    client: Option<v1::Peer>,
    #[prost(string, tag = "2")]
    network: String,
    #[prost(message, optional, tag = "3")]
    attachment: Option<v1::Attachment>,
    #[prost(message, repeated, tag = "7")]
    range_sets: Vec<v1::RangeSet>,
    #[prost(string, tag = "99")]
    added_in_v1_7: String,
}

async fn raw<Req, Resp>(
    node_socket: std::path::PathBuf,
    path: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let channel = tonic::transport::Endpoint::from_static("http://x.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = node_socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic::codec::ProstCodec::<Req, Resp>::default();
    grpc.unary(
        tonic::Request::new(req),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[test]
fn older_and_newer_clients_are_served_and_another_major_version_is_refused() {
    let mut node = Node::new();
    node.start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sets = allocate_req(&config("ver", "10.56.0.0/24"), "x").range_sets;
    let att = |id: &str| {
        Some(v1::Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        })
    };
    let path = "/trestle.ipam.v1.Ipam/Allocate";
    let old: v1::AllocateReply = rt
        .block_on(raw(
            node.socket(),
            path,
            MinimalAllocate {
                network: "ver".into(),
                attachment: att("old"),
                range_sets: sets.clone(),
            },
        ))
        .expect("a minimal client is served");
    assert_eq!(old.addresses[0].address, "10.56.0.2/24");
    assert_eq!(old.server.unwrap().api_major, 1);
    let newer = FutureAllocate {
        client: Some(v1::Peer {
            software: "trestle-ipam 0.9.0".into(),
            api_major: 1,
            api_minor: 7,
        }),
        network: "ver".into(),
        attachment: att("new"),
        range_sets: sets.clone(),
        added_in_v1_7: "ignored".into(),
    };
    let new: v1::AllocateReply = rt
        .block_on(raw(node.socket(), path, newer.clone()))
        .expect("a newer minor is served");
    assert_eq!(new.addresses[0].address, "10.56.0.3/24");

    let mut v2 = newer.clone();
    v2.client = Some(v1::Peer {
        software: "trestle-ipam 2.0.0".into(),
        api_major: 2,
        api_minor: 0,
    });
    let err = rt
        .block_on(raw::<_, v1::AllocateReply>(node.socket(), path, v2))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("trestle-ipam 2.0.0 speaks trestle.ipam API v2.0"),
        "{}",
        err.message()
    );
    let err = rt
        .block_on(raw::<_, v1::AllocateReply>(
            node.socket(),
            "/trestle.ipam.v2.Ipam/Allocate",
            newer,
        ))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert_eq!(trestle_ipam_api::codes::cni_code(err.code()), 114);
}

#[test]
fn hostile_requests_get_errors_and_the_daemon_stays_up() {
    let mut node = Node::new();
    node.start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut bad = allocate_req(&config("hostile", "10.57.0.0/24"), "x");
    bad.range_sets[0].ranges[0].subnet = "10.0.0.0/99".into();
    let err = rt
        .block_on(raw::<_, v1::AllocateReply>(
            node.socket(),
            "/trestle.ipam.v1.Ipam/Allocate",
            bad,
        ))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("range_sets[0].ranges[0].subnet"),
        "{}",
        err.message()
    );
    // Bytes that are not a message at all.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Junk {
        #[prost(bytes = "vec", tag = "3")]
        attachment: Vec<u8>,
    }
    let junk = Junk {
        attachment: vec![0xff; 64],
    };
    let err = rt
        .block_on(raw::<_, v1::AllocateReply>(
            node.socket(),
            "/trestle.ipam.v1.Ipam/Allocate",
            junk,
        ))
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Internal,
        "undecodable: {}",
        err.message()
    );
    // Over the size limit.
    let huge = Junk {
        attachment: vec![1; trestle_ipam_api::MAX_MESSAGE_BYTES + 1],
    };
    let err = rt
        .block_on(raw::<_, v1::AllocateReply>(
            node.socket(),
            "/trestle.ipam.v1.Ipam/Allocate",
            huge,
        ))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
    let conf = node.conf("hostile", "10.57.0.0/24");
    address(&plugin("ADD", "fine", NO_NETNS, &conf));
}

#[test]
fn metrics_and_readiness_are_served_when_asked_for() {
    let mut node = Node::new();
    node.args
        .extend(["--metrics-addr".into(), "127.0.0.1:0".into()]);
    node.start();
    let conf = node.conf("m", "10.58.0.0/24");
    address(&plugin("ADD", "c1", NO_NETNS, &conf));
    let log = node.log();
    let addr = log
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let metrics = get("/metrics");
    assert!(
        metrics.contains("trestle_ipam_addresses_in_use{network=\"m\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trestle_ipam_request_seconds_count{method=\"allocate\"}"),
        "{metrics}"
    );
    assert!(get("/readyz").starts_with("HTTP/1.1 200"));
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
}

const CONFLIST: &str = r#"{"cniVersion":"1.1.0","name":"trestle","plugins":[{"type":"trestle"}]}"#;

/// Arguments that make `node`'s daemon keep a conflist in `net.d/` from `source.conflist`.
fn conflist_args(node: &mut Node) -> std::path::PathBuf {
    std::fs::create_dir(node.path("net.d")).unwrap();
    std::fs::write(node.path("source.conflist"), CONFLIST).unwrap();
    let dest = node.path("net.d/05-trestle.conflist");
    node.args.extend([
        "--cni-conflist-source".into(),
        node.path("source.conflist").display().to_string(),
        "--cni-conflist-path".into(),
        dest.display().to_string(),
    ]);
    dest
}

#[test]
fn the_conflist_is_written_once_ready_and_left_in_place_on_stop() {
    let mut node = Node::new();
    let dest = conflist_args(&mut node);
    node.start();
    wait_for("the conflist", || {
        std::fs::read_to_string(&dest).is_ok_and(|s| s == CONFLIST)
    });
    assert!(node.stop().success());
    // A runtime keeps starting pods on this node while the daemon is upgraded: the file stays.
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), CONFLIST);
    // Only the conflist is in the conf dir: no temporary file left beside it.
    assert_eq!(std::fs::read_dir(node.path("net.d")).unwrap().count(), 1);
}

#[test]
fn no_conflist_while_the_daemon_cannot_serve() {
    // An etcd that accepts connections and never answers: the node never gets its lease, so it is never ready.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut node = Node::new();
    let dest = conflist_args(&mut node);
    node.args.extend([
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        silent.local_addr().unwrap().to_string(),
        "--node-name".into(),
        "n1".into(),
        "--routing".into(),
        "none".into(),
    ]);
    let mut child = node.spawn();
    // Three of the writer's one-second looks.
    std::thread::sleep(Duration::from_secs(4));
    let running = child.exited().is_none();
    child.kill9();
    assert!(running, "trestled exited:\n{}", node.log());
    assert!(!dest.exists(), "conflist written before ready");
}

#[test]
fn a_source_that_is_not_a_conflist_is_refused_at_start() {
    let mut node = Node::new();
    let dest = conflist_args(&mut node);
    std::fs::write(node.path("source.conflist"), r#"{"name":"x"}"#).unwrap();
    let (status, log) = node.start_expecting_failure();
    assert!(!status.success());
    assert!(log.contains("is not a CNI conflist"), "{log}");
    assert!(!dest.exists());
}
