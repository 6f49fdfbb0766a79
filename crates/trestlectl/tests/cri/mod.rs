//! A small CRI client, the kubelet's side of the kubelet-to-runtime API, enough to run a pod.
#![allow(dead_code)]

mod client;
mod msg;

pub use client::Client;
pub use msg::PodSandboxConfig;

/// A pod's sandbox config, as the kubelet would send it (labels and the pod's identity).
pub fn pod_config(name: &str, log_dir: &std::path::Path) -> PodSandboxConfig {
    std::fs::create_dir_all(log_dir).unwrap();
    PodSandboxConfig {
        metadata: Some(msg::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        annotations: Default::default(),
    }
}
