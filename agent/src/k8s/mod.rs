//! Kubernetes: which pod a cgroup belongs to and which role it gets.
//!
//! `resolve` holds the role rules (kiam and kube2iam compatible) as pure functions.

pub mod resolve;
