//! Typed errors of the other crates mapped to CNI errors at the edge with [`CniError::from_error`]: every error of
//! the cause chain reaches the error object, each once.

use cni_proto::{error_chain, CniError};

/// `EACCES` on Linux (no libc dependency for one constant).
const EACCES: i32 = 13;

fn eacces() -> std::io::Error {
    std::io::Error::from_raw_os_error(EACCES)
}

#[test]
fn netlink_io_failure_carries_its_cause_once() {
    let os = eacces().to_string();
    let err = trestle_netlink::Error::Io(eacces());
    let e = CniError::from_error(100u32, "open netlink socket", &err);
    assert_eq!(e.code, 100);
    assert_eq!(e.msg, "open netlink socket: netlink socket I/O");
    assert_eq!(e.details.as_deref(), Some(os.as_str()));
    let shown = e.to_string();
    assert_eq!(
        shown,
        format!("open netlink socket: netlink socket I/O; {os}")
    );
    assert_eq!(shown.matches(&os).count(), 1, "{shown}");
    assert_eq!(shown.matches("netlink socket I/O").count(), 1, "{shown}");
    // The error object on stdout has the cause in `details`, not in `msg`.
    let json: serde_json::Value = serde_json::from_str(&e.to_json(None)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"code": 100, "msg": "open netlink socket: netlink socket I/O", "details": os})
    );
    assert_eq!(error_chain(&err), format!("netlink socket I/O: {os}"));
}

#[test]
fn netlink_kernel_refusal_is_complete_without_details() {
    // A kernel errno is the error itself, not a cause: it is in the message and there is nothing more to add.
    let err = trestle_netlink::Error::Kernel {
        op: "create veth",
        errno: EACCES,
    };
    let e = CniError::from_error(100u32, "create veth pair", &err);
    assert_eq!(
        e.msg,
        format!("create veth pair: create veth: {}", eacces())
    );
    assert_eq!(e.details, None);
    let e = CniError::from_error(100u32, "add address", &trestle_netlink::Error::Exists);
    assert_eq!(
        (e.msg.as_str(), e.details),
        ("add address: already exists", None)
    );
}
