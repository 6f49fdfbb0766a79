//! Typed views of the DaemonSet, as far as trestle's manifests use it: each refuses fields it does not model
//! (`deny_unknown_fields`), so a change to the manifests that a kubelet emulation would not honour fails loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// `metadata`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    /// `name` (a pod template has none).
    #[serde(default)]
    pub name: String,
    /// `namespace`.
    #[serde(default)]
    pub namespace: String,
    /// `labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `annotations`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An `apps/v1` DaemonSet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DaemonSet {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: DaemonSetSpec,
}

impl DaemonSet {
    /// The pod template's spec.
    pub fn pod(&self) -> &PodSpec {
        &self.spec.template.spec
    }
}

/// A DaemonSet's `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DaemonSetSpec {
    /// `selector.matchLabels`.
    pub selector: LabelSelector,
    /// `template`.
    pub template: PodTemplate,
    /// `updateStrategy`.
    pub update_strategy: Option<UpdateStrategy>,
    /// `minReadySeconds`.
    pub min_ready_seconds: Option<i64>,
    /// `revisionHistoryLimit`.
    pub revision_history_limit: Option<i64>,
}

/// A label selector with `matchLabels` only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// `matchLabels`.
    pub match_labels: BTreeMap<String, String>,
}

/// A pod template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodTemplate {
    /// `metadata`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: PodSpec,
}

/// `updateStrategy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `type`: `RollingUpdate` or `OnDelete`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `rollingUpdate`.
    pub rolling_update: Option<RollingUpdate>,
}

/// `rollingUpdate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollingUpdate {
    /// `maxUnavailable`.
    pub max_unavailable: Option<IntOrString>,
    /// `maxSurge`.
    pub max_surge: Option<IntOrString>,
}

/// A number or a string such as `"10%"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string.
    String(String),
}

/// A pod's `spec`, as far as trestle's DaemonSet uses it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// `hostNetwork`.
    #[serde(default)]
    pub host_network: bool,
    /// `hostPID`.
    #[serde(default, rename = "hostPID")]
    pub host_pid: bool,
    /// `dnsPolicy`.
    pub dns_policy: Option<String>,
    /// `priorityClassName`.
    pub priority_class_name: Option<String>,
    /// `tolerations`.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// `nodeSelector`.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// `serviceAccountName`.
    pub service_account_name: Option<String>,
    /// `automountServiceAccountToken`.
    pub automount_service_account_token: Option<bool>,
    /// `terminationGracePeriodSeconds`.
    pub termination_grace_period_seconds: Option<i64>,
    /// `initContainers`, run in order to completion before the containers start.
    #[serde(default)]
    pub init_containers: Vec<Container>,
    /// `containers`.
    pub containers: Vec<Container>,
    /// `volumes`.
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

impl PodSpec {
    /// The init containers, then the containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers.iter().chain(&self.containers)
    }

    /// The (init) container `name`.
    pub fn container(&self, name: &str) -> Option<&Container> {
        self.all_containers().find(|c| c.name == name)
    }

    /// The volume `name`.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// Where the container's `path` is on the host: through the innermost mount covering it, when that mount's
    /// volume is a hostPath. `None` for a path on no mount or on a ConfigMap or Secret volume.
    pub fn host_path(&self, c: &Container, path: &str) -> Option<PathBuf> {
        let m = c.mount_covering(path)?;
        let host = &self.volume(&m.name)?.host_path.as_ref()?.path;
        let rest = Path::new(path).strip_prefix(&m.mount_path).ok()?;
        Some(if rest.as_os_str().is_empty() {
            PathBuf::from(host)
        } else {
            Path::new(host).join(rest)
        })
    }
}

/// A toleration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    /// `key`.
    pub key: Option<String>,
    /// `operator`: `Exists` or `Equal`.
    pub operator: Option<String>,
    /// `value`.
    pub value: Option<String>,
    /// `effect`.
    pub effect: Option<String>,
    /// `tolerationSeconds`.
    pub toleration_seconds: Option<i64>,
}

/// A container or init container.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `image`.
    pub image: String,
    /// `imagePullPolicy`.
    pub image_pull_policy: Option<String>,
    /// `command` (the image's entrypoint when empty).
    #[serde(default)]
    pub command: Vec<String>,
    /// `args`, with `$(VAR)` references to expand ([`expand`]).
    #[serde(default)]
    pub args: Vec<String>,
    /// `env`, in order (a value may refer to earlier variables).
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// `ports`.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// `volumeMounts`.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    /// `securityContext`.
    pub security_context: Option<SecurityContext>,
    /// `resources`.
    pub resources: Option<Resources>,
    /// `livenessProbe`.
    pub liveness_probe: Option<Probe>,
    /// `readinessProbe`.
    pub readiness_probe: Option<Probe>,
    /// `startupProbe`.
    pub startup_probe: Option<Probe>,
}

impl Container {
    /// `securityContext.privileged`.
    pub fn privileged(&self) -> bool {
        self.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    }

    /// The `--flag=value` and bare `--flag` items of `command` and `args`, as (flag with its dashes, value); a
    /// bare flag has no value.
    pub fn flags(&self) -> Vec<(&str, Option<&str>)> {
        self.command
            .iter()
            .chain(&self.args)
            .filter(|a| a.starts_with("--"))
            .map(|a| match a.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (a.as_str(), None),
            })
            .collect()
    }

    /// The value of the last `--flag=value` item (`flag` with its dashes); `Some("")` for a bare `--flag`.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        self.flags()
            .into_iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.unwrap_or(""))
    }

    /// The environment variable `name`.
    pub fn env_var(&self, name: &str) -> Option<&EnvVar> {
        self.env.iter().find(|e| e.name == name)
    }

    /// The innermost mount whose `mountPath` contains `path` (component-wise).
    pub fn mount_covering(&self, path: &str) -> Option<&VolumeMount> {
        self.volume_mounts
            .iter()
            .filter(|m| Path::new(path).starts_with(&m.mount_path))
            .max_by_key(|m| Path::new(&m.mount_path).components().count())
    }
}

/// An environment variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    /// `name`.
    pub name: String,
    /// `value` (may refer to earlier variables as `$(VAR)`).
    pub value: Option<String>,
    /// `valueFrom`.
    pub value_from: Option<EnvVarSource>,
}

/// Where a variable's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource<'a> {
    /// A literal `value`.
    Value(&'a str),
    /// `fieldRef.fieldPath`, e.g. `spec.nodeName`, `status.hostIP`.
    Field(&'a str),
    /// `configMapKeyRef`.
    ConfigMapKey {
        /// The ConfigMap.
        name: &'a str,
        /// Its key.
        key: &'a str,
    },
    /// `secretKeyRef`.
    SecretKey {
        /// The Secret.
        name: &'a str,
        /// Its key.
        key: &'a str,
    },
}

impl EnvVar {
    /// Its one source ([`daemon_set`] checked there is exactly one).
    pub fn source(&self) -> EnvSource<'_> {
        let from = self.value_from.as_ref();
        if let Some(f) = from.and_then(|f| f.field_ref.as_ref()) {
            EnvSource::Field(&f.field_path)
        } else if let Some(k) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
            EnvSource::ConfigMapKey {
                name: &k.name,
                key: &k.key,
            }
        } else if let Some(k) = from.and_then(|f| f.secret_key_ref.as_ref()) {
            EnvSource::SecretKey {
                name: &k.name,
                key: &k.key,
            }
        } else {
            EnvSource::Value(self.value.as_deref().unwrap_or(""))
        }
    }
}

/// `valueFrom`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarSource {
    /// `fieldRef`.
    pub field_ref: Option<FieldRef>,
    /// `configMapKeyRef`.
    pub config_map_key_ref: Option<KeyRef>,
    /// `secretKeyRef`.
    pub secret_key_ref: Option<KeyRef>,
}

/// `fieldRef`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FieldRef {
    /// `fieldPath`.
    pub field_path: String,
    /// `apiVersion`.
    pub api_version: Option<String>,
}

/// `configMapKeyRef` or `secretKeyRef`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    /// The object's name.
    pub name: String,
    /// The key.
    pub key: String,
    /// `optional`.
    pub optional: Option<bool>,
}

/// A container port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    /// `name`.
    pub name: Option<String>,
    /// `containerPort`.
    pub container_port: u16,
    /// `hostPort`.
    pub host_port: Option<u16>,
    /// `protocol`.
    pub protocol: Option<String>,
}

/// A volume mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// The volume's name.
    pub name: String,
    /// `mountPath`.
    pub mount_path: String,
    /// `readOnly`.
    #[serde(default)]
    pub read_only: bool,
    /// `mountPropagation`: `None`, `HostToContainer` or `Bidirectional`.
    pub mount_propagation: Option<String>,
    /// `subPath`.
    pub sub_path: Option<String>,
}

/// A container's `securityContext`, as far as used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContext {
    /// `privileged`.
    pub privileged: Option<bool>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: Option<bool>,
}

/// `resources` (quantities as written).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `requests`.
    #[serde(default)]
    pub requests: BTreeMap<String, Value>,
    /// `limits`.
    #[serde(default)]
    pub limits: BTreeMap<String, Value>,
}

/// A probe; only `httpGet` ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    /// `httpGet`.
    pub http_get: HttpGet,
    /// `initialDelaySeconds`.
    pub initial_delay_seconds: Option<u32>,
    /// `periodSeconds`.
    pub period_seconds: Option<u32>,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<u32>,
    /// `failureThreshold`.
    pub failure_threshold: Option<u32>,
    /// `successThreshold`.
    pub success_threshold: Option<u32>,
}

/// `httpGet`, with a numeric port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGet {
    /// `path`.
    pub path: String,
    /// `port`.
    pub port: u16,
    /// `host` (the pod's IP when unset).
    pub host: Option<String>,
    /// `scheme`.
    pub scheme: Option<String>,
}

/// A volume: exactly one of hostPath, configMap, secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    /// `name`.
    pub name: String,
    /// `hostPath`.
    pub host_path: Option<HostPathVolume>,
    /// `configMap`.
    pub config_map: Option<ConfigMapVolume>,
    /// `secret`.
    pub secret: Option<SecretVolume>,
}

/// `hostPath`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathVolume {
    /// `path`.
    pub path: String,
    /// `type`: `DirectoryOrCreate`, `Directory`, `FileOrCreate`, ... (unchecked when unset).
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `configMap`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapVolume {
    /// The ConfigMap.
    pub name: String,
    /// `items` (every key when empty).
    #[serde(default)]
    pub items: Vec<KeyToPath>,
    /// `defaultMode`.
    pub default_mode: Option<u32>,
    /// `optional`.
    pub optional: Option<bool>,
}

/// `secret`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretVolume {
    /// The Secret.
    pub secret_name: String,
    /// `items` (every key when empty).
    #[serde(default)]
    pub items: Vec<KeyToPath>,
    /// `defaultMode`.
    pub default_mode: Option<u32>,
    /// `optional`.
    pub optional: Option<bool>,
}

/// An item of a ConfigMap or Secret volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyToPath {
    /// The key.
    pub key: String,
    /// The file's path inside the volume.
    pub path: String,
    /// `mode`.
    pub mode: Option<u32>,
}
