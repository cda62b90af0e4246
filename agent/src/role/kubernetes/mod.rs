//! Kubernetes: which pod a cgroup belongs to and which role it gets.
//!
//! - [`policy`]: the role rules (kiam and kube2iam compatible annotations, namespace policy) as
//!   pure functions;
//! - [`cluster_state`]: pods, namespaces and service accounts as the watch delivered them, and
//!   what changes when one of them does;
//! - [`pod_index`]: pod UID → decision, the index requests read, with the bounded wait that
//!   closes the pod-start race;
//! - [`resolver`]: the request-time role resolver over that index;
//! - [`watch`]: the Kubernetes watch that feeds it all;
//! - [`watch_health`]: when the watch last delivered, and its errors (for the metrics).

pub(crate) mod cluster_state;
pub(crate) mod pod_index;
pub(crate) mod policy;
pub(crate) mod resolver;
pub(crate) mod watch;
pub(crate) mod watch_health;
