fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No system protoc is assumed: use the one vendored on crates.io.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/seedkv.proto");
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    // The encoded descriptors, for gRPC reflection (served by the real build).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("seedkv.bin");
    tonic_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(&["proto/seedkv.proto"], &["proto"])?;
    // etcd's KV API, client side only: for measuring etcd with the same bench client.
    tonic_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd.proto"], &["proto"])?;
    Ok(())
}
