//! A three-member etcd cluster in containers, with TLS and client certificates as a production cluster has them.
//! Its image is made on the spot from the machine's own etcd (Debian's `etcd-server`) and the libraries it loads,
//! because no registry is reachable.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::docker::Docker;
use crate::Error;

/// Where Debian's etcd-server installs etcd.
const ETCD: &str = "/usr/bin/etcd";

/// The certificates of a cluster: a CA, one server certificate for every member, and a client certificate.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Certs {
    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// The client certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    /// The client certificate's key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// Makes a CA, a server certificate valid for `ips`, and a client certificate, in `dir`.
    pub fn create(dir: &Path, ips: &[Ipv4Addr]) -> Result<Certs, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let server_ips: Vec<Ipv4Addr> = ips.iter().chain(&[Ipv4Addr::LOCALHOST]).copied().collect();
        let tls =
            trestle_testkit::Tls::generate(&server_ips).map_err(|e| Error::Certs(e.to_string()))?;
        for (name, pem) in [
            ("ca.crt", tls.ca),
            ("server.crt", tls.server),
            ("server.key", tls.server_key),
            ("tls.crt", tls.client),
            ("tls.key", tls.client_key),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, pem).map_err(|e| Error::io(&path, e))?;
        }
        Ok(Certs { dir: dir.into() })
    }
}

/// Builds the etcd image from the machine's etcd binary and the shared objects it loads (with trestlectl's image
/// writer, as the project's own image); its tag.
pub fn build_image(docker: &Docker) -> Result<String, Error> {
    use trestle_operator::image::{self, archive};
    let tag = format!("localhost/{}:etcd", docker.run_id());
    let exe = std::fs::read(ETCD).map_err(|e| Error::io(Path::new(ETCD), e))?;
    // A static etcd (upstream's release tarball) needs nothing else; ldd would refuse it.
    let dynamic = trestle_operator::binary::interpreter(&exe).is_some();
    let mut files = vec![(ETCD.trim_start_matches('/').to_string(), exe)];
    let libs = if dynamic {
        image::shared_objects(Path::new(ETCD)).map_err(|e| Error::Command(e.to_string()))?
    } else {
        Vec::new()
    };
    for lib in libs {
        let bytes = std::fs::read(&lib).map_err(|e| Error::io(Path::new(&lib), e))?;
        files.push((lib.trim_start_matches('/').to_string(), bytes));
    }
    let dirs = archive::parent_dirs(files.iter().map(|(p, _)| p.as_str()));
    let mut entries: Vec<archive::Entry> = dirs
        .iter()
        .map(|path| archive::Entry::Dir { path, mode: 0o755 })
        .collect();
    entries.extend(files.iter().map(|(path, data)| archive::Entry::File {
        path,
        mode: 0o755,
        data,
    }));
    let config = archive::Config {
        architecture: archive::oci_arch().into(),
        cmd: vec![ETCD.into()],
        labels: vec![(crate::docker::LABEL.into(), docker.run_id().into())],
        ..Default::default()
    };
    let layer = archive::layer(&entries, 0);
    let archive = archive::docker_archive(&layer, &config, std::slice::from_ref(&tag), 0);
    docker.own_image(&tag);
    docker.cmd_stdin(&["load"], Some(&archive.bytes))?;
    Ok(tag)
}

/// A running three-member cluster.
#[derive(Debug)]
pub struct Etcd {
    /// The members' container names.
    pub members: Vec<String>,
    /// Their addresses.
    pub ips: Vec<Ipv4Addr>,
}

impl Etcd {
    /// Starts one member per address of `ips` on `network`, serving clients over TLS with client certificates
    /// (`certs`), peers in the clear on their private network.
    pub fn start(
        docker: &Docker,
        image: &str,
        network: &str,
        ips: &[Ipv4Addr],
        certs: &Certs,
    ) -> Result<Etcd, Error> {
        let names: Vec<String> = (0..ips.len()).map(|i| format!("etcd{i}")).collect();
        let initial = names
            .iter()
            .zip(ips)
            .map(|(n, ip)| format!("{n}=http://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (name, ip) in names.iter().zip(ips) {
            let container = docker.name(name);
            let [l, v] = docker.label();
            let mount = format!("{}:/certs:ro", certs.dir.display());
            let args: Vec<String> = [
                "run",
                "-d",
                &l,
                &v,
                "--name",
                &container,
                "--network",
                network,
                "--ip",
                &ip.to_string(),
                "--tmpfs",
                "/data",
                "-v",
                &mount,
                image,
                ETCD,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                format!("--name={name}"),
                "--data-dir=/data".into(),
                format!("--listen-client-urls=https://{ip}:2379"),
                format!("--advertise-client-urls=https://{ip}:2379"),
                format!("--listen-peer-urls=http://{ip}:2380"),
                format!("--initial-advertise-peer-urls=http://{ip}:2380"),
                format!("--initial-cluster={initial}"),
                format!("--initial-cluster-token={}", docker.run_id()),
                "--initial-cluster-state=new".into(),
                "--cert-file=/certs/server.crt".into(),
                "--key-file=/certs/server.key".into(),
                "--trusted-ca-file=/certs/ca.crt".into(),
                "--client-cert-auth".into(),
            ])
            .collect();
            docker.cmd(&args)?;
            members.push(container);
        }
        Ok(Etcd {
            members,
            ips: ips.to_vec(),
        })
    }

    /// The client endpoints, comma-separated, as trestled's `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.ips
            .iter()
            .map(|ip| format!("https://{ip}:2379"))
            .collect::<Vec<_>>()
            .join(",")
    }
}
