//! Compiles the vendored CRI proto (proto/v1.proto) with a pure-Rust protobuf compiler, so the
//! build needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/v1.proto");
    // The git revision for criguard_build_info, "unknown" outside a git checkout.
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CRIGUARD_REVISION={revision}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    let descriptors = protox::compile(["proto/v1.proto"], ["proto"])?;
    // The descriptors themselves, for decoding any CRI message into proto JSON at run time.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cri_descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // The fake runtime answers only what it implements; the rest is UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
