//! iamlet: gives each Kubernetes pod its own AWS IAM credentials through an instance metadata
//! service that the kernel redirects pods to and that names pods by cgroup, never by IP.
//!
//! Modules, one concern each: `config` (flags), `telemetry` (logs), `metrics`, `datapath` (the
//! eBPF loader and its pinned links), `handover` (upgrades: a new agent takes the running one's
//! sockets over), `cgroup` (cgroup2 discovery and the cgroup-id index), `identity` (pod UID from
//! a cgroup path), `attribution` (who made a connection), `server` (HTTP accept loop), `proxy`
//! (attribution and limits in front of the metadata API), `imds` (the metadata API: tokens, routes,
//! passthrough), `roles` (which role a caller gets), `credentials` (where credentials come from),
//! `timefmt` (UTC timestamps), `admin` (health and metrics routes), `app` (wiring).
// Raw system calls live in the `iamlet-sys` crate (agent/sys), behind safe functions.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod attribution;
pub mod cgroup;
pub mod config;
pub mod credentials;
pub mod datapath;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod heap;
pub mod identity;
pub mod imds;
pub mod k8s;
pub mod metrics;
pub mod prefetch;
pub mod proxy;
pub mod roles;
pub mod server;
pub mod sts;
pub mod telemetry;
pub mod timefmt;
