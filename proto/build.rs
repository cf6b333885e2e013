//! Compiles `aurae/v0/*.proto` and the vendored Kubernetes CRI (`cri/runtime/v1/api.proto`)
//! with protox (pure Rust; no system `protoc`) and generates tonic clients/servers plus the
//! encoded descriptor set served by gRPC reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "aurae/v0/runtime.proto",
        "aurae/v0/workloads.proto",
        "aurae/v0/node.proto",
        "aurae/v0/images.proto",
        "cri/runtime/v1/api.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("aurae_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
