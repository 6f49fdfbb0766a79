//! A real etcd cluster on loopback, for the demo, the benches and the tests: each member is Debian's
//! `etcd` (from `etcd-server`) with its own data directory under a folder the caller owns. A crate of its
//! own so that nothing which starts processes for a test is linked into `trestled`.
//! Members listen on an address of their own in 127.0.0.0/8 (fixed ports on a random
//! loopback address), so concurrent tests and a system etcd never meet.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member.
#[derive(Debug)]
pub struct Member {
    /// `m1`, `m2`, ...
    pub name: String,
    /// Its client address (`IP:2379`).
    pub client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    /// The members.
    pub members: Vec<Member>,
    initial: String,
    token: String,
    tls: Option<ServerTls>,
}

/// TLS for the client port: the server certificate (valid for every member's address), its
/// key, and the CA client certificates are checked against (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The CA clients must present a certificate of.
    pub client_ca: PathBuf,
}

/// The etcd binary: `$TRESTLE_ETCD`, or `etcd` on the PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRESTLE_ETCD") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

fn free_base() -> Ipv4Addr {
    let seed = std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64));
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    loop {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let (a, b) = (((x >> 8) % 250 + 2) as u8, ((x >> 24) % 250 + 2) as u8);
        let base = Ipv4Addr::new(127, a, b, 0);
        let ok = (1..=5u8).all(|m| {
            let ip = Ipv4Addr::new(127, a, b, m);
            [2379, 2380, 2381]
                .iter()
                .all(|p| TcpListener::bind((ip, *p)).is_ok())
        });
        if ok {
            return base;
        }
    }
}

impl LocalCluster {
    /// Starts `n` members with data under `dir`, and waits until they serve.
    pub fn start(dir: &Path, n: usize) -> std::io::Result<LocalCluster> {
        LocalCluster::start_tls(dir, n, |_| Ok(None))
    }

    /// [`LocalCluster::start`], with TLS on the client port if `tls` (given the members'
    /// addresses, for the certificate) says so. Health and metrics stay plain HTTP on port 2381.
    pub fn start_tls(
        dir: &Path,
        n: usize,
        tls: impl FnOnce(&[Ipv4Addr]) -> std::io::Result<Option<ServerTls>>,
    ) -> std::io::Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let base = free_base();
        let o = base.octets();
        let members: Vec<Member> = (1..=n)
            .map(|i| {
                let ip = Ipv4Addr::new(o[0], o[1], o[2], i as u8);
                Member {
                    name: format!("m{i}"),
                    client: SocketAddr::from((ip, 2379)),
                    peer: SocketAddr::from((ip, 2380)),
                    data: dir.join(format!("m{i}")),
                    log: dir.join(format!("m{i}.log")),
                    child: None,
                }
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let ips: Vec<Ipv4Addr> = (1..=n)
            .map(|i| Ipv4Addr::new(o[0], o[1], o[2], i as u8))
            .collect();
        let tls = tls(&ips)?;
        let mut c = LocalCluster {
            tls,
            members,
            initial,
            token: format!(
                "trestle-{}-{}",
                std::process::id(),
                o[1] as u32 * 256 + o[2] as u32
            ),
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        c.wait_serving(Duration::from_secs(30))?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let bin = etcd_binary().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no etcd: apt-get install etcd-server (or set TRESTLE_ETCD)",
            )
        })?;
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new(bin);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.client_ca);
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", metrics_addr(m.client)))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(&self.initial)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            // Quick elections: a killed leader is replaced within about a second.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        m.child = Some(child);
        Ok(())
    }

    /// The client endpoints, `IP:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// Waits until every running member answers `/health` with a leader.
    pub fn wait_serving(&self, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            while !healthy(metrics_addr(m.client)) {
                if Instant::now() > deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "etcd member {} not healthy; its log: {}",
                            m.name,
                            m.log.display()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (it rejoins).
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// True if member `i` runs.
    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// A member's `/metrics` value: the sum of every sample of `name`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let body = http_get(metrics_addr(self.members[i].client), "/metrics")?;
        let mut sum = None;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *sum.get_or_insert(0.0) += v;
        }
        sum
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Where a member serves /health and /metrics: its address, port 2381.
fn metrics_addr(client: SocketAddr) -> SocketAddr {
    SocketAddr::new(client.ip(), 2381)
}

fn healthy(addr: SocketAddr) -> bool {
    http_get(addr, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
}

/// A minimal HTTP/1.0 GET on loopback (etcd's /health and /metrics).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}
