//! Embeds the eBPF object built by `cargo xtask build-ebpf`, and gives `iamlet --version` the
//! source revision (`IAMLET_REVISION`, set by `cargo xtask`).
//!
//! The object is built in its own cargo invocation (Debian's rustc with the prebuilt core for
//! bpfel-unknown-none), so this script only finds it and hands its path to `include_bytes!`.
//! `IAMLET_EBPF_OBJECT` overrides the default location.
//!
//! When the object is missing (a fresh clone, `cargo check`, rust-analyzer, clippy), an empty
//! stub is embedded instead, with a warning: everything type-checks and the unit tests run, and
//! the agent refuses to start with that stub, saying to run `cargo xtask build-ebpf`.

use std::path::PathBuf;

fn main() {
    // `iamlet --version` names the source revision as well (`cargo xtask` sets it).
    println!("cargo:rerun-if-env-changed=IAMLET_REVISION");
    let revision = std::env::var("IAMLET_REVISION").unwrap_or_else(|_| "unknown".to_owned());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=IAMLET_VERSION_TEXT={version} (revision {revision})");
    println!("cargo:rerun-if-env-changed=IAMLET_EBPF_OBJECT");
    let path = if let Some(p) = std::env::var_os("IAMLET_EBPF_OBJECT") {
        PathBuf::from(p)
    } else {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let workspace = manifest.parent().map(PathBuf::from).unwrap_or(manifest);
        workspace.join("target/ebpf/bpfel-unknown-none/release/agent-ebpf")
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if path.is_file() {
        println!("cargo:rustc-env=IAMLET_EBPF_OBJECT={}", path.display());
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let stub = out.join("agent-ebpf.stub");
    if let Err(e) = std::fs::write(&stub, b"") {
        eprintln!("error: cannot write the eBPF stub {}: {e}", stub.display());
        std::process::exit(1);
    }
    println!(
        "cargo:warning=the eBPF object {} is missing: embedding an empty stub (the agent will refuse to start). Run `cargo xtask build-ebpf` first.",
        path.display()
    );
    println!("cargo:rustc-env=IAMLET_EBPF_OBJECT={}", stub.display());
}
