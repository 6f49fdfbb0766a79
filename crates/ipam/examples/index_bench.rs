//! Micro-benchmark of ADD and DEL with 1,000 existing reservations on one /22, with the
//! attachment index answering ("indexed") and with the index bypassed because host-local
//! wrote one reservation of its own ("fallback", which reads every reservation as before).
//!
//! Run: `cargo run --release -p trestle-ipam-core --example index_bench [dir]`. The optional
//! directory picks the file system (default: the system temp dir). Reports, asserts nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use trestle_ipam_core::{
    allocate, release, Attachment, BootIdSource, ConfigInput, DiskStore, IpamConfig,
};

const EXISTING: usize = 1000;
const ROUNDS: usize = 200;

fn config() -> IpamConfig {
    let stdin = json!({"cniVersion": "1.1.0", "name": "bench",
        "ipam": {"ranges": [[{"subnet": "10.0.0.0/22"}]]}});
    IpamConfig::parse(ConfigInput {
        stdin: &stdin,
        cni_args_ips: vec![],
        multiple_sets_per_family: true,
    })
    .expect("valid config")
}

fn stats(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let total: Duration = samples.iter().sum();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    eprintln!(
        "{label:<14} median {:>8.1} us   mean {:>8.1} us   p90 {:>8.1} us",
        micros(samples[samples.len() / 2]),
        micros(total / samples.len() as u32),
        micros(samples[samples.len() * 9 / 10]),
    );
}

/// Times `ROUNDS` ADD+DEL pairs of fresh attachments.
fn measure(cfg: &IpamConfig, store: &mut DiskStore, tag: &str) {
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let att = Attachment::new(format!("{tag}-{i}"), "eth0");
        let t = Instant::now();
        allocate(cfg, store, &att).expect("allocate");
        adds.push(t.elapsed());
        let t = Instant::now();
        let freed = release(cfg, store, &att).expect("release");
        dels.push(t.elapsed());
        assert_eq!(freed.len(), 1);
    }
    stats(&format!("{tag} ADD"), &mut adds);
    stats(&format!("{tag} DEL"), &mut dels);
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let root = tempfile::tempdir_in(base).expect("temp dir");
    let cfg = config();
    let mut store =
        DiskStore::open_with(root.path(), "bench", &BootIdSource::Disabled).expect("open");
    for i in 0..EXISTING {
        allocate(
            &cfg,
            &mut store,
            &Attachment::new(format!("pod-{i}"), "eth0"),
        )
        .expect("fill");
    }
    eprintln!(
        "{EXISTING} existing reservations in {}, {ROUNDS} rounds each",
        store.dir().display()
    );
    measure(&cfg, &mut store, "indexed");
    // One reservation host-local made (no pin): every lookup must read all files again.
    std::fs::write(store.dir().join("10.0.3.250"), "host-local-pod\r\neth0").expect("write");
    measure(&cfg, &mut store, "fallback");
}
