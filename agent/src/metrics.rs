//! Prometheus metrics, served by the admin server at `/metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `iamlet_proxy_connections_total` | counter | `result` = `attributed` / `unattributed` / `over_pod_limit` / `over_total_limit` / `wait_timed_out` (the last three closed unserved) |
//! | `iamlet_proxy_requests_total` | counter | `route`, `status` |
//! | `iamlet_ebpf_events_total` | counter (read from `COUNTERS_V1` at scrape) | `event` |
//! | `iamlet_sts_calls_total`, `iamlet_sts_failures_total` | counter (engine) | |
//! | `iamlet_credentials_hits_total`, `iamlet_credentials_misses_total` | counter (engine) | |
//! | `iamlet_credentials_cache_entries` | gauge (engine) | |

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::datapath::Datapath;
use crate::engine::Engine;

/// Outcome of attributing a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConnResult {
    /// The kernel had a record for it.
    Attributed,
    /// It came from outside the attached cgroup (answered 403).
    Unattributed,
    /// Closed unserved: its pod had its limit of connections served and waiting.
    OverPodLimit,
    /// Closed unserved: the proxy held `--max-connections` already.
    OverTotalLimit,
    /// Closed unserved: it waited `--header-timeout` for its pod's turn.
    WaitTimedOut,
}

impl EncodeLabelValue for ConnResult {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let text = match self {
            ConnResult::Attributed => "attributed",
            ConnResult::Unattributed => "unattributed",
            ConnResult::OverPodLimit => "over_pod_limit",
            ConnResult::OverTotalLimit => "over_total_limit",
            ConnResult::WaitTimedOut => "wait_timed_out",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

/// Labels of `iamlet_proxy_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// Outcome.
    pub result: ConnResult,
}

/// Labels of `iamlet_proxy_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name (a fixed set, never the raw path).
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// The proxy's metric handles.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Accepted connections by attribution outcome.
    pub connections: Family<ConnLabels, Counter>,
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    /// Counts a connection.
    pub fn connection(&self, result: ConnResult) {
        self.connections.get_or_create(&ConnLabels { result }).inc();
    }

    /// Counts a request.
    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }
}

/// Reads the eBPF counters on each scrape.
#[derive(Debug)]
struct EbpfCollector {
    datapath: Arc<Datapath>,
}

const EBPF_EVENTS: [&str; agent_common::COUNTER_COUNT as usize] = [
    "redirected",
    "direct",
    "peers_stored",
    "peers_removed",
    "errors",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

impl prometheus_client::collector::Collector for EbpfCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let Ok(values) = self.datapath.counters() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "ebpf_events",
            "Events counted by the eBPF programs",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, value) in EBPF_EVENTS.iter().zip(values) {
            let labels = EventLabels { event };
            let metric = family.encode_family(&labels)?;
            prometheus_client::encoding::EncodeMetric::encode(&ConstCounter::new(value), metric)?;
        }
        Ok(())
    }
}

/// Reads the credentials engine's counters on each scrape.
#[derive(Debug)]
struct EngineCollector {
    engine: Engine,
}

impl prometheus_client::collector::Collector for EngineCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.engine.stats();
        for (name, help, value) in [
            (
                "sts_calls",
                "AssumeRole calls made",
                s.sts_calls.load(Relaxed),
            ),
            (
                "sts_failures",
                "AssumeRole calls that failed",
                s.sts_failures.load(Relaxed),
            ),
            (
                "credentials_hits",
                "Credential requests served from the cache",
                s.hits.load(Relaxed),
            ),
            (
                "credentials_misses",
                "Credential requests that had to wait for STS or failed",
                s.misses.load(Relaxed),
            ),
        ] {
            let metric = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            prometheus_client::encoding::EncodeMetric::encode(&ConstCounter::new(value), metric)?;
        }
        let metric = encoder.encode_descriptor(
            "credentials_cache_entries",
            "Role sessions in the credentials cache",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::encoding::EncodeMetric::encode(
            &prometheus_client::metrics::gauge::ConstGauge::new(self.engine.entries() as i64),
            metric,
        )
    }
}

/// Builds the registry (every name gets the `iamlet_` prefix, collectors' too): the proxy's
/// metrics, plus the eBPF counters when a datapath runs and
/// the credentials engine's when it runs.
pub fn registry(
    metrics: &Metrics,
    datapath: Option<Arc<Datapath>>,
    engine: Option<Engine>,
) -> Registry {
    let mut registry = Registry::with_prefix("iamlet");
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
    if let Some(datapath) = datapath {
        registry.register_collector(Box::new(EbpfCollector { datapath }));
    }
    if let Some(engine) = engine {
        registry.register_collector(Box::new(EngineCollector { engine }));
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters() {
        let m = Metrics::default();
        m.connection(ConnResult::Attributed);
        m.request("whoami", 200);
        let reg = registry(&m, None, None);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        assert!(
            out.contains("iamlet_proxy_connections_total{result=\"attributed\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("iamlet_proxy_requests_total{route=\"whoami\",status=\"200\"} 1"),
            "{out}"
        );
    }

    #[derive(Debug)]
    struct NeverAssumes;

    impl crate::sts::Assumer for NeverAssumes {
        fn assume<'a>(
            &'a self,
            _binding: &'a crate::roles::RoleBinding,
        ) -> crate::roles::BoxFuture<
            'a,
            Result<crate::credentials::Credentials, crate::credentials::CredentialError>,
        > {
            Box::pin(async {
                Err(crate::credentials::CredentialError::new(
                    "AccessDenied",
                    "test",
                ))
            })
        }
    }

    #[test]
    fn engine_metrics_have_the_documented_names() {
        let engine = Engine::new(Arc::new(NeverAssumes), Default::default());
        let reg = registry(&Metrics::default(), None, Some(engine));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        for name in [
            "iamlet_sts_calls_total 0",
            "iamlet_sts_failures_total 0",
            "iamlet_credentials_hits_total 0",
            "iamlet_credentials_misses_total 0",
            "iamlet_credentials_cache_entries 0",
        ] {
            assert!(out.contains(name), "{name} missing:\n{out}");
        }
        assert!(!out.contains("iamlet_iamlet_"), "doubled prefix:\n{out}");
    }
}
