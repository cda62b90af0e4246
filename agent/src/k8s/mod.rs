//! Kubernetes: which pod a cgroup belongs to and which role it gets.
//!
//! `resolve` holds the role rules (kiam and kube2iam compatible) as pure functions; `index` is
//! the pod index requests read, with the bounded wait that closes the pod-start race.

pub mod index;
pub mod resolve;
pub mod state;
pub mod watch;
