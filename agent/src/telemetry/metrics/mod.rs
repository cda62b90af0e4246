//! Prometheus metrics, served by the admin server at `/metrics`. Names follow the ecosystem's
//! conventions: the `iamlet_` prefix, base units in the name (`_seconds`), `_total` on
//! counters, and label values from closed sets only (see [`labels`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `iamlet_build_info` | gauge, always 1 | `version`, `revision` |
//! | `iamlet_proxy_connections_total` | counter | `result` = `attributed` / `unattributed` / `over_pod_limit` / `over_total_limit` / `wait_timed_out` (the last three closed unserved) |
//! | `iamlet_proxy_requests_total` | counter | `route`, `status` (the code) |
//! | `iamlet_proxy_request_duration_seconds` | histogram: from the request read to its answer made | `route`, `status` = `2xx` / `4xx` / `5xx` ... |
//! | `iamlet_proxy_open_connections` | gauge | |
//! | `iamlet_datapath_repairs_total` | counter | `what` = `program` / `link_pin` / `map_pin` / `forward_guard` / `failed` |
//! | `iamlet_ebpf_events_total` | counter (read from `COUNTERS_V2` at scrape) | `event` = `redirected` / `direct` / `peers_stored` / `peers_removed` |
//! | `iamlet_ebpf_errors_total` | counter (`COUNTERS_V2`) | `site` = `cookie_insert` / `peer_key` / `peer_insert` / `close_callback` / `egress_read` |
//! | `iamlet_ebpf_egress_dropped_total` | counter (`COUNTERS_V2`) | `reason` = `imds_v4` / `imds_v6` / `imds_v4_in_v6` |
//! | `iamlet_sts_calls_total`, `iamlet_sts_failures_total` | counter (STS cache) | |
//! | `iamlet_sts_assume_role_duration_seconds` | histogram (STS cache): each AssumeRole call | |
//! | `iamlet_sts_assume_role_failures_total` | counter (STS cache) | `code`: the AWS error code, one of [`labels::ASSUME_ROLE_CODES`] or `Other` |
//! | `iamlet_credentials_hits_total`, `iamlet_credentials_misses_total` | counter (STS cache) | |
//! | `iamlet_credentials_cache_entries` | gauge (STS cache) | |
//! | `iamlet_credentials_min_time_to_expiry_seconds` | gauge (STS cache; absent while it holds no credentials) | |
//! | `iamlet_ready` | gauge: 1 while `/ready` answers 200, else 0 | |
//! | `iamlet_kube_pods` | gauge (Kubernetes): this node's pods in the pod index | |
//! | `iamlet_kube_watch_last_event_age_seconds` | gauge (Kubernetes): since any watch last delivered an event (grows on a quiet cluster too) | |
//! | `iamlet_kube_watch_errors_total` | counter (Kubernetes): failed list/watch calls, broken streams | `resource` = `namespaces` / `serviceaccounts` / `pods` |
//!
//! "STS cache": only when credentials come from STS. "Kubernetes": only in Kubernetes mode.

mod ebpf;
pub(crate) mod exposition;
pub(crate) mod kube;
pub(crate) mod labels;
mod sts;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::credentials::sts_cache::StsCache;
use crate::datapath::Datapath;
use ebpf::EbpfCollector;
pub(crate) use labels::ConnResult;
use labels::{BuildLabels, ConnLabels, DurationLabels, RepairLabels, RequestLabels, StatusClass};
pub(crate) use sts::AssumeRoleMetrics;
use sts::StsCacheCollector;

/// The source revision the agent was built from (set by `cargo xtask`'s builds).
pub(crate) const REVISION: &str = match option_env!("IAMLET_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// Upper bounds (seconds) of the request latency buckets: a cached answer takes microseconds;
/// milliseconds to seconds mean waiting for STS or for the pod watch.
const REQUEST_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// The routes whose `200` answers are most of the traffic (the SDK flow): their series are
/// looked up once and kept, so that counting such an answer hashes no labels.
const HOT_ROUTES: [&str; 3] = ["token", "role_list", "role_credentials"];

/// The request counter and latency histogram of one (route, status) series.
type RequestSeries = (Counter, Histogram);

/// The proxy's metric handles.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// The series of `200` on each of [`HOT_ROUTES`], once it has been created.
    hot: Arc<[OnceLock<RequestSeries>; HOT_ROUTES.len()]>,
    /// Accepted connections by attribution outcome.
    connections: Family<ConnLabels, Counter>,
    /// Requests by route and status.
    requests: Family<RequestLabels, Counter>,
    /// Request latency by route and status class.
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// Repairs of the datapath made by its periodic check.
    datapath_repairs: Family<RepairLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            hot: Arc::default(),
            connections: Family::default(),
            requests: Family::default(),
            durations: Family::new_with_constructor(request_histogram),
            datapath_repairs: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts a connection.
    pub(crate) fn connection(&self, result: ConnResult) {
        self.connections.get_or_create(&ConnLabels { result }).inc();
    }

    /// Counts a repair of the datapath (or a check that failed: `failed`).
    pub(crate) fn datapath_repair(&self, what: &'static str) {
        self.datapath_repairs
            .get_or_create(&RepairLabels { what })
            .inc();
    }

    /// Counts a request answered with `status` after `elapsed`.
    pub(crate) fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        if status == 200 {
            if let Some(hot) = HOT_ROUTES.iter().position(|r| *r == route) {
                let (count, duration) =
                    self.hot[hot].get_or_init(|| self.request_series(route, status));
                count.inc();
                duration.observe(elapsed.as_secs_f64());
                return;
            }
        }
        let (count, duration) = self.request_series(route, status);
        count.inc();
        duration.observe(elapsed.as_secs_f64());
    }

    fn request_series(&self, route: &'static str, status: u16) -> RequestSeries {
        let count = self
            .requests
            .get_or_create(&RequestLabels { route, status })
            .clone();
        let duration = self
            .durations
            .get_or_create(&DurationLabels {
                route,
                status: StatusClass::of(status),
            })
            .clone();
        (count, duration)
    }
}

/// Builds the registry (every name gets the `iamlet_` prefix, collectors' too): the build,
/// the proxy's metrics, plus the eBPF counters when a datapath runs and the STS cache's when
/// it runs.
pub(crate) fn registry(
    metrics: &Metrics,
    datapath: Option<Arc<Datapath>>,
    sts_cache: Option<StsCache>,
    open_connections: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> Registry {
    let mut registry = Registry::with_prefix("iamlet");
    let build: Family<BuildLabels, ConstGauge> =
        Family::new_with_constructor(|| ConstGauge::new(1));
    // Creating the series is all there is to do: its value is always 1.
    drop(build.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
        revision: REVISION,
    }));
    registry.register(
        "build_info",
        "The agent's version and source revision",
        build,
    );
    registry.register(
        "proxy_connections",
        "Connections accepted by the metadata proxy",
        metrics.connections.clone(),
    );
    registry.register(
        "proxy_requests",
        "Requests answered by the metadata proxy",
        metrics.requests.clone(),
    );
    registry.register_with_unit(
        "proxy_request_duration",
        "Time the metadata proxy took to answer a request, from the request read to its answer made",
        Unit::Seconds,
        metrics.durations.clone(),
    );
    registry.register(
        "datapath_repairs",
        "Parts of the datapath found missing by the periodic check and put back (what=failed: could not be put back; the agent is then not ready)",
        metrics.datapath_repairs.clone(),
    );
    if let Some(datapath) = datapath {
        registry.register_collector(Box::new(EbpfCollector { datapath }));
    }
    if let Some(sts_cache) = sts_cache {
        let assume_role = sts_cache.stats().assume_role.clone();
        registry.register_with_unit(
            "sts_assume_role_duration",
            "Time each AssumeRole call took, failed ones included",
            Unit::Seconds,
            assume_role.duration,
        );
        registry.register(
            "sts_assume_role_failures",
            "AssumeRole calls that failed, by AWS error code",
            assume_role.failures,
        );
        registry.register_collector(Box::new(StsCacheCollector { sts_cache }));
    }
    if let Some(held) = open_connections {
        registry.register_collector(Box::new(OpenConnections { held }));
    }
    registry
}

/// Reads the proxy's held connections on each scrape.
#[derive(Debug)]
struct OpenConnections {
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl prometheus_client::collector::Collector for OpenConnections {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let held = self.held.load(std::sync::atomic::Ordering::Relaxed);
        encode_gauge(
            &mut encoder,
            "proxy_open_connections",
            "Connections the metadata proxy holds now, served or waiting for their pod's turn",
            None,
            i64::try_from(held).unwrap_or(i64::MAX),
        )
    }
}

/// Writes a gauge family of one unlabelled sample, read at scrape time.
fn encode_gauge<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

#[cfg(test)]
mod tests;
