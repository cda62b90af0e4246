//! Metrics read on each scrape from the agent's state: readiness, and in Kubernetes mode the
//! pod index and the watch's health (see `role::kubernetes::watch_health`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::encode_gauge;
use super::labels::WatchLabels;
use crate::role::kubernetes::pod_index::PodIndex;
use crate::role::kubernetes::watch_health::{WatchHealth, Watched};

/// Readiness as `/ready` answers it, read at scrape time.
pub(crate) struct ReadyGauge(pub(crate) Box<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for ReadyGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReadyGauge").field(&(self.0)()).finish()
    }
}

impl prometheus_client::collector::Collector for ReadyGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        encode_gauge(
            &mut encoder,
            "ready",
            "1 while the agent answers /ready with 200 (programs attached, proxy listening), else 0",
            None,
            i64::from((self.0)()),
        )
    }
}

/// The pod index and the watch, read at scrape time.
#[derive(Debug)]
struct KubeCollector {
    pods: Arc<PodIndex>,
    health: Arc<WatchHealth>,
}

impl prometheus_client::collector::Collector for KubeCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        encode_gauge(
            &mut encoder,
            "kube_pods",
            "Pods of this node in the agent's pod index",
            None,
            i64::try_from(self.pods.len()).unwrap_or(i64::MAX),
        )?;
        encode_gauge(
            &mut encoder,
            "kube_watch_last_event_age",
            "Time since any of the agent's Kubernetes watches last delivered an event (a quiet cluster grows it too: stale only together with watch errors)",
            Some(&Unit::Seconds),
            self.health.since_last_event().as_secs_f64(),
        )?;
        let mut errors = encoder.encode_descriptor(
            "kube_watch_errors",
            "Errors the agent's Kubernetes watches met (failed list or watch calls, broken streams; each is retried with backoff)",
            None,
            MetricType::Counter,
        )?;
        for watched in Watched::ALL {
            let labels = WatchLabels {
                resource: watched.as_str(),
            };
            let sample = errors.encode_family(&labels)?;
            ConstCounter::new(self.health.errors(watched)).encode(sample)?;
        }
        Ok(())
    }
}

/// Registers the Kubernetes metrics: pods in the index, watch age and errors.
pub(crate) fn register(registry: &mut Registry, pods: Arc<PodIndex>, health: Arc<WatchHealth>) {
    registry.register_collector(Box::new(KubeCollector { pods, health }));
}
