use std::time::Duration;

use super::ebpf::encode_ebpf_counters;
use super::*;

#[test]
fn encodes_counters() {
    let m = Metrics::default();
    m.connection(ConnResult::Attributed);
    m.request("whoami", 200, Duration::from_micros(70));
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
    for sample in [
        "iamlet_proxy_request_duration_seconds_count{route=\"whoami\",status=\"2xx\"} 1",
        "iamlet_proxy_request_duration_seconds_bucket{le=\"0.0001\",route=\"whoami\",status=\"2xx\"} 1",
        "iamlet_proxy_request_duration_seconds_bucket{le=\"0.00005\",route=\"whoami\",status=\"2xx\"} 0",
    ] {
        assert!(out.contains(sample), "{sample} missing:\n{out}");
    }
    let build = format!(
        "iamlet_build_info{{version=\"{}\",revision=\"{REVISION}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(out.contains(&build), "{build} missing:\n{out}");
}

#[test]
fn kept_series_and_looked_up_ones_count_the_same() {
    let m = Metrics::default();
    // `token` 200 goes through the kept series, `token` 401 through the label lookup.
    m.request("token", 200, Duration::from_micros(70));
    m.request("token", 200, Duration::from_micros(70));
    m.request("token", 401, Duration::from_micros(70));
    let reg = registry(&m, None, None, None);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
    for sample in [
        "iamlet_proxy_requests_total{route=\"token\",status=\"200\"} 2",
        "iamlet_proxy_requests_total{route=\"token\",status=\"401\"} 1",
        "iamlet_proxy_request_duration_seconds_count{route=\"token\",status=\"2xx\"} 2",
        "iamlet_proxy_request_duration_seconds_count{route=\"token\",status=\"4xx\"} 1",
    ] {
        assert!(out.contains(sample), "{sample} missing:\n{out}");
    }
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
    assert!(
        !out.contains("min_time_to_expiry"),
        "no expiry without credentials:\n{out}"
    );
}

#[tokio::test]
async fn assume_role_calls_are_timed_and_failures_counted_by_code() {
    let sts_cache = StsCache::new(
        Arc::new(NeverAssumes),
        crate::credentials::sts_cache::StsCacheSettings::default(),
    );
    let binding = crate::role::RoleBinding {
        role_arn: "arn:aws:iam::123456789012:role/web".into(),
        session_name: "s".into(),
        external_id: None,
        session_tags: Vec::new(),
    };
    assert!(sts_cache.get(&binding).await.is_err());
    sts_cache
        .stats()
        .assume_role
        .observe(Duration::from_millis(30), Some("SomethingNew"));
    let reg = registry(&Metrics::default(), None, Some(sts_cache), None);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
    for sample in [
        "iamlet_sts_assume_role_duration_seconds_count 2",
        "iamlet_sts_assume_role_failures_total{code=\"AccessDenied\"} 1",
        "iamlet_sts_assume_role_failures_total{code=\"Other\"} 1",
    ] {
        assert!(out.contains(sample), "{sample} missing:\n{out}");
    }
}

#[test]
fn status_classes() {
    for (status, class) in [
        (200, "2xx"),
        (404, "4xx"),
        (429, "4xx"),
        (503, "5xx"),
        (999, "5xx"),
    ] {
        let labels = DurationLabels {
            route: "r",
            status: StatusClass::of(status),
        };
        let family: Family<DurationLabels, Counter> = Family::default();
        family.get_or_create(&labels).inc();
        let mut reg = Registry::default();
        reg.register("x", "x", family);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        assert!(
            out.contains(&format!("status=\"{class}\"")),
            "{status}: {out}"
        );
    }
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
