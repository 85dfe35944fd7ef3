//! Compiles the vendored CRI proto (proto/v1.proto) with a pure-Rust protobuf compiler, so the
//! build needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/v1.proto");
    let descriptors = protox::compile(["proto/v1.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // The fake runtime answers only what it implements; the rest is UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
