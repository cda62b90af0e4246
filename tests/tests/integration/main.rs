//! iamlet's integration tests, one test binary (`integration`) with a module per area. The
//! fixtures (fake node, pods, agent, clients, fake API server, moto STS) come from the
//! `iamlet_tests` library (`tests/src`).
//!
//! * [`audit`]: the audit log: a line per credentials answer and refusal, collapsed per key.
//! * [`bypass`]: pods that reach for the metadata service without a hooked `connect()` get
//!   nothing of the node's service.
//! * [`doctor`]: `iamlet doctor` with a running, a stopped and a detached agent, and in
//!   Kubernetes mode with permissions taken away.
//! * [`harness`]: self-tests of the privileged harness (topology, connectivity, cleanup).
//! * [`image`]: the OCI image of the agent, unpacked and run with runc.
//! * [`imds`]: the metadata API with real SDK clients, token binding, no node credentials.
//! * [`inspect`]: `iamlet inspect`, `iamlet log-filter` and the Kubernetes metrics against a
//!   real agent.
//! * [`kernel`]: a kernel without what iamlet needs is refused at start, by name.
//! * [`kube`]: Kubernetes mode with the fake API server: annotations, namespace policy, races.
//! * [`kube_churn`]: Kubernetes mode under pod churn, container-start bursts and API outages.
//! * [`kube_fake`]: the fake Kubernetes API server against the real kube-rs client.
//! * [`limits`]: connection, header, rate and flag limits of the metadata proxy.
//! * [`manifests`]: the Helm chart and the rendered manifests (no privileges needed).
//! * [`monitoring`]: the chart's alerting rules and Grafana dashboard: promtool, and every
//!   metric they query in a real agent's scrape.
//! * [`ownership`]: the agent repairs its pins and attachment; one agent per pin directory.
//! * [`proxy_threads`]: the proxy's serving threads: how many, one CPU's connections on one,
//!   and busy polling between a client's requests.
//! * [`redirect`]: the eBPF redirect and the cgroup attribution of each connection.
//! * [`sts`]: the STS credentials cache against moto STS behind the fault proxy.
//! * [`sts_harness`]: self-tests of the STS harness (moto, fault proxy, boto3).
//! * [`upgrade`]: agent handovers, exits and crashes without a lost request or a leak.
//!
//! Most tests need root (cgroups, namespaces, eBPF) and run one at a time: `cargo xtask test`
//! runs them all. A test's name is its path, so to run one area filter by the module path:
//! `cargo xtask test --no-setup --filter kube_churn::` (the filter is a substring:
//! `harness::` also matches `sts_harness::`). Without xtask, as root:
//! `IAMLET_BIN=target/debug/iamlet cargo test -p iamlet-tests --test integration --
//! --test-threads=1 kube_churn::`.
#![allow(
    clippy::too_many_lines,
    reason = "a test scenario or bench driver reads top to bottom, step by step"
)]

mod audit;
mod bypass;
mod doctor;
mod harness;
mod image;
mod imds;
mod inspect;
mod kernel;
mod kube;
mod kube_churn;
mod kube_fake;
mod limits;
mod manifests;
mod monitoring;
mod ownership;
mod proxy_threads;
mod redirect;
mod sts;
mod sts_harness;
mod upgrade;
