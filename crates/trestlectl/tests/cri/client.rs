//! gRPC over containerd's unix socket, one unary call per CRI method, no code generation.

use super::msg::*;
use std::path::Path;
use tonic::codec::ProstCodec;
use tonic::transport::{Channel, Endpoint, Uri};

/// A CRI RuntimeService client.
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
}

impl Client {
    /// Connects to the CRI socket at `path`.
    pub async fn connect(path: &Path) -> Client {
        let path = path.to_owned();
        // The URI is required by the API and ignored by the connector.
        let channel = Endpoint::try_from("http://[::1]:1")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .expect("connect to the CRI socket");
        Client {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn call<Q, R>(&mut self, method: &'static str, req: Q) -> R
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.expect("CRI channel ready");
        let path =
            http::uri::PathAndQuery::try_from(format!("/runtime.v1.RuntimeService/{method}"))
                .unwrap();
        self.grpc
            .unary(
                tonic::Request::new(req),
                path,
                ProstCodec::<Q, R>::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("CRI {method}: {e}"))
            .into_inner()
    }

    /// `Version`.
    pub async fn version(&mut self) -> VersionResponse {
        self.call(
            "Version",
            VersionRequest {
                version: "v1".into(),
            },
        )
        .await
    }

    /// `RunPodSandbox`: the sandbox ID.
    pub async fn run_pod_sandbox(&mut self, config: PodSandboxConfig) -> String {
        let r: RunPodSandboxResponse = self
            .call(
                "RunPodSandbox",
                RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                },
            )
            .await;
        r.pod_sandbox_id
    }

    /// The pod's IP from `PodSandboxStatus`.
    pub async fn pod_ip(&mut self, id: &str) -> String {
        let r: PodSandboxStatusResponse = self
            .call(
                "PodSandboxStatus",
                PodSandboxStatusRequest {
                    pod_sandbox_id: id.into(),
                    verbose: false,
                },
            )
            .await;
        r.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// `CreateContainer` in a sandbox: the container ID.
    pub async fn create_container(
        &mut self,
        sandbox: &str,
        sandbox_config: PodSandboxConfig,
        name: &str,
        command: &[&str],
    ) -> String {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "localhost/trestle-bb:latest".into(),
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
        };
        let r: CreateContainerResponse = self
            .call(
                "CreateContainer",
                CreateContainerRequest {
                    pod_sandbox_id: sandbox.into(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                },
            )
            .await;
        r.container_id
    }

    /// `StartContainer`.
    pub async fn start_container(&mut self, id: &str) {
        let _: Empty = self
            .call(
                "StartContainer",
                ContainerIdRequest {
                    container_id: id.into(),
                },
            )
            .await;
    }

    /// `ExecSync`: stdout, asserting exit 0.
    pub async fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> String {
        let r: ExecSyncResponse = self
            .call(
                "ExecSync",
                ExecSyncRequest {
                    container_id: id.into(),
                    cmd: cmd.iter().map(|s| s.to_string()).collect(),
                    timeout: 10,
                },
            )
            .await;
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert_eq!(
            r.exit_code,
            0,
            "{cmd:?}: {out}{}",
            String::from_utf8_lossy(&r.stderr)
        );
        out
    }

    /// `StopContainer`.
    pub async fn stop_container(&mut self, id: &str) {
        let _: Empty = self
            .call(
                "StopContainer",
                StopContainerRequest {
                    container_id: id.into(),
                    timeout: 0,
                },
            )
            .await;
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&mut self, id: &str) {
        let _: Empty = self
            .call(
                "RemoveContainer",
                ContainerIdRequest {
                    container_id: id.into(),
                },
            )
            .await;
    }

    /// `StopPodSandbox`: containerd calls CNI DEL here.
    pub async fn stop_pod_sandbox(&mut self, id: &str) {
        let _: Empty = self
            .call(
                "StopPodSandbox",
                SandboxIdRequest {
                    pod_sandbox_id: id.into(),
                },
            )
            .await;
    }

    /// `RemovePodSandbox`.
    pub async fn remove_pod_sandbox(&mut self, id: &str) {
        let _: Empty = self
            .call(
                "RemovePodSandbox",
                SandboxIdRequest {
                    pod_sandbox_id: id.into(),
                },
            )
            .await;
    }
}
