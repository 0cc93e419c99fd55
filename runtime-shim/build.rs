//! Generates the CRI runtime.v1 client and server from the vendored upstream proto
//! (`proto/runtime/v1/api.proto`, see `hack/vendor-cri-api.sh`). Needs `protoc` (Debian
//! protobuf-compiler, installed by `make test`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runtime/v1/api.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/runtime/v1/api.proto"], &["proto"])?;
    Ok(())
}
