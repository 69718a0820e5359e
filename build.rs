//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and feeds the
//! descriptors to tonic's code generator. The encoded descriptor set is also
//! written to `OUT_DIR` so the daemon can serve gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/assetd/v1/assets.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("assetd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
