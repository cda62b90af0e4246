//! `cargo xtask vm-test`: the kernel-sensitive integration tests on the kernels EKS nodes run,
//! each booted in a VM over this machine's root file system.
//!
//! For each kernel of [`kernels::KERNELS`]: fetch and unpack it (once), boot it with virtme-ng
//! under qemu's TCG emulation (nested KVM crashes guests here) with the host's root over 9p,
//! and run the integration-test binary inside as root with [`guest.sh`](GUEST_SCRIPT), which
//! mounts what the tests need (a tmpfs on /tmp: unix sockets cannot bind on 9p; bpffs) and
//! loads `veth`. The guest mounts only cgroup v2, at /sys/fs/cgroup, as EKS nodes do. Its output
//! and exit code come back through a shared directory, `target/vm/results/<release>/`.
//!
//! Time limits in the tests are multiplied by `IAMLET_TEST_TIME_SCALE` (see
//! `iamlet_tests::time_scale`), set here and never on the host.

pub(crate) mod kernels;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use kernels::Kernel;

/// Runs inside the guest: `guest.sh RESULTS ENV_FILE TEST_BINARY ARGS...`.
const GUEST_SCRIPT: &str = include_str!("guest.sh");

/// How much slower than this machine a TCG guest is, for the tests' time limits.
pub(crate) const TIME_SCALE: u32 = 8;

/// The host's root again, read-only, as a 9p share the guest mounts with its page cache on
/// (see `guest.sh`): Python imports and execs that read the same files over and over take half
/// the time.
const HOSTROOT_SHARE: &str =
    "-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap";

/// Guest memory: the agent, moto, the SDK clients and the fake API server at once.
const GUEST_MEMORY: &str = "3G";

/// The tests that depend on the kernel, run on every kernel of the matrix: attribution over
/// v4, v6 and v4-mapped, in separate and in shared network namespaces and for host-network
/// pods; the programs and BTF-described maps as bpftool shows them, and a clean detach; the
/// egress program's drop of raw sockets; the upgrade handover through `BPF_LINK_UPDATE`,
/// fail-closed and adoption; token binding and a real SDK's flow with static credentials;
/// one Kubernetes end to end; `iamlet doctor`'s probes and views of the programs with a
/// running and a stopped agent. (libtest runs every test whose name contains one of these.)
///
/// The rest of the privileged suite runs on the host only: under emulation it would take
/// over an hour per kernel (the set above takes about 13 minutes on 5.10, 7 on 6.1 and 6.12).
pub(crate) const KERNEL_TESTS: &[&str] = &[
    "redirect::pods_in_separate_netns_over_v4_v6_and_v4_mapped",
    "redirect::pods_sharing_one_netns_are_told_apart_by_cgroup",
    "redirect::host_network_pod_is_identified_by_its_cgroup",
    "redirect::bpftool_lists_programs_and_exit_detaches_them",
    "redirect::maps_pretty_print_and_empty_after_close",
    "bypass::raw_sockets_get_nothing_from_the_node_service",
    "upgrade::",
    "imds::a_token_works_only_in_the_pod_that_minted_it",
    "kube::pod_start_race_annotation_change_and_deletion",
    "doctor::doctor_finds_nothing_wrong_with_a_running_agent",
    "doctor::doctor_names_a_stopped_agent_and_what_it_left_behind",
];

/// What one kernel's run gave.
pub(crate) struct Outcome {
    pub(crate) kernel: Kernel,
    pub(crate) passed: bool,
    pub(crate) seconds: f64,
    /// The `test result:` line, when the test binary got as far as printing it.
    pub(crate) summary: Option<String>,
}

/// Boots each of `kernels` and runs the integration tests matching `filters` inside.
pub(crate) fn run(
    root: &Path,
    test_binary: &Path,
    env: &[(String, String)],
    kernels: &[Kernel],
    filters: &[String],
) -> Result<Vec<Outcome>> {
    let script = root.join("target/vm/guest.sh");
    std::fs::create_dir_all(root.join("target/vm"))?;
    std::fs::write(&script, GUEST_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    crate::run(Command::new("chmod").arg("755").arg(&script))?;
    let mut outcomes = Vec::new();
    for kernel in kernels {
        kernel.ensure(root)?;
        let results = root.join("target/vm/results").join(kernel.release);
        if results.exists() {
            std::fs::remove_dir_all(&results)
                .with_context(|| format!("removing {}", results.display()))?;
        }
        std::fs::create_dir_all(&results)
            .with_context(|| format!("creating {}", results.display()))?;
        let env_file = results.join("env");
        let mut exports = String::new();
        for (k, v) in env {
            exports.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
        }
        exports.push_str(&format!(
            "export IAMLET_TEST_TIME_SCALE={TIME_SCALE}\nexport IAMLET_TEST_KERNEL={}\n",
            kernel.name
        ));
        std::fs::write(&env_file, exports)?;
        eprintln!(
            "vm-test: booting {} (Debian {}, {}) under emulation",
            kernel.name, kernel.suite, kernel.release
        );
        let started = Instant::now();
        let mut guest_cmd = vec![
            script.display().to_string(),
            results.display().to_string(),
            env_file.display().to_string(),
            test_binary.display().to_string(),
            "--test-threads=1".to_owned(),
        ];
        guest_cmd.extend(filters.iter().cloned());
        let status = vng(root)
            .arg("--run")
            .arg(kernel.image(root))
            .args(["--disable-kvm", "--force-9p", "--cpus", "2", "--memory"])
            .arg(GUEST_MEMORY)
            .arg(format!("--rwdir={}", results.display()))
            .arg(format!("--qemu-opts={HOSTROOT_SHARE}"))
            .arg("--cwd")
            .arg(root)
            .arg("-e")
            .arg(shell_words(&guest_cmd))
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(results.join("console.txt"))?)
            .stderr(std::fs::File::create(results.join("vng-stderr.txt"))?)
            .status()
            .context("starting vng (virtme-ng)")?;
        let seconds = started.elapsed().as_secs_f64();
        let log = std::fs::read_to_string(results.join("log.txt")).unwrap_or_default();
        print!("{log}");
        let exit = std::fs::read_to_string(results.join("exit")).ok();
        let passed = exit.as_deref().map(str::trim) == Some("0");
        if exit.is_none() {
            eprintln!(
                "vm-test: {} gave no exit code (vng: {status}); console in {}",
                kernel.name,
                results.join("console.txt").display()
            );
        }
        let summary = log
            .lines()
            .rev()
            .find(|l| l.starts_with("test result:"))
            .map(str::to_owned);
        outcomes.push(Outcome {
            kernel: *kernel,
            passed,
            seconds,
            summary,
        });
    }
    Ok(outcomes)
}

/// `vng`, from the virtme-ng venv (it runs `virtme-run` from the same bin directory).
fn vng(root: &Path) -> Command {
    let bin = venv(root).join("bin");
    let mut cmd = Command::new(bin.join("vng"));
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin.display()));
    cmd
}

/// The venv virtme-ng is installed in.
pub(crate) fn venv(root: &Path) -> PathBuf {
    root.join("target/vm/venv")
}

/// The pinned virtme-ng and its dependencies.
pub(crate) fn requirements(root: &Path) -> PathBuf {
    root.join("xtask/src/vm/requirements.txt")
}

/// One shell command line from words, each single-quoted.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints one line per kernel and fails if any failed.
pub(crate) fn report(outcomes: &[Outcome]) -> Result<()> {
    let mut failed = Vec::new();
    for o in outcomes {
        println!(
            "vm-test {} ({}): {} in {:.0} s: {}",
            o.kernel.name,
            o.kernel.release,
            if o.passed { "passed" } else { "FAILED" },
            o.seconds,
            o.summary.as_deref().unwrap_or("no test result line")
        );
        if !o.passed {
            failed.push(o.kernel.name);
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}
