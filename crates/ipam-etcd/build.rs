//! Generates the etcd client from `proto/` with protox (a protobuf compiler written in Rust):
//! the `etcd-client` crate needs a system `protoc` to build, which a fresh machine lacks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/etcd/rpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
