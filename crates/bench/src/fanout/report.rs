//! The fan-out bench's report: JSON for tools, Markdown for docs/.

use serde::Serialize;

use super::super::stats::Summary;

/// The p99 the issue sets for a claim to reach every node.
pub const TARGET_P99_MS: f64 = 1000.0;

/// What one etcd member did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberUse {
    /// `m1`, `m2`, `m3`.
    pub name: String,
    /// Followers whose client tries it first.
    pub followers: usize,
    /// Watch streams it serves after the first reads (`etcd_debugging_mvcc_watch_stream_total`).
    pub watch_streams: Option<f64>,
    /// Resident memory before the followers start, KiB.
    pub rss_before_kib: u64,
    /// Largest resident memory during the first reads, KiB.
    pub rss_read_peak_kib: u64,
    /// CPU seconds during the first reads.
    pub cpu_read_s: f64,
    /// Largest resident memory during the claims, KiB.
    pub rss_claims_peak_kib: u64,
    /// CPU seconds during the claims.
    pub cpu_claims_s: f64,
}

/// The member stopped mid-run, and what its followers did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outage {
    /// The member killed (SIGKILL) and started again; never the leader, so claims go on.
    pub member: String,
    /// Killed before this claim (0-based).
    pub killed_before_claim: usize,
    /// Started again before this claim.
    pub restarted_before_claim: usize,
    /// Seconds it was down (until it served again).
    pub down_s: f64,
    /// Followers whose client tried it first.
    pub followers_on_it: usize,
    /// Followers that opened another watch during the claims (they moved to another member).
    pub followers_rewatched: usize,
    /// Whole reads during the claims (a watch resumed from its revision needs none).
    pub extra_reads: u64,
}

/// The result.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FanoutReport {
    /// The command line.
    pub command: String,
    /// How trestlectl was linked (`glibc dynamic`, `musl static-pie`, ...).
    pub build: String,
    /// `etcd --version`.
    pub etcd_version: String,
    /// Kernel, CPUs and model.
    pub machine: String,
    /// Load averages (1, 5, 15 min) at the start and at the end: the machine is shared.
    pub load: Vec<String>,
    /// A smoke run: its numbers are not judged.
    pub smoke: bool,
    /// Followers (simulated nodes, each with its own connection).
    pub followers: usize,
    /// Keys under the prefix before the claims (a host record and a block per node, and the pool).
    pub keys: usize,
    /// Seconds to write them.
    pub populate_s: f64,
    /// Each follower's etcd request deadline (trestled's `--etcd-timeout`), seconds.
    pub request_timeout_s: f64,
    /// From every follower's start to its first published state (the whole read at one revision).
    pub first_read: Summary,
    /// Failures of etcd requests the followers met during the first reads (each retried).
    pub first_read_failures: u64,
    /// CPU seconds of the bench process (the followers) during the first reads.
    pub bench_cpu_read_s: f64,
    /// The members.
    pub members: Vec<MemberUse>,
    /// Block claims committed.
    pub claims: usize,
    /// Milliseconds between claims.
    pub interval_ms: u64,
    /// Milliseconds from etcd's answer to a claim's transaction to each follower's state holding it (claims x
    /// followers).
    pub latency: Summary,
    /// The same, claims made while a member was down.
    pub latency_outage: Summary,
    /// From sending each claim (its commit included) to each follower's state holding it.
    pub latency_from_send: Summary,
    /// The claims' transactions: from sending to etcd's answer.
    pub round_trip: Summary,
    /// The bench process's CPU over the claims per follower and claim, ms: what following one change costs a
    /// node (its watch, decoding, and the new state it publishes), the writer's share included.
    pub cpu_per_follower_claim_ms: f64,
    /// Each follower's slowest arrival, summarised: a few laggards, or all.
    pub follower_worst: Summary,
    /// Each claim's slowest arrival, ms, in claim order: a backlog grows along it.
    pub claim_worst_ms: Vec<f64>,
    /// Whether p99 is under [`TARGET_P99_MS`].
    pub target_met: bool,
    /// (claim, follower) pairs that did not arrive within the bench's wait.
    pub missed: usize,
    /// (claim, follower) pairs absent from the follower's last state as its owner's block.
    pub absent_at_end: usize,
    /// CPU seconds of the bench process (the followers, the writer) during the claims.
    pub bench_cpu_claims_s: f64,
    /// Seconds of the claims phase (pacing included).
    pub claims_s: f64,
    /// The member stopped mid-run.
    pub outage: Option<Outage>,
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

impl FanoutReport {
    /// Whether the run found no claim missing.
    pub fn complete(&self) -> bool {
        self.missed == 0 && self.absent_at_end == 0
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Watch fan-out\n\n`{}`\n\nBuild: {}; etcd {}; {}; load average {}.{}\n\n\
             {} followers on a 3-member etcd on loopback, each `trestle_routes::follow` (trestled's code) over an \
             etcd client of its own, spread over the members; {} keys under the prefix (a host record and a block \
             per node, written in {:.1} s); etcd request deadline (trestled's `--etcd-timeout`, 1 s by \
             default; also its HTTP/2 keep-alive timeout) {:.1} s.\n\n",
            self.command,
            self.build,
            self.etcd_version,
            self.machine,
            self.load.join(", then "),
            if self.smoke {
                " Smoke run: the numbers are not judged."
            } else {
                ""
            },
            self.followers,
            self.keys,
            self.populate_s,
            self.request_timeout_s,
        );
        let r = &self.first_read;
        s.push_str(&format!(
            "## First read\n\nAll followers started at once; from start to each one's first state (the whole \
             cluster read in pages at one revision, decoded): p50 {:.0} ms, p99 {:.0} ms, all done at {:.0} ms; \
             {} failed requests (retried). The bench process (the followers) used {:.2} CPU s.\n\n",
            r.p50_ms, r.p99_ms, r.max_ms, self.first_read_failures, self.bench_cpu_read_s
        ));
        s.push_str(
            "| member | followers | watch streams | RSS before MiB | RSS peak, reads MiB | CPU s, reads | \
             RSS peak, claims MiB | CPU s, claims |\n|---|---|---|---|---|---|---|---|\n",
        );
        for m in &self.members {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {} | {:.1} |\n",
                m.name,
                m.followers,
                m.watch_streams.map_or("-".into(), |w| format!("{w:.0}")),
                mib(m.rss_before_kib),
                mib(m.rss_read_peak_kib),
                m.cpu_read_s,
                mib(m.rss_claims_peak_kib),
                m.cpu_claims_s
            ));
        }
        let row = |name: &str, l: &Summary| {
            format!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                l.n, l.p50_ms, l.p99_ms, l.max_ms, l.mean_ms
            )
        };
        s.push_str(&format!(
            "\n## Claims\n\n{} block claims, one every {} ms (a transaction as a node's claim: the block if absent, \
             and its affinity key), over {:.1} s; milliseconds from etcd's answer to the claim to each follower's \
             published state holding it:\n\n\
             | claims | samples | p50 | p99 | max | mean |\n|---|---|---|---|---|---|\n",
            self.claims, self.interval_ms, self.claims_s
        ));
        s.push_str(&row("all", &self.latency));
        s.push_str(&row("while a member was down", &self.latency_outage));
        s.push_str(&row("all, from sending the claim", &self.latency_from_send));
        s.push_str(&row("(the claim's transaction itself)", &self.round_trip));
        s.push_str(&row("each follower's slowest", &self.follower_worst));
        s.push_str(&format!(
            "\nEach claim's slowest arrival, ms, in order: {}.\n",
            self.claim_worst_ms
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        s.push_str(&format!(
            "\nTarget p99 < {TARGET_P99_MS:.0} ms: **{}**. Missed (never arrived): {}; absent from a follower's \
             last state: {}. The bench process used {:.2} CPU s over the claims, {:.3} ms per follower and claim.\n",
            if self.target_met { "met" } else { "missed" },
            self.missed,
            self.absent_at_end,
            self.bench_cpu_claims_s,
            self.cpu_per_follower_claim_ms
        ));
        if let Some(o) = &self.outage {
            s.push_str(&format!(
                "\nMember {} (not the leader) was killed before claim {} and started again before claim {} ({:.1} s \
                 down). {} followers tried it first; {} followers opened another watch; {} whole reads of the cluster \
                 again.\n",
                o.member,
                o.killed_before_claim,
                o.restarted_before_claim,
                o.down_s,
                o.followers_on_it,
                o.followers_rewatched,
                o.extra_reads
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_says_whether_the_target_was_met() {
        let mut r = FanoutReport {
            followers: 20,
            members: vec![MemberUse {
                name: "m1".into(),
                rss_before_kib: 2048,
                ..MemberUse::default()
            }],
            ..FanoutReport::default()
        };
        let md = r.markdown();
        assert!(md.contains("**missed**"), "{md}");
        assert!(md.contains("| m1 | 0 | - | 2 |"), "{md}");
        r.target_met = true;
        r.smoke = true;
        let md = r.markdown();
        assert!(md.contains("**met**") && md.contains("not judged"), "{md}");
        assert!(r.complete());
        r.absent_at_end = 1;
        assert!(!r.complete());
    }
}
