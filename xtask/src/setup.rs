//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks. Idempotent: each step
//! checks first and says what it does. Besides the toolchain and tools, it installs the AWS
//! SDK clients the integration tests run in fake pods: boto3 in a venv (`target/sdk/venv`)
//! and the JS SDK in `tests/js/node_modules`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run as sh;

/// Debian's rustc-web, which has the prebuilt `core` for bpfel-unknown-none.
pub(crate) const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
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
    "python3-venv",
    // The bypass tests: a pod's own NAT rule (iptables-nft).
    "iptables",
    // `cargo xtask bench imds`: load generator, and the baseline server.
    "wrk",
    "nginx-light",
    // `cargo xtask bench requests`: instructions and allocations per request (callgrind).
    "valgrind",
    // `cargo xtask vm-test`: the emulator virtme-ng drives, and what its guest init needs.
    "qemu-system-x86",
    "busybox-static",
    "binutils",
    "kmod",
    // The kernel-refusal test: a seccomp filter answering one bpf(2) command with EINVAL.
    "python3-seccomp",
    // `promtool check metrics` on a real scrape (the package's server is never started).
    "prometheus",
    // `cargo xtask image`: the image is made with umoci and archived with skopeo; its CA
    // bundle is Debian's; the `image::` tests run it with runc.
    "umoci",
    "skopeo",
    "ca-certificates",
    "runc",
];

/// The Python the SDK venv is made from (Debian's).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// Oldest Node.js major the pinned AWS SDK for JavaScript supports.
const NODE_MIN_MAJOR: u32 = 20;

/// The venv with boto3 for the SDK client tests.
pub(crate) fn sdk_venv(root: &Path) -> PathBuf {
    root.join("target/sdk/venv")
}

/// Its Python (passed to the tests as `IAMLET_PYTHON`).
pub(crate) fn sdk_python(root: &Path) -> PathBuf {
    sdk_venv(root).join("bin/python")
}

/// The npm package of the JS SDK client (passed to the tests as `IAMLET_JS_DIR`).
pub(crate) fn js_dir(root: &Path) -> PathBuf {
    root.join("tests/js")
}

/// Whether `stamp` exists and holds exactly the bytes of `source`.
fn stamp_matches(stamp: &Path, source: &Path) -> Result<bool> {
    let want = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    Ok(std::fs::read(stamp).is_ok_and(|have| have == want))
}

/// The Python venv `target/sdk/venv` with the pinned boto3 of `tests/python/requirements.txt`.
fn sdk_python_venv(root: &Path) -> Result<()> {
    python_venv(
        &sdk_venv(root),
        &root.join("tests/python/requirements.txt"),
        "the SDK clients",
    )
}

/// The Python venv `venv` with the pinned packages of `requirements`; made anew when that file
/// differs from the copy kept in the venv as a stamp.
pub(crate) fn python_venv(venv: &Path, requirements: &Path, what: &str) -> Result<()> {
    let python = venv.join("bin/python");
    let stamp = venv.join("iamlet-requirements.txt");
    if python.is_file() && stamp_matches(&stamp, requirements)? {
        eprintln!(
            "setup: Python venv for {what} up to date ({})",
            venv.display()
        );
        return Ok(());
    }
    eprintln!(
        "setup: creating the Python venv {} with {}",
        venv.display(),
        requirements.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    sh(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(venv))?;
    sh(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--progress-bar", "off", "-r"])
        .arg(requirements))?;
    std::fs::copy(requirements, &stamp).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// Major version of the `node` on PATH, if any.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout);
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// `tests/js/node_modules` from the committed `package-lock.json` (`npm ci`); installed anew
/// when the lock differs from the copy kept in `node_modules` as a stamp.
fn sdk_js_modules(root: &Path) -> Result<()> {
    let dir = js_dir(root);
    let lock = dir.join("package-lock.json");
    let stamp = dir.join("node_modules/.iamlet-package-lock.json");
    if stamp_matches(&stamp, &lock)? {
        eprintln!(
            "setup: npm packages for the JS SDK client up to date ({}/node_modules)",
            dir.display()
        );
        return Ok(());
    }
    match node_major() {
        Some(major) if major >= NODE_MIN_MAJOR => {}
        Some(major) => bail!(
            "Node.js {major} is too old for the JS SDK client: it needs {NODE_MIN_MAJOR} or newer"
        ),
        None => bail!("Node.js (node, npm) not found on PATH: the JS SDK client needs Node.js {NODE_MIN_MAJOR} or newer"),
    }
    eprintln!(
        "setup: installing the npm packages of {} (npm ci)",
        dir.display()
    );
    sh(Command::new("npm")
        .current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund"]))?;
    std::fs::copy(&lock, &stamp).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

/// Debian's policy hook: while it answers 101, maintainer scripts start no service.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Keeps package installs from starting services: writes a `policy-rc.d` that denies them
/// unless one is already in place, and removes it again on drop.
struct NoServiceStarts {
    written: bool,
}

impl NoServiceStarts {
    fn new() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(NoServiceStarts { written: false });
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# written by cargo xtask setup for one apt-get install\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(
            POLICY_RC_D,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(NoServiceStarts { written: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.written {
            if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
                eprintln!("setup: could not remove {POLICY_RC_D}: {e}");
            }
        }
    }
}

/// Runs every setup step; `root` is the workspace.
pub(crate) fn run(root: &Path) -> Result<()> {
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
        // Packages with a service (nginx, prometheus) are installed for their programs only:
        // no service may start on this machine.
        let _no_services = NoServiceStarts::new()?;
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
    sdk_python_venv(root)?;
    sdk_js_modules(root)?;
    crate::helm::ensure(root, &sdk_python(root))?;
    Ok(())
}
