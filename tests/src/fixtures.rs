//! Agent configuration fixtures: standalone role bindings with static credentials, written to
//! a temporary directory removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One pod's role: the pod UID, the role ARN bound to it, and the access key id its static
/// credentials carry.
#[derive(Clone, Copy, Debug)]
pub struct PodRole {
    /// Pod UID (with dashes).
    pub uid: &'static str,
    /// Role ARN.
    pub role: &'static str,
    /// AccessKeyId of its static credentials.
    pub access_key: &'static str,
}

/// A bindings file (each pod's besteffort slice → its role) and a static credentials file.
#[derive(Debug)]
pub struct StaticRoles {
    dir: PathBuf,
}

impl StaticRoles {
    /// Writes the two files for `pods`.
    pub fn write(pods: &[PodRole]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "iamlet-roles-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bindings = String::from("bindings:\n");
        let mut creds = String::from("credentials:\n");
        for p in pods {
            bindings.push_str(&format!(
                "  - cgroup: \"**/kubepods-besteffort-pod{}.slice\"\n    role: {}\n",
                p.uid.replace('-', "_"),
                p.role
            ));
            creds.push_str(&format!(
                "  {}:\n    access_key_id: {}\n    secret_access_key: secret-{}\n    session_token: token-{}\n",
                p.role, p.access_key, p.access_key, p.access_key
            ));
        }
        std::fs::write(dir.join("bindings.yaml"), bindings)?;
        std::fs::write(dir.join("creds.yaml"), creds)?;
        Ok(StaticRoles { dir })
    }

    /// The agent flags that use them.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--bindings".into(),
            self.dir.join("bindings.yaml").display().to_string(),
            "--static-credentials".into(),
            self.dir.join("creds.yaml").display().to_string(),
        ]
    }

    /// Their directory, removed with them (a test may keep files of its own there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// [`StaticRoles::args`] followed by `extra`.
    pub fn args_with(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }
}

impl Drop for StaticRoles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
