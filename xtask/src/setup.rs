//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks. Idempotent: each step
//! checks first and says what it does.

use std::process::Command;

use anyhow::{bail, Result};

use crate::run as sh;

/// Debian's rustc-web, which has the prebuilt `core` for bpfel-unknown-none.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// The bpf-linker version that works with LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: the eBPF toolchain, bpftool, and the tools the tests drive.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "bpftool",
    "iproute2",
    "util-linux",
    "curl",
    "python3",
];

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

/// Runs every setup step.
pub fn run() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages present");
    } else {
        eprintln!("setup: installing apt packages: {}", missing.join(" "));
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
    }
    if bpf_linker_ok() {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes)");
        sh(Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]))?;
        if !bpf_linker_ok() {
            bail!("bpf-linker {BPF_LINKER_VERSION} still not on PATH after installing (is ~/.cargo/bin on PATH?)");
        }
    }
    if !std::path::Path::new(DEBIAN_RUSTC).exists() {
        bail!("{DEBIAN_RUSTC} missing after installing rustc-web");
    }
    Ok(())
}
