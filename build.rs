//! Generates the CRI messages and the tonic client ckvault uses to call the runtime from
//! proto/cri-subset.proto, with protox (a pure-Rust protobuf compiler: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri-subset.proto");
    let descriptors = protox::compile(["proto/cri-subset.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
