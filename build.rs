//! Compiles the gRPC contract and the Kafka record schema. protoc comes from the
//! `protoc-bin-vendored` crate so a fresh machine needs nothing installed.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = out.join("untaken_descriptor.bin");
    if env::var_os("PROTOC").is_none() {
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos = ["proto/untaken/v1/mirror.proto", "proto/untaken/v1/pair.proto", "proto/untaken/v1/grade.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["proto"])?;
    let set = std::fs::read(&descriptor)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        // A newer writer may add fields (a newer sidecar's pair records): an older
        // reader ignores them instead of rejecting the record, as protobuf readers do.
        .ignore_unknown_fields()
        .build(&[".untaken.v1"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
