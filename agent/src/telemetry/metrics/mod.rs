//! Prometheus metrics, served by the admin server at `/metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `iamlet_proxy_connections_total` | counter | `result` = `attributed` / `unattributed` / `over_pod_limit` / `over_total_limit` / `wait_timed_out` (the last three closed unserved) |
//! | `iamlet_proxy_requests_total` | counter | `route`, `status` |
//! | `iamlet_datapath_repairs_total` | counter | `what` = `program` / `link_pin` / `map_pin` / `forward_guard` / `failed` |
//! | `iamlet_ebpf_events_total` | counter (read from `COUNTERS_V2` at scrape) | `event` = `redirected` / `direct` / `peers_stored` / `peers_removed` |
//! | `iamlet_ebpf_errors_total` | counter (`COUNTERS_V2`) | `site` = `cookie_insert` / `peer_key` / `peer_insert` / `close_callback` / `egress_read` |
//! | `iamlet_ebpf_egress_dropped_total` | counter (`COUNTERS_V2`) | `reason` = `imds_v4` / `imds_v6` / `imds_v4_in_v6` |
//! | `iamlet_sts_calls_total`, `iamlet_sts_failures_total` | counter (sts_cache) | |
//! | `iamlet_credentials_hits_total`, `iamlet_credentials_misses_total` | counter (sts_cache) | |
//! | `iamlet_credentials_cache_entries` | gauge (sts_cache) | |
//! | `iamlet_proxy_open_connections` | gauge | |

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::credentials::sts_cache::StsCache;
use crate::datapath::Datapath;

/// Outcome of attributing a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum ConnResult {
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
pub(crate) struct ConnLabels {
    /// Outcome.
    pub result: ConnResult,
}

/// Labels of `iamlet_proxy_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// Route name (a fixed set, never the raw path).
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of `iamlet_datapath_repairs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RepairLabels {
    /// What was put back (`program`, `link_pin`, `map_pin`, `forward_guard`), or `failed`.
    pub what: &'static str,
}

/// The proxy's metric handles.
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {
    /// Accepted connections by attribution outcome.
    pub connections: Family<ConnLabels, Counter>,
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Repairs of the datapath made by its periodic check.
    pub datapath_repairs: Family<RepairLabels, Counter>,
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

    /// Counts a request.
    pub(crate) fn request(&self, route: &'static str, status: u16) {
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

/// What each `COUNTERS_V2` slot is exposed as: metric family, label name, label value.
const EBPF_COUNTERS: [(&str, &str, &str); agent_common::COUNTER_COUNT as usize] = [
    ("ebpf_events", "event", "redirected"),
    ("ebpf_events", "event", "direct"),
    ("ebpf_events", "event", "peers_stored"),
    ("ebpf_events", "event", "peers_removed"),
    ("ebpf_errors", "site", "cookie_insert"),
    ("ebpf_errors", "site", "peer_key"),
    ("ebpf_errors", "site", "peer_insert"),
    ("ebpf_errors", "site", "close_callback"),
    ("ebpf_egress_dropped", "reason", "imds_v4"),
    ("ebpf_egress_dropped", "reason", "imds_v6"),
    ("ebpf_egress_dropped", "reason", "imds_v4_in_v6"),
    ("ebpf_errors", "site", "egress_read"),
];

/// The families of [`EBPF_COUNTERS`], with their help text.
const EBPF_FAMILIES: [(&str, &str); 3] = [
    ("ebpf_events", "Events counted by the eBPF programs"),
    (
        "ebpf_errors",
        "Map updates, helper calls or packet reads that failed in the eBPF programs, by site",
    ),
    (
        "ebpf_egress_dropped",
        "Packets from the pods' cgroup to a metadata address that did not go through the redirect (a pod's own NAT rule, a raw socket), dropped by the egress program",
    ),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CounterLabel {
    name: &'static str,
    value: &'static str,
}

impl EncodeLabelSet for CounterLabel {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabelKey;
        let mut label = encoder.encode_label();
        let mut key = label.encode_label_key()?;
        EncodeLabelKey::encode(&self.name, &mut key)?;
        let mut value = key.encode_label_value()?;
        EncodeLabelValue::encode(&self.value, &mut value)?;
        value.finish()
    }
}

impl prometheus_client::collector::Collector for EbpfCollector {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let Ok(values) = self.datapath.counters() else {
            return Ok(());
        };
        encode_ebpf_counters(encoder, values)
    }
}

/// Writes the eBPF counters' families (see [`EBPF_COUNTERS`]).
fn encode_ebpf_counters(
    mut encoder: prometheus_client::encoding::DescriptorEncoder,
    values: [u64; agent_common::COUNTER_COUNT as usize],
) -> Result<(), std::fmt::Error> {
    {
        for (family_name, help) in EBPF_FAMILIES {
            let mut family = encoder.encode_descriptor(
                family_name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for ((_, name, value), count) in EBPF_COUNTERS
                .iter()
                .zip(values)
                .filter(|((f, _, _), _)| *f == family_name)
            {
                let labels = CounterLabel { name, value };
                let metric = family.encode_family(&labels)?;
                prometheus_client::encoding::EncodeMetric::encode(
                    &ConstCounter::new(count),
                    metric,
                )?;
            }
        }
        Ok(())
    }
}

/// Reads the STS cache's counters on each scrape.
#[derive(Debug)]
struct EngineCollector {
    sts_cache: StsCache,
}

impl prometheus_client::collector::Collector for EngineCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.sts_cache.stats();
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
            &prometheus_client::metrics::gauge::ConstGauge::new(
                i64::try_from(self.sts_cache.entries()).unwrap_or(i64::MAX),
            ),
            metric,
        )
    }
}

/// Builds the registry (every name gets the `iamlet_` prefix, collectors' too): the proxy's
/// metrics, plus the eBPF counters when a datapath runs and
/// the STS cache's when it runs.
pub(crate) fn registry(
    metrics: &Metrics,
    datapath: Option<Arc<Datapath>>,
    sts_cache: Option<StsCache>,
    open_connections: Option<Arc<std::sync::atomic::AtomicUsize>>,
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
    registry.register(
        "datapath_repairs",
        "Parts of the datapath found missing by the periodic check and put back (what=failed: could not be put back; the agent is then not ready)",
        metrics.datapath_repairs.clone(),
    );
    if let Some(datapath) = datapath {
        registry.register_collector(Box::new(EbpfCollector { datapath }));
    }
    if let Some(sts_cache) = sts_cache {
        registry.register_collector(Box::new(EngineCollector { sts_cache }));
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
        let metric = encoder.encode_descriptor(
            "proxy_open_connections",
            "Connections the metadata proxy holds now, served or waiting for their pod's turn",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::encoding::EncodeMetric::encode(
            &prometheus_client::metrics::gauge::ConstGauge::new(
                i64::try_from(held).unwrap_or(i64::MAX),
            ),
            metric,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters() {
        let m = Metrics::default();
        m.connection(ConnResult::Attributed);
        m.request("whoami", 200);
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(3));
        let reg = registry(&m, None, None, Some(held));
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
        assert!(out.contains("iamlet_proxy_open_connections 3"), "{out}");
    }

    #[derive(Debug)]
    struct NeverAssumes;

    impl crate::credentials::sts_client::Assumer for NeverAssumes {
        fn assume<'a>(
            &'a self,
            _binding: &'a crate::role::RoleBinding,
        ) -> crate::role::BoxFuture<
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
        let sts_cache = StsCache::new(
            Arc::new(NeverAssumes),
            crate::credentials::sts_cache::StsCacheSettings::default(),
        );
        let reg = registry(&Metrics::default(), None, Some(sts_cache), None);
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

    #[derive(Debug)]
    struct FixedEbpf;

    impl prometheus_client::collector::Collector for FixedEbpf {
        fn encode(
            &self,
            encoder: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            let mut values = [0u64; agent_common::COUNTER_COUNT as usize];
            for (slot, value) in (1u64..).zip(values.iter_mut()) {
                *value = slot;
            }
            encode_ebpf_counters(encoder, values)
        }
    }

    #[test]
    fn every_ebpf_counter_slot_has_its_sample() {
        use agent_common::maps::*;
        let mut reg = Registry::with_prefix("iamlet");
        reg.register_collector(Box::new(FixedEbpf));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        for (sample, slot) in [
            (
                "iamlet_ebpf_events_total{event=\"redirected\"}",
                COUNTER_REDIRECTED,
            ),
            (
                "iamlet_ebpf_events_total{event=\"peers_removed\"}",
                COUNTER_PEERS_REMOVED,
            ),
            (
                "iamlet_ebpf_errors_total{site=\"cookie_insert\"}",
                COUNTER_ERROR_COOKIE_INSERT,
            ),
            (
                "iamlet_ebpf_errors_total{site=\"close_callback\"}",
                COUNTER_ERROR_CB_FLAGS,
            ),
            (
                "iamlet_ebpf_errors_total{site=\"egress_read\"}",
                COUNTER_ERROR_EGRESS_READ,
            ),
            (
                "iamlet_ebpf_egress_dropped_total{reason=\"imds_v4\"}",
                COUNTER_EGRESS_DROP_V4,
            ),
            (
                "iamlet_ebpf_egress_dropped_total{reason=\"imds_v6\"}",
                COUNTER_EGRESS_DROP_V6,
            ),
            (
                "iamlet_ebpf_egress_dropped_total{reason=\"imds_v4_in_v6\"}",
                COUNTER_EGRESS_DROP_V4_IN_V6,
            ),
        ] {
            let want = format!("{sample} {}", slot + 1);
            assert!(out.contains(&want), "{want} missing:\n{out}");
        }
        assert_eq!(
            out.matches("# TYPE iamlet_ebpf_").count(),
            3,
            "one descriptor per family:\n{out}"
        );
    }
}
