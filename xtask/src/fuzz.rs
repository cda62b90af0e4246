//! `cargo xtask fuzz [--seconds N | --runs N] [TARGET...]`: builds the libFuzzer targets of
//! `agent/fuzz` on the stable toolchain (coverage through `-C passes=sancov-module`, the way
//! cargo-fuzz does without its nightly-only sanitizer flags) and runs each from its committed
//! corpus (`agent/fuzz/corpus/<target>`, read only: new inputs go to `target/fuzz/corpus`).
//! Prints executions per target and a `test result:` line; a crash fails with the input
//! saved under `target/fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The targets, as in `agent/fuzz/Cargo.toml` and `iamlet::fuzzing::TARGETS`.
pub(crate) const TARGETS: &[&str] = &[
    "paths",
    "token",
    "bindings",
    "role_arn",
    "cgroup_pod",
    "annotations",
    "time",
    "connect",
    "egress",
];

/// Longest input per target (libFuzzer's `-max_len`): 4 KiB, but less where long inputs only
/// make each run slower without reaching new code. Each `annotations` input compiles a
/// namespace regex in time that grows with its length, and 256 bytes hold six annotations
/// with role ARNs (at most ~100 characters) and patterns; the size limit on a compiled
/// pattern is unit-tested on its own.
fn max_len(target: &str) -> usize {
    match target {
        "annotations" => 256,
        "bindings" => 1024,
        _ => 4096,
    }
}

/// Coverage instrumentation for libFuzzer, on stable (applied to the target only, not to
/// build scripts and proc macros, by building for an explicit `--target`).
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks";

/// How the targets are built.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Build {
    /// Profile `fuzz`: optimised, every crate instrumented (coverage inside the YAML and
    /// regex parsers guides the fuzzer too). For `cargo xtask fuzz`, runs of any length.
    Thorough,
    /// Profile `fuzz-quick`: only the workspace's own crates are instrumented (through
    /// [`WORKSPACE_WRAPPER`]) and the dependencies are built as for a debug build without
    /// debug info. About as many executions per second on these targets, in less than half
    /// the build time (5.5 against about 12 minutes on the 2-core development machine): for
    /// the brief run in `cargo xtask test`.
    Quick,
}

impl Build {
    fn profile(self) -> &'static str {
        match self {
            Build::Thorough => "fuzz",
            Build::Quick => "fuzz-quick",
        }
    }
}

/// `RUSTC_WORKSPACE_WRAPPER` of a [`Build::Quick`] build (cargo runs it for the workspace's
/// crates only, as `WRAPPER RUSTC ARGS...`): adds [`RUSTFLAGS`] to a crate's compilation, not
/// to a build script's nor to cargo's probes of the compiler. Cargo does not see the flags it
/// adds: after changing [`RUSTFLAGS`], remove `target/fuzz`.
const WORKSPACE_WRAPPER: &str = r#"#!/bin/sh
# Written by xtask (xtask/src/fuzz.rs): libFuzzer's coverage flags for the
# workspace's own crates only.
rustc=$1
shift
case " $* " in
*" --crate-name build_script_"* | *" --crate-name ___ "*) exec "$rustc" "$@" ;;
*" --crate-name "*) exec "$rustc" "$@" $IAMLET_FUZZ_RUSTFLAGS ;;
*) exec "$rustc" "$@" ;;
esac
"#;

/// How long (or how many inputs) each target runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Budget {
    /// Seconds per target.
    Seconds(u64),
    /// Executions per target.
    Runs(u64),
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host triple")
}

/// Builds every target; returns the directory of the binaries.
fn build(root: &Path, how: Build) -> Result<PathBuf> {
    let triple = host_triple()?;
    let target_dir = root.join("target/fuzz");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--locked", "--profile", how.profile()])
        .args([
            "-p",
            "iamlet-fuzz",
            "--bins",
            "--target",
            &triple,
            "--target-dir",
        ])
        .arg(&target_dir);
    match how {
        Build::Thorough => {
            cmd.env("RUSTFLAGS", RUSTFLAGS);
        }
        Build::Quick => {
            std::fs::create_dir_all(&target_dir)
                .with_context(|| format!("creating {}", target_dir.display()))?;
            let wrapper = target_dir.join("rustc-workspace-wrapper");
            std::fs::write(&wrapper, WORKSPACE_WRAPPER)
                .with_context(|| format!("writing {}", wrapper.display()))?;
            crate::run(Command::new("chmod").arg("755").arg(&wrapper))?;
            cmd.env("RUSTFLAGS", "")
                .env("RUSTC_WORKSPACE_WRAPPER", &wrapper)
                .env("IAMLET_FUZZ_RUSTFLAGS", RUSTFLAGS);
        }
    }
    crate::run(&mut cmd)?;
    Ok(target_dir.join(triple).join(how.profile()))
}

/// `stat::number_of_executed_units` from libFuzzer's final stats.
fn executions(stderr: &str) -> Option<u64> {
    stderr.lines().rev().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Builds and runs the targets (all when `only` is empty).
pub(crate) fn run(root: &Path, how: Build, budget: Budget, only: &[String]) -> Result<()> {
    for name in only {
        if !TARGETS.contains(&name.as_str()) {
            bail!("no fuzz target {name:?} (targets: {})", TARGETS.join(", "));
        }
    }
    let bins = build(root, how)?;
    let mut passed = 0;
    let mut failed = Vec::new();
    for target in TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == *t))
    {
        let seeds = root.join("agent/fuzz/corpus").join(target);
        let work = root.join("target/fuzz/corpus").join(target);
        let artifacts = root.join("target/fuzz/artifacts").join(target);
        for dir in [&work, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut cmd = Command::new(bins.join(target));
        cmd.arg(&work)
            .arg(&seeds)
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .arg(format!("-max_len={}", max_len(target)));
        match budget {
            Budget::Seconds(s) => cmd.arg(format!("-max_total_time={s}")),
            Budget::Runs(n) => cmd.arg(format!("-runs={n}")),
        };
        let started = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        let secs = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let execs = executions(&stderr).unwrap_or(0);
        if out.status.success() {
            passed += 1;
            #[allow(
                clippy::cast_precision_loss,
                reason = "a rate for the log, from counts far below 2^52"
            )]
            let rate = execs as f64 / secs.max(0.001);
            println!("fuzz {target}: {execs} executions in {secs:.0} s ({rate:.0}/s), no crash");
        } else {
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            eprintln!(
                "fuzz {target}: FAILED after {execs} executions ({}); the input is under {}\n{}",
                out.status,
                artifacts.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            failed.push(*target);
        }
    }
    println!(
        "test result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; 0 filtered out (fuzz targets)",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
