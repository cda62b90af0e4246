//! An OCI image archive unpacked into a runtime bundle, and containers run from it with
//! `runc`: what a container engine would do with the image, with Debian's tools alone.
//!
//! [`OciBundle::unpack`] copies the archive into an OCI layout (`skopeo copy`) and unpacks
//! that (`umoci unpack`, which writes the runtime `config.json` from the image's config:
//! user, entrypoint, environment). [`OciBundle::run`] runs one program in a new container of
//! that bundle, with the root filesystem read-only, no terminal, its own namespaces (network
//! included: only a loopback) and a cgroup `iamlet-test-<pid>-oci-<n>`, so that
//! [`crate::cleanup_stale`] finds it after a crash.
//!
//! Everything lives in one directory under the system's temporary directory, runc's state
//! included (`runc --root`), so no container of anyone else is ever seen or touched. On drop
//! every container started is deleted (`runc delete --force`) and the directory removed,
//! also while a failing test unwinds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cleanup::CGROUP_PREFIX;
use crate::process::{run_with_timeout, tool, RunOutput};

/// Numbers the bundles and containers of this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long one `skopeo copy` or `umoci unpack` may take.
const UNPACK_TIMEOUT: Duration = Duration::from_secs(120);

/// An image archive unpacked into a runtime bundle.
#[derive(Debug)]
pub struct OciBundle {
    /// Everything of this bundle: the layout, the bundle and runc's state.
    dir: PathBuf,
    /// The runtime bundle (`config.json`, `rootfs/`).
    bundle: PathBuf,
    /// runc's state directory (`runc --root`).
    state: PathBuf,
    /// The `config.json` umoci wrote from the image's config.
    spec: serde_json::Value,
    /// Containers started, deleted on drop.
    containers: Vec<String>,
}

impl OciBundle {
    /// Unpacks the OCI archive `archive` (`oci-archive` as `skopeo` writes it).
    pub fn unpack(archive: &Path) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "iamlet-oci-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut this = OciBundle {
            bundle: dir.join("bundle"),
            state: dir.join("runc"),
            dir,
            spec: serde_json::Value::Null,
            containers: Vec::new(),
        };
        let layout = this.dir.join("layout");
        run_with_timeout(
            Command::new("skopeo")
                .args(["copy", "--quiet"])
                .arg(format!("oci-archive:{}", archive.display()))
                .arg(format!("oci:{}:unpacked", layout.display())),
            UNPACK_TIMEOUT,
        )?
        .ensure_success()?;
        run_with_timeout(
            Command::new("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:unpacked", layout.display()))
                .arg(&this.bundle),
            UNPACK_TIMEOUT,
        )?
        .ensure_success()?;
        let config = this.bundle.join("config.json");
        this.spec = serde_json::from_slice(
            &std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?,
        )
        .with_context(|| format!("parsing {}", config.display()))?;
        Ok(this)
    }

    /// The unpacked root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// The runtime config umoci made from the image's config (before [`OciBundle::run`]'s
    /// changes).
    pub fn spec(&self) -> &serde_json::Value {
        &self.spec
    }

    /// The image's entrypoint and command, as umoci put them in `process.args`.
    pub fn entrypoint(&self) -> Vec<String> {
        self.spec["process"]["args"]
            .as_array()
            .map(|args| {
                args.iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `argv` in a new container of this bundle as the image's user, with a read-only
    /// root filesystem, and returns what it printed and how it exited (runc exits with the
    /// container's status). An error only when runc cannot be started or `timeout` passes.
    pub fn run(&mut self, argv: &[&str], timeout: Duration) -> Result<RunOutput> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{CGROUP_PREFIX}{}-oci-{n}", std::process::id());
        let mut spec = self.spec.clone();
        spec["process"]["args"] = serde_json::json!(argv);
        spec["process"]["terminal"] = serde_json::json!(false);
        spec["root"]["readonly"] = serde_json::json!(true);
        spec["hostname"] = serde_json::json!("iamlet-image-test");
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{id}"));
        let config = self.bundle.join("config.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)
            .with_context(|| format!("writing {}", config.display()))?;
        self.containers.push(id.clone());
        run_with_timeout(
            Command::new("runc")
                .arg("--root")
                .arg(&self.state)
                .args(["run", "--bundle"])
                .arg(&self.bundle)
                .arg(&id),
            timeout,
        )
    }
}

impl Drop for OciBundle {
    fn drop(&mut self) {
        for id in &self.containers {
            // `runc run` deletes a container that exited; this is for one that did not.
            let state = self.state.display().to_string();
            if let Err(e) = tool("runc", &["--root", &state, "delete", "--force", id]) {
                if !format!("{e:#}").contains("does not exist") {
                    eprintln!("iamlet-tests: cannot delete container {id}: {e:#}");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("iamlet-tests: cannot remove {}: {e}", self.dir.display());
        }
    }
}
