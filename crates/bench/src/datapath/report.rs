//! The report of `bench --datapath`: markdown and JSON, as the other modes write theirs.

use std::path::Path;

use serde::Serialize;

use super::{DatapathOptions, Error, PathResult, Side};

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// How trestlectl (the sender and receiver) and the plugin were built: C library and link mode.
    pub build: Build,
    /// Kernel, CPUs and CPU model.
    pub machine: String,
    /// Load average at the end.
    pub load: String,
    /// Seconds of each throughput run.
    pub seconds: f64,
    /// Rounds per path.
    pub rounds: usize,
    /// Timed round trips of each latency run.
    pub round_trips: usize,
    /// A smoke run: nothing judged.
    pub smoke: bool,
    /// What the CPU figure is.
    pub cpu_note: String,
    /// Per path.
    pub paths: Vec<PathResult>,
    /// Wall seconds of the whole run, setup and clean-up included.
    pub runtime_s: f64,
}

/// How the binaries were built.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    /// trestlectl itself.
    pub trestlectl: String,
    /// The `trestle` plugin.
    pub trestle: String,
    /// `trestled`.
    pub trestled: String,
}

const CPU_NOTE: &str = "machine-wide busy CPU time (user, nice, system, irq, softirq, steal of /proc/stat's cpu \
                        line, every CPU and process) over the stream, in CPU-seconds per Gbit moved";

impl Report {
    /// The report of `paths`, measured with `opts`.
    pub fn new(opts: &DatapathOptions, paths: Vec<PathResult>) -> Report {
        let link = |p: &Path| crate::binary::link_mode(p);
        let own = std::env::current_exe()
            .map(|p| link(&p))
            .unwrap_or_default();
        Report {
            command: opts.command.clone(),
            build: Build {
                trestlectl: own,
                trestle: link(&opts.bin_dir.join("trestle")),
                trestled: link(&opts.bin_dir.join("trestled")),
            },
            machine: crate::report::machine(),
            load: crate::report::load_average(),
            seconds: opts.seconds,
            rounds: opts.rounds.max(1),
            round_trips: opts.round_trips,
            smoke: opts.smoke,
            cpu_note: CPU_NOTE.into(),
            paths,
            runtime_s: 0.0,
        }
    }

    /// Writes datapath.md and datapath.json into `out`.
    pub fn write(&self, out: &Path) -> Result<(), Error> {
        let files = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Files { path, source }
        };
        std::fs::create_dir_all(out).map_err(files(out))?;
        let md = out.join("datapath.md");
        std::fs::write(&md, self.markdown()).map_err(files(&md))?;
        let json = out.join("datapath.json");
        let text = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        std::fs::write(&json, text).map_err(files(&json))
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Pod to pod: trestle beside the kernel's baseline\n\n`{}`\n\n{}; trestlectl {}, trestle {}, trestled {}; \
             load average at the end {}; {:.0} s in all.\n\n\
             Three nodes (network namespaces, two on one segment, one on another) with etcd and trestled \
             (`--routing auto`) each; trestle's pods made by the plugin. The baseline is built by hand in the same \
             node namespaces: a plain veth per pod with routes (no bridge, no proxy ARP), routes via the peer's \
             underlay address, and a VXLAN device of its own (VNI 4242, port 4790) with static routes, neighbour \
             and FDB entries; eth0 has trestle's pod MTU. Per path and round, trestle and the baseline run one \
             after the other, the order alternating by round; medians of {} rounds. Throughput: one TCP stream, \
             {} s, 1 MiB writes. CPU: {}. RTT: {} round trips of a 1-byte TCP request/response (TCP_NODELAY).\n\n",
            self.command,
            self.machine,
            self.build.trestlectl,
            self.build.trestle,
            self.build.trestled,
            self.load,
            self.runtime_s,
            self.rounds,
            self.seconds,
            self.cpu_note,
            self.round_trips,
        );
        s += "| path | MTU | Gbit/s trestle | baseline | ratio | CPU-s/Gbit trestle | baseline | ratio | RTT p50 / p99 µs trestle | baseline | p50 ratio | p99 ratio | within 5% |\n\
              |---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for p in &self.paths {
            let (t, b, r) = (&p.trestle.median, &p.baseline.median, &p.ratios);
            s += &format!(
                "| {} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} | {:.3} | {} |\n",
                p.path,
                p.trestle.mtu,
                t.gbps,
                b.gbps,
                r.gbps,
                t.cpu_s_per_gbit,
                b.cpu_s_per_gbit,
                r.cpu_s_per_gbit,
                t.p50_us,
                t.p99_us,
                b.p50_us,
                b.p99_us,
                r.p50_us,
                r.p99_us,
                match p.within_5pct {
                    None => "not judged (smoke)",
                    Some(true) => "yes",
                    Some(false) => "**no**",
                }
            );
        }
        s += "\nWithin 5%: throughput at least 0.95 of the baseline's, CPU per Gbit and p99 RTT at most 1.05 of it.\n\n\
              Every round (Gbit/s, CPU-s/Gbit, p50 µs, p99 µs):\n\n";
        for p in &self.paths {
            s += &format!(
                "- {}: trestle {} → {}: {}; baseline {} → {}: {}\n",
                p.path,
                p.trestle.from,
                p.trestle.to,
                rounds(&p.trestle),
                p.baseline.from,
                p.baseline.to,
                rounds(&p.baseline)
            );
        }
        s
    }
}

fn rounds(side: &Side) -> String {
    side.rounds
        .iter()
        .map(|r| {
            format!(
                "{:.2}/{:.3}/{:.1}/{:.1}",
                r.gbps, r.cpu_s_per_gbit, r.p50_us, r.p99_us
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
