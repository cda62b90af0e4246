//! Privileged integration-test harness for iamlet.
//!
//! Builds a fake Kubernetes node out of Linux namespaces and cgroups, so tests can run the
//! real agent and real clients without touching the machine's own network or cgroups:
//!
//! * [`TestNode`]: a network namespace `iml-node-<pid>-<n>` holding the agent's listener
//!   addresses ([`NODE_PROXY_V4`], [`NODE_PROXY_V6`]) and the IMDS addresses ([`IMDS_V4`],
//!   [`IMDS_V6`]) on `lo`, so an unredirected connect hits a fake IMDS the test runs there;
//!   plus the "pods cgroup" `<cgroup2 root>/iamlet-test-<pid>-<n>` the agent attaches to.
//! * [`FakePod`]: a cgroup below the pods cgroup and a network namespace wired to the node
//!   by a veth pair (or a shared / the node's namespace). [`FakePod::command`] runs a
//!   program in the pod's cgroup *and* network namespace.
//! * [`OutsideHost`]: a pod-like network namespace whose processes stay in the caller's
//!   cgroup, i.e. outside the attached cgroup.
//! * [`ChildGuard`], [`run_with_timeout`]: nothing a test starts outlives it or hangs it.
//! * [`fetch_credentials`]: a real AWS SDK ([`Sdk`]: boto3, JS v3, Rust) run inside a pod,
//!   fetching credentials from the metadata service at its default endpoint.
//! * [`OciBundle`]: an OCI image archive unpacked (skopeo, umoci) and run with runc.
//! * [`MotoSts`], [`FaultProxy`]: a real STS (moto) in the node namespace behind a proxy that
//!   counts calls and injects [`Fault`]s; the agent gets [`FaultProxy::endpoint`].
//!
//! Everything is RAII: removed on drop, also while a failing test unwinds; drops never
//! panic (problems are logged to stderr). Leftovers of crashed runs are removed by
//! [`cleanup_stale`] at the next [`TestNode::new`]. Names carry the pid and a counter, so
//! test binaries and test threads can run concurrently.
//!
//! Tests start with [`skip_unless_privileged!`], which skips (printing why) when
//! [`require_privileges`] fails.

#![forbid(unsafe_code)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "test clocks, counts and percentiles: far inside the narrower type's range"
)]

pub mod agent;
pub mod bpftool;
pub mod cgroup;
pub mod cleanup;
pub mod clients;
pub mod fake_imds;
pub mod fixtures;
pub mod kube_fake;
pub mod net;
pub mod netns;
pub mod node;
pub mod oci;
pub mod pod;
pub mod privileges;
pub mod process;
pub mod promtool;
pub mod stats;
pub mod sts;
pub mod time_scale;

pub use agent::{Agent, PROXY_PORT};
pub use cleanup::cleanup_stale;
pub use clients::{
    fetch_credentials, fetch_credentials_timed, sdk_available, ClientCreds, Sdk, CLIENT_TIMEOUT,
};
pub use fake_imds::FakeImds;
pub use fixtures::{PodRole, StaticRoles};
pub use kube_fake::{FakeApiServer, KubeControl, RemoteApiServer};
pub use net::{http, http_each, http_with, udp_probe, FakeUpstream, Family, HttpAnswer};
pub use netns::Netns;
pub use node::{TestNode, IMDS_V4, IMDS_V6, NODE_PROXY_V4, NODE_PROXY_V6};
pub use oci::OciBundle;
pub use pod::{
    besteffort_container_cgroup, besteffort_pod_slice, FakePod, OutsideHost, PodNetwork,
};
pub use privileges::{require_privileges, SkipReason};
pub use process::{run_with_timeout, ChildGuard, RunOutput, DEFAULT_TIMEOUT};
pub use sts::{
    assume_role, boto3_sts, caller_identity, sts_available, AssumeRoleCall, AssumedRole,
    Boto3Options, Boto3Outcome, CallerIdentity, Fault, FaultProxy, MotoSts, Stats,
};
pub use time_scale::{scaled, time_scale};
