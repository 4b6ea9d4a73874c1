//! Compiles the kubelet plugin protos in `proto/` into Rust with tonic, using `protox` (a pure
//! Rust protobuf compiler) so that building needs no system `protoc`.

const PROTOS: &[&str] = &[
    "proto/pluginregistration.proto",
    "proto/dra_v1.proto",
    "proto/dra_v1beta1.proto",
    "proto/dra_health_v1alpha1.proto",
    "proto/dra_health_v1.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
