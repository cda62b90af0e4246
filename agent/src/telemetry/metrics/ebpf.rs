//! The eBPF programs' counters (`COUNTERS_V2`), read from the kernel on each scrape.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::ConstCounter;

use crate::datapath::Datapath;

/// Reads the eBPF counters on each scrape.
#[derive(Debug)]
pub(super) struct EbpfCollector {
    pub(super) datapath: Arc<Datapath>,
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
pub(super) fn encode_ebpf_counters(
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
