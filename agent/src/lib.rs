//! iamlet: gives each Kubernetes pod its own AWS IAM credentials through an instance metadata
//! service that the kernel redirects pods to and that names pods by cgroup, never by IP.
//!
//! The library's public face is small: the flags ([`Args`]), checked into a [`Plan`] and
//! loaded into the [`Config`], logging ([`init_logging`]) and the agent itself ([`run`]), for `main.rs` and
//! the tests; and the node-side commands ([`doctor_cli`], [`inspect_cli`], [`log_filter_cli`]). Inside, one folder per concern:
//!
//! | module | what lives there |
//! |---|---|
//! | `config` | flags (clap), checked into a [`Plan`] without I/O, loaded into a [`Config`] |
//! | `app` | wiring: builds every part from the [`Config`], runs and stops them |
//! | `datapath` | the eBPF loader: programs, pinned maps and links, repair, the forwarding guard |
//! | `caller` | who is calling: the kernel's record of a connection, the cgroup index, the pod UID |
//! | `role` | which role: the role model, standalone bindings, Kubernetes (policy, pod index, watch) |
//! | `credentials` | where credentials come from: the source trait, the STS cache and client, prefetch, a static file |
//! | `imds` | the metadata API: tokens, routes, canonical paths, passthrough, rate limits |
//! | `server` | the HTTP accept loop, per-pod admission, the metadata proxy, the admin server, heap trimming |
//! | `handover` | upgrades: a new agent takes the running one's sockets and pins over |
//! | `telemetry` | logs (with a filter changeable at run time) and Prometheus metrics |
//! | `inspect` | `iamlet inspect` / `iamlet log-filter`: the admin server's pod inventory and the CLIs that read it |
//! | `doctor` | `iamlet doctor`: the node self-check (kernel, eBPF, cgroups, pins, agent, STS, Kubernetes RBAC) |
//! | `clock` | time, read in one place so that tests can pause it |
//! | `timefmt` | UTC timestamps as AWS writes them |
// Raw system calls live in the `iamlet-sys` crate (agent/sys), behind safe functions.
#![forbid(unsafe_code)]

mod app;
mod caller;
mod clock;
mod config;
mod credentials;
mod datapath;
mod doctor;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handover;
mod imds;
mod inspect;
mod role;
mod server;
mod telemetry;
mod timefmt;

pub use app::{run, Error};
pub use config::{Args, Config, LoadError, LogFormat, Plan};
pub use doctor::run_cli as doctor_cli;
pub use inspect::{inspect as inspect_cli, log_filter as log_filter_cli};
pub use telemetry::init as init_logging;
