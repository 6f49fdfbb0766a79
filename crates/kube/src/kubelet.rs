//! What a kubelet does with a DaemonSet's pod on one node, done with Docker: each container of the pod becomes a
//! Docker container that joins the node container's network and PID namespaces (`hostNetwork`, `hostPID`), sees
//! the node's `hostPath` directories (Docker volumes the node container mounts at the same paths), and gets its
//! ConfigMap and Secret volumes as read-only directories, its environment with `valueFrom` resolved and `$(VAR)`
//! expanded in command and args, exactly as the manifest says. Init containers run to completion first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::docker::Docker;
use crate::manifest::{Container as Spec, EnvSource, KeyToPath, PodSpec};
use crate::Error;

/// What the API server would know of the node and its objects.
#[derive(Debug, Clone)]
pub struct Context {
    /// `spec.nodeName`.
    pub node_name: String,
    /// `status.hostIP`.
    pub host_ip: String,
    /// The pod's namespace.
    pub namespace: String,
    /// ConfigMaps by name: key → value.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Secrets by name: key → value (decoded).
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Where a node's hostPath directories are: path on the node → Docker volume.
pub type HostPaths = BTreeMap<String, String>;

/// The `hostPath` paths of a pod spec: what a node container must mount.
pub fn host_paths(spec: &PodSpec) -> Vec<String> {
    spec.volumes
        .iter()
        .filter_map(|v| Some(v.host_path.as_ref()?.path.clone()))
        .collect()
}

/// One container of the pod, made ready to run.
#[derive(Debug, Clone)]
pub struct Container {
    /// The manifest's container name.
    pub name: String,
    /// `docker run` arguments after `run`, up to and including the image and the command.
    pub args: Vec<String>,
}

/// Prepares every container of `spec`: `(init, main)`. ConfigMap and Secret volumes are written under `files`.
/// `image` replaces every container's image (the run's tag of the same image).
pub fn prepare(
    docker: &Docker,
    node_container: &str,
    spec: &PodSpec,
    ctx: &Context,
    host: &HostPaths,
    files: &Path,
    image: &str,
) -> Result<(Vec<Container>, Vec<Container>), Error> {
    if !spec.host_network {
        return Err(Error::Manifest("only hostNetwork pods are emulated".into()));
    }
    let volumes = volumes(spec, ctx, host, files)?;
    let one = |c: &Spec| container(docker, node_container, spec, c, ctx, &volumes, image);
    let init = spec
        .init_containers
        .iter()
        .map(one)
        .collect::<Result<_, _>>()?;
    let main = spec.containers.iter().map(one).collect::<Result<_, _>>()?;
    Ok((init, main))
}

/// Each volume as Docker mounts it: a volume name or a host directory.
fn volumes(
    spec: &PodSpec,
    ctx: &Context,
    host: &HostPaths,
    files: &Path,
) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for v in &spec.volumes {
        let missing = |what: &str| Error::Manifest(format!("volume {}: no {what}", v.name));
        let source = if let Some(h) = &v.host_path {
            host.get(&h.path)
                .cloned()
                .ok_or_else(|| missing("node volume"))?
        } else if let Some(cm) = &v.config_map {
            let data = ctx
                .config_maps
                .get(&cm.name)
                .ok_or_else(|| missing("ConfigMap"))?;
            let bytes = data
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect();
            write_dir(&files.join(&v.name), &bytes, &cm.items, cm.default_mode)?
        } else if let Some(s) = &v.secret {
            let data = ctx
                .secrets
                .get(&s.secret_name)
                .ok_or_else(|| missing("Secret"))?;
            write_dir(&files.join(&v.name), data, &s.items, s.default_mode)?
        } else {
            return Err(missing("source"));
        };
        out.insert(v.name.clone(), source);
    }
    Ok(out)
}

/// Writes a ConfigMap's or Secret's keys (or only its `items`) as files of `dir`, with the volume's `defaultMode`
/// or the item's `mode` (the kubelet's default 0644); the directory's path.
fn write_dir(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &[KeyToPath],
    default_mode: Option<u32>,
) -> Result<String, Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let items: Vec<(&str, &str, Option<u32>)> = if items.is_empty() {
        data.keys()
            .map(|k| (k.as_str(), k.as_str(), None))
            .collect()
    } else {
        items
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_str(), i.mode))
            .collect()
    };
    for (key, path, mode) in items {
        let bytes = data
            .get(key)
            .ok_or_else(|| Error::Manifest(format!("no key {key}")))?;
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| Error::io(&file, e))?;
        let mode = mode.or(default_mode).unwrap_or(0o644);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(&file, e))?;
    }
    Ok(dir.display().to_string())
}

fn container(
    docker: &Docker,
    node_container: &str,
    spec: &PodSpec,
    c: &Spec,
    ctx: &Context,
    volumes: &BTreeMap<String, String>,
    image: &str,
) -> Result<Container, Error> {
    let mut args: Vec<String> = docker.label().into();
    args.push(format!("--network=container:{node_container}"));
    if spec.host_pid {
        args.push(format!("--pid=container:{node_container}"));
    }
    if c.privileged() {
        args.extend(crate::docker::privileged_args());
    }
    if c.security_context
        .as_ref()
        .and_then(|s| s.read_only_root_filesystem)
        == Some(true)
    {
        args.push("--read-only".into());
    }
    let env = environment(c, ctx)?;
    for (k, v) in &env {
        args.push(format!("--env={k}={v}"));
    }
    for m in &c.volume_mounts {
        if m.sub_path.is_some() {
            return Err(Error::Manifest(format!("{}: subPath not emulated", c.name)));
        }
        let source = volumes
            .get(&m.name)
            .ok_or_else(|| Error::Manifest(format!("{}: no volume {}", c.name, m.name)))?;
        let ro = if m.read_only { ":ro" } else { "" };
        args.push(format!("--volume={source}:{}{ro}", m.mount_path));
    }
    let expand = |s: &String| expand(s, &env);
    let command: Vec<String> = c.command.iter().map(expand).collect();
    if let Some((first, more)) = command.split_first() {
        args.push(format!("--entrypoint={first}"));
        args.push(image.into());
        args.extend(more.iter().cloned());
    } else {
        args.push(image.into());
    }
    args.extend(c.args.iter().map(expand));
    Ok(Container {
        name: c.name.clone(),
        args,
    })
}

/// The container's environment, `valueFrom` resolved, in the manifest's order (a later variable may use an earlier
/// one in `$(VAR)`).
fn environment(c: &Spec, ctx: &Context) -> Result<Vec<(String, String)>, Error> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in &c.env {
        let missing =
            |obj: &str, key: &str| Error::Manifest(format!("env {}: {obj} has no {key}", e.name));
        let value = match e.source() {
            EnvSource::Value(v) => expand(v, &env),
            EnvSource::Field("spec.nodeName") => ctx.node_name.clone(),
            EnvSource::Field("status.hostIP" | "status.podIP") => ctx.host_ip.clone(),
            EnvSource::Field("metadata.namespace") => ctx.namespace.clone(),
            EnvSource::Field(other) => {
                return Err(Error::Manifest(format!("fieldRef {other} not emulated")))
            }
            EnvSource::ConfigMapKey { name, key } => ctx
                .config_maps
                .get(name)
                .and_then(|m| m.get(key))
                .cloned()
                .ok_or_else(|| missing(name, key))?,
            EnvSource::SecretKey { name, key } => ctx
                .secrets
                .get(name)
                .and_then(|m| m.get(key))
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .ok_or_else(|| missing(name, key))?,
        };
        env.push((e.name.clone(), value));
    }
    Ok(env)
}

/// The kubelet's `$(VAR)` expansion over the variables defined so far.
fn expand(s: &str, env: &[(String, String)]) -> String {
    crate::manifest::expand(s, |name| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

/// Runs an init container to completion; its output on failure.
pub fn run_init(docker: &Docker, c: &Container) -> Result<String, Error> {
    let mut args = vec!["run".to_string(), "--rm".into()];
    args.extend(c.args.iter().cloned());
    Ok(docker.cmd(&args)?)
}

/// Starts a main container detached, as `name`.
pub fn start(docker: &Docker, c: &Container, name: &str) -> Result<(), Error> {
    let mut args = vec!["run".to_string(), "-d".into(), format!("--name={name}")];
    args.extend(c.args.iter().cloned());
    docker.cmd(&args)?;
    Ok(())
}

/// A container probe's HTTP GET: `(host, port, path)`; host defaults to the pod's IP, here the node's.
pub fn http_probe(c: &Spec, which: &str, pod_ip: &str) -> Result<(String, u16, String), Error> {
    let probe = match which {
        "readinessProbe" => c.readiness_probe.as_ref(),
        "livenessProbe" => c.liveness_probe.as_ref(),
        "startupProbe" => c.startup_probe.as_ref(),
        _ => None,
    }
    .ok_or_else(|| Error::Manifest(format!("{}: no {which}", c.name)))?;
    let get = &probe.http_get;
    if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        return Err(Error::Manifest(format!(
            "{}: {which}: only HTTP is emulated",
            c.name
        )));
    }
    let host = get.host.clone().unwrap_or_else(|| pod_ip.to_string());
    Ok((host, get.port, get.path.clone()))
}

/// A per-node directory for the pod's ConfigMap and Secret files.
pub fn files_dir(work: &Path, node: &str, generation: u32) -> PathBuf {
    work.join(format!("{node}-pod{generation}"))
}
