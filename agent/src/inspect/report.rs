//! What `GET /debug/pods` answers and `iamlet inspect` reads: one row per pod (or bare
//! cgroup) the agent knows, as JSON. The field names are the `-o json` output too.

use serde::{Deserialize, Serialize};

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Where roles come from: `kubernetes`, `standalone` (a bindings file) or `none`.
    pub mode: String,
    /// The node, in Kubernetes mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the agent made this answer (UTC, `2026-12-01T04:00:00Z`).
    pub generated_at: String,
    /// The pods (Kubernetes mode: every pod of the node in the index, then bare cgroups that
    /// asked) or cgroups (standalone), sorted by namespace, name, cgroup.
    pub pods: Vec<PodRow>,
}

/// One pod or cgroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PodRow {
    /// Pod namespace (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pod UID (from the pod index or the cgroup's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The pod's (or bound) cgroup, relative to the cgroup2 root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Its cgroup id (the directory's inode number, as bpftool shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The role ARN it gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Why it gets none, when it gets none (`no role`, `denied: ...`, `deleted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_note: Option<String>,
    /// Where its credentials come from: `sts`, `static` or `none`.
    pub credential_source: String,
    /// The AccessKeyId of the credentials it gets now (or was last served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Their expiry (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// The AWS error code of the latest failed AssumeRole for its role, if the cache has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_error: Option<String>,
    /// When it last asked for credentials (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// Credentials answers it was served.
    pub served: u64,
    /// Requests of it refused.
    pub refused: u64,
    /// Why the latest one was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<String>,
}
