//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is built in its own cargo invocation (Debian's rustc with the prebuilt core for
//! bpfel-unknown-none), so this script only finds it and hands its path to `include_bytes!`.
//! `IAMLET_EBPF_OBJECT` overrides the default location.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=IAMLET_EBPF_OBJECT");
    let path = match std::env::var_os("IAMLET_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            let workspace = manifest.parent().map(PathBuf::from).unwrap_or(manifest);
            workspace.join("target/ebpf/bpfel-unknown-none/release/agent-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        eprintln!(
            "error: iamlet embeds its eBPF object, which was not found at {}.\n\
             Build it first with `cargo xtask build-ebpf` (or point IAMLET_EBPF_OBJECT at it).",
            path.display()
        );
        std::process::exit(1);
    }
    println!("cargo:rustc-env=IAMLET_EBPF_OBJECT={}", path.display());
}
