//! Project tasks: `cargo xtask <setup|build-ebpf|test|demo|bench>`.
//!
//! * `setup` installs what a fresh Debian 12 machine lacks (idempotent; says what it does).
//! * `build-ebpf` builds `agent-ebpf` for bpfel-unknown-none with BTF, for `iamlet` to embed.
//! * `test` runs setup, build-ebpf, fmt --check, clippy, unit tests, the image, the privileged
//!   integration tests (serially), the fuzz targets briefly, the demo, and the kernel matrix.
//! * `demo` runs the main job locally on fake pods.
//! * `bench` runs a benchmark, side by side with its baseline.
//! * `image` builds the OCI image archive of the release agent (see `image`).
//! * `fuzz` builds and runs the fuzz targets (see `fuzz`).
//! * `vm-test` runs the kernel-sensitive integration tests on the EKS node kernels, in VMs
//!   (see `vm`).

mod fuzz;
mod helm;
mod image;
mod setup;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain and tools this project needs (apt, bpf-linker, SDK clients).
    Setup,
    /// Build the eBPF object (target/ebpf/bpfel-unknown-none/release/agent-ebpf).
    BuildEbpf,
    /// Everything CI runs: setup, build-ebpf, fmt, clippy, unit tests, the image, the
    /// privileged tests, the fuzz targets, the demo and the kernel matrix (`vm-test --kernel
    /// all`).
    Test {
        /// Only run integration tests whose name contains this; a test's name is its module
        /// path, so `kube_churn::` runs one area (see tests/tests/integration/main.rs).
        #[arg(long)]
        filter: Option<String>,
        /// Skip setup (the machine is known to be ready).
        #[arg(long)]
        no_setup: bool,
    },
    /// Make fake pods and show what each one gets through the redirect.
    Demo,
    /// Build the OCI image archive of the release agent (target/image/iamlet-<version>.tar).
    Image {
        /// `org.opencontainers.image.source` (default: the URL of git's `origin`, if any).
        #[arg(long)]
        source: Option<String>,
    },
    /// Build and run the fuzz targets of agent/fuzz from their committed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30, conflicts_with = "runs")]
        seconds: u64,
        /// Executions per target (instead of --seconds).
        #[arg(long)]
        runs: Option<u64>,
        /// Only these targets.
        targets: Vec<String>,
    },
    /// Run the kernel-sensitive integration tests on other kernels, each in a VM.
    VmTest {
        /// Which kernel (5.10, 6.1, 6.12) or `all`.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Only integration tests whose name contains one of these (default: the
        /// kernel-sensitive set, see xtask/src/vm/mod.rs).
        filters: Vec<String>,
    },
    /// Run a benchmark side by side with its baseline.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        which: Bench,
        /// `imds` and `requests`: an older build of the agent to measure side by side (same
        /// rounds).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// `imds` only: `shared` (wrk and the servers on every CPU) or `split` (wrk on CPU 0,
        /// each server on CPU 1).
        #[arg(long, default_value = "shared")]
        cpus: String,
        /// `imds` only: wrk's threads at 8 connections (default 2, and never more than the
        /// CPUs wrk may use). With 1 and shared CPUs, one CPU is left to the servers.
        #[arg(long)]
        wrk_threads: Option<u32>,
        /// `imds` only: alternating rounds (default 3). With shared CPUs a round's p99 at 8
        /// connections moves several-fold from one round to the next; more rounds steady the
        /// median.
        #[arg(long)]
        rounds: Option<u32>,
        /// `imds` only: threads that spin while wrk runs, as pods keeping the node's CPUs
        /// busy (default 0).
        #[arg(long)]
        busy_cpus: Option<u32>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// `connect()` latency with and without iamlet's programs attached.
    Connect,
    /// IMDS requests/s and latency (wrk in a pod), iamlet against nginx serving the same bytes.
    Imds,
    /// The agent's user-space instructions and allocations per request of each route
    /// (callgrind), against `--baseline` if given.
    Requests,
    /// Agent memory with 250 pods / 100 roles in its index, against the same agent with none.
    Memory,
    /// One pod attacks the proxy while another asks for credentials, against no attack.
    Abuse,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.cmd {
        Cmd::Setup => setup::run(&root),
        Cmd::BuildEbpf => build_ebpf(&root),
        Cmd::Test { filter, no_setup } => test(&root, filter.as_deref(), no_setup),
        Cmd::Fuzz {
            seconds,
            runs,
            targets,
        } => {
            let budget = match runs {
                Some(n) => fuzz::Budget::Runs(n),
                None => fuzz::Budget::Seconds(seconds),
            };
            fuzz::run(&root, fuzz::Build::Thorough, budget, &targets)
        }
        Cmd::Image { source } => {
            setup::run(&root)?;
            image::build(&root, &image::Options { source }).map(|_| ())
        }
        Cmd::Demo => {
            setup::run(&root)?;
            build_ebpf(&root)?;
            build_agent(&root)?;
            run_tests_bin(&root, "iamlet-demo", &[])
        }
        Cmd::VmTest { kernel, filters } => {
            let kernels = vm::kernels::select(&kernel)?;
            setup::run(&root)?;
            let outcomes = vm_test(&root, &kernels, &filters)?;
            vm::report(&outcomes)
        }
        Cmd::Bench {
            which,
            baseline,
            cpus,
            wrk_threads,
            rounds,
            busy_cpus,
        } => {
            if let Some(b) = &baseline {
                std::env::set_var("IAMLET_BASELINE_BIN", b);
            }
            if let Some(n) = wrk_threads {
                std::env::set_var("IAMLET_BENCH_WRK_THREADS", n.to_string());
            }
            if let Some(n) = rounds {
                std::env::set_var("IAMLET_BENCH_ROUNDS", n.to_string());
            }
            if let Some(n) = busy_cpus {
                std::env::set_var("IAMLET_BENCH_BUSY_CPUS", n.to_string());
            }
            std::env::set_var("IAMLET_BENCH_CPUS", cpus);
            setup::run(&root)?;
            build_ebpf(&root)?;
            build_agent(&root)?;
            match which {
                Bench::Connect => run_tests_bin(&root, "iamlet-bench", &["connect"]),
                // Throughput and memory are measured on the optimised agent.
                Bench::Imds | Bench::Requests | Bench::Memory | Bench::Abuse => {
                    run(cargo(&root).args(["build", "--locked", "--release", "-p", "iamlet"]))?;
                    let arg = match which {
                        Bench::Imds => "imds",
                        Bench::Requests => "requests",
                        Bench::Memory => "memory",
                        _ => "abuse",
                    };
                    run_tests_bin_with(
                        &root,
                        "iamlet-bench",
                        &[arg],
                        &root.join("target/release/iamlet"),
                    )
                }
            }
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").context("run me through `cargo xtask`")?;
    Ok(Path::new(&manifest)
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf())
}

/// Runs a command, echoing it, and fails on a non-zero exit.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", display(cmd));
    }
    Ok(())
}

/// SHA-256 of a file in hex, if it can be read.
pub(crate) fn sha256(path: &Path) -> Option<String> {
    let out = Command::new("sha256sum").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().map(str::to_owned)
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    // The agent reports the revision it was built from (`iamlet_build_info`).
    if let Some(revision) = source_revision(root) {
        cmd.env("IAMLET_REVISION", revision);
    }
    cmd
}

/// The commit checked out in `root` (12 hex digits), if it is a git work tree.
fn source_revision(root: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let revision = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success()
        && revision.bytes().all(|b| b.is_ascii_hexdigit())
        && !revision.is_empty())
    .then_some(revision)
}

/// Path of the eBPF object `build-ebpf` produces (also the default `iamlet` embeds).
pub(crate) fn ebpf_object(root: &Path) -> PathBuf {
    root.join("target/ebpf/bpfel-unknown-none/release/agent-ebpf")
}

fn build_ebpf(root: &Path) -> Result<()> {
    // Debian's rustc-web ships the prebuilt `core` for bpfel-unknown-none; aya-ebpf needs
    // asm_experimental_arch, unlocked for that crate alone. BTF makes the maps pretty-print.
    let mut cmd = cargo(root);
    cmd.env("RUSTC", setup::DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--locked",
            "--package",
            "agent-ebpf",
            "--target",
            "bpfel-unknown-none",
            "--release",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf"));
    run(&mut cmd)?;
    let obj = ebpf_object(root);
    if !obj.is_file() {
        bail!("build succeeded but {} is missing", obj.display());
    }
    eprintln!("eBPF object: {}", obj.display());
    Ok(())
}

fn build_agent(root: &Path) -> Result<()> {
    run(cargo(root).args([
        "build",
        "--locked",
        "--package",
        "iamlet",
        "--package",
        "iamlet-tests",
        "--bins",
    ]))
}

/// Where the tests find the AWS SDK clients `setup` installed and `build_agent` built.
fn sdk_client_env(root: &Path, cmd: &mut Command) {
    cmd.env("IAMLET_PYTHON", setup::sdk_python(root))
        .env("IAMLET_JS_DIR", setup::js_dir(root))
        .env(
            "IAMLET_RUST_CLIENT",
            root.join("target/debug/imds-client-rs"),
        )
        .env("IAMLET_HELM", helm::helm_path(root));
}

fn run_tests_bin(root: &Path, bin: &str, args: &[&str]) -> Result<()> {
    run_tests_bin_with(root, bin, args, &root.join("target/debug/iamlet"))
}

/// Like [`run_tests_bin`], with the agent binary `iamlet` given.
fn run_tests_bin_with(root: &Path, bin: &str, args: &[&str], iamlet: &Path) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args([
        "run",
        "--locked",
        "--quiet",
        "--package",
        "iamlet-tests",
        "--bin",
        bin,
        "--",
    ])
    .args(args)
    .env("IAMLET_BIN", iamlet);
    sdk_client_env(root, &mut cmd);
    run(&mut cmd)
}

fn test(root: &Path, filter: Option<&str>, no_setup: bool) -> Result<()> {
    if !no_setup {
        setup::run(root)?;
    }
    build_ebpf(root)?;
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    run(cargo(root).args([
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests (host only, unprivileged), with the fuzz entry points replaying their corpus.
    run(cargo(root).args([
        "test",
        "--locked",
        "--package",
        "agent-common",
        "--package",
        "iamlet",
        "--package",
        "iamlet-sys",
        "--package",
        "xtask",
        "--features",
        "iamlet/fuzzing",
    ]))?;
    build_agent(root)?;
    // Privileged integration tests: real programs, cgroups and namespaces, one at a time.
    let suite = |image: Option<&Path>, args: &[&str]| {
        let mut cmd = cargo(root);
        cmd.args(["test", "--locked", "--package", "iamlet-tests", "--"])
            .args(["--test-threads=1"])
            .args(args)
            .env("IAMLET_BIN", root.join("target/debug/iamlet"))
            // A privileged test that cannot run fails here instead of skipping.
            .env("IAMLET_TESTS_STRICT", "1");
        if let Some(archive) = image {
            cmd.env("IAMLET_IMAGE", archive);
        }
        sdk_client_env(root, &mut cmd);
        run(&mut cmd)
    };
    if let Some(f) = filter {
        // The image the `image::` tests run with runc (a release build: only when they run).
        let image = if f.contains("image") || "image::".contains(f) {
            Some(image::build(root, &image::Options { source: None })?)
        } else {
            None
        };
        return suite(image.as_deref(), &[f]);
    }
    suite(None, &["--skip", "image::"])?;
    // The image's release build runs while the fuzz targets and the demo do (neither is
    // timed against a limit), then the `image::` tests run it with runc.
    let image = std::thread::scope(|scope| -> Result<PathBuf> {
        let image = scope.spawn(|| image::build(root, &image::Options { source: None }));
        // Every fuzz target, briefly, from its committed corpus.
        let fuzzed = fuzz::run(
            root,
            fuzz::Build::Quick,
            fuzz::Budget::Seconds(FUZZ_SECONDS_IN_CI),
            &[],
        );
        // The README's first command must keep working: run the demo too.
        let demo = fuzzed.and_then(|()| run_tests_bin(root, "iamlet-demo", &[]));
        let image = image
            .join()
            .map_err(|_| anyhow::anyhow!("the image build panicked"))?;
        demo?;
        image
    })?;
    suite(Some(&image), &["image::"])?;
    // The kernel-sensitive tests on the kernels EKS nodes run, each in a VM.
    let outcomes = vm_test(root, vm::kernels::KERNELS, &[])?;
    vm::report(&outcomes)
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS_IN_CI: u64 = 10;

/// Builds the agent and the integration-test binary and runs `filters` (or the
/// kernel-sensitive set) on each of `kernels` in a VM.
fn vm_test(
    root: &Path,
    kernels: &[vm::kernels::Kernel],
    filters: &[String],
) -> Result<Vec<vm::Outcome>> {
    setup::python_venv(&vm::venv(root), &vm::requirements(root), "virtme-ng")?;
    build_ebpf(root)?;
    build_agent(root)?;
    let binary = integration_test_binary(root)?;
    let mut probe = Command::new("true");
    sdk_client_env(root, &mut probe);
    let mut env: Vec<(String, String)> = probe
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
        .collect();
    env.push((
        "IAMLET_BIN".to_owned(),
        root.join("target/debug/iamlet").display().to_string(),
    ));
    env.push(("IAMLET_TESTS_STRICT".to_owned(), "1".to_owned()));
    for (var, bin) in [
        ("IAMLET_FAKE_KUBE_APISERVER", "fake-kube-apiserver"),
        ("IAMLET_STS_PROXY", "sts-fault-proxy"),
    ] {
        env.push((
            var.to_owned(),
            root.join("target/debug").join(bin).display().to_string(),
        ));
    }
    let filters: Vec<String> = if filters.is_empty() {
        vm::KERNEL_TESTS.iter().map(|f| (*f).to_owned()).collect()
    } else {
        filters.to_vec()
    };
    vm::run(root, &binary, &env, kernels, &filters)
}

/// Builds the integration tests (`tests/tests/integration`) and gives their binary's path.
fn integration_test_binary(root: &Path) -> Result<PathBuf> {
    let out = cargo(root)
        .args([
            "test",
            "--locked",
            "--no-run",
            "--package",
            "iamlet-tests",
            "--test",
            "integration",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the integration tests")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "integration")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for the integration tests")
}
