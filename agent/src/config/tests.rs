//! Unit tests of `config`.

use std::path::Path;

use super::*;

fn args(extra: &[&str]) -> Result<Args, clap::Error> {
    let mut v = vec!["iamlet"];
    v.extend_from_slice(extra);
    Args::try_parse_from(v)
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
    assert_eq!(parse_duration("50µs"), Ok(Duration::from_micros(50)));
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("-1s").is_err());
}

#[test]
fn listener_is_required_and_checked() {
    let a = args(&[]).expect("parses");
    assert!(matches!(a.validate(), Err(Error::NoListener)));
    let a = args(&["--listen-v4", "0.0.0.0:8181"]).expect("parses");
    assert!(matches!(a.validate(), Err(Error::ListenV4 { .. })));
    let a = args(&["--listen-v4", "169.254.169.254:80"]).expect("parses");
    assert!(matches!(a.validate(), Err(Error::ListenV4 { .. })));
    let a = args(&["--listen-v6", "[::]:8181"]).expect("parses");
    assert!(matches!(a.validate(), Err(Error::ListenV6 { .. })));
    assert!(args(&["--listen-v4", "not-an-address"]).is_err());
}

#[test]
fn upstream_and_limits() {
    let base = ["--listen-v4", "127.0.0.1:8181"];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        args(&v).expect("parses")
    };
    assert_eq!(
        with(&["--upstream", "off"]).upstream_uri().expect("off"),
        None
    );
    assert!(with(&[]).upstream_uri().expect("default").is_some());
    assert!(with(&["--upstream", "https://x"]).upstream_uri().is_err());
    assert!(with(&["--upstream", "http://x/path"])
        .upstream_uri()
        .is_err());
    assert!(with(&["--rate-limit=-1"]).check_limits().is_err());
    assert!(with(&["--rate-burst", "0"]).check_limits().is_err());
    assert!(with(&["--max-connections", "0"]).check_limits().is_err());
    assert!(with(&["--credentials-timeout", "0s"])
        .check_limits()
        .is_err());
    assert!(with(&[]).check_limits().is_ok());
    assert!(with(&["--session-duration", "10m"]).check_limits().is_err());
    let test_sts = [
        "--sts-endpoint",
        "http://127.0.0.1:1",
        "--session-duration",
        "20s",
    ];
    assert!(with(&test_sts).check_limits().is_ok());
    assert!(with(&["--session-duration", "13h"]).check_limits().is_err());
    assert!(with(&["--refresh-fraction", "0.95"])
        .check_limits()
        .is_err());
    assert!(with(&["--sts-concurrency", "0"]).check_limits().is_err());
}

#[test]
fn every_numeric_flag_is_bounded() {
    let with = |extra: &[&str]| {
        let mut v = vec!["--listen-v4", "127.0.0.1:8181"];
        v.extend_from_slice(extra);
        args(&v).expect("parses")
    };
    for (flag, value) in [
        ("--max-connections", "2305843009213693952"),
        ("--max-connections", "65537"),
        ("--max-connections-per-pod", "0"),
        ("--max-connections-per-pod", "20000"),
        ("--max-waiting-per-pod", "20000"),
        ("--rate-limit", "1e300"),
        ("--rate-limit", "NaN"),
        ("--rate-limit", "inf"),
        ("--rate-burst", "1e12"),
        ("--sts-concurrency", "100000"),
        ("--sts-max-attempts", "1000"),
        ("--credentials-timeout", "1h"),
        ("--upstream-timeout", "0s"),
        ("--header-timeout", "1d"),
        ("--header-timeout", "301s"),
        ("--shutdown-grace", "11m"),
        ("--sts-backoff-max", "2h"),
        ("--sts-attempt-timeout", "61s"),
        ("--unused-grace", "0s"),
        ("--pod-wait", "31s"),
        ("--proxy-threads", "65"),
        ("--proxy-busy-poll", "2ms"),
        ("--refresh-fraction", "NaN"),
    ] {
        let Ok(a) = args(&["--listen-v4", "127.0.0.1:8181", flag, value]) else {
            // Refused by the parser itself, which also exits 64.
            continue;
        };
        match a.check_limits() {
            Err(Error::Limit { flag: f, .. }) => {
                assert_eq!(format!("--{f}"), flag, "{flag} {value}");
            }
            other => panic!("{flag} {value}: {other:?}"),
        }
    }
    let e = with(&["--max-connections", "2305843009213693952"])
        .check_limits()
        .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "--max-connections 2305843009213693952: must be between 1 and 65536"
    );
    assert!(with(&[
        "--max-connections",
        "65536",
        "--max-connections-per-pod",
        "65536"
    ])
    .check_limits()
    .is_ok());
    assert!(
        with(&["--max-connections", "10", "--max-connections-per-pod", "11"])
            .check_limits()
            .is_err()
    );
}

#[test]
fn bad_log_filter_and_bpffs_dir() {
    let a = args(&["--listen-v4", "127.0.0.1:8181", "--log", "iamlet=loud"]).expect("parses");
    assert!(matches!(a.validate(), Err(Error::LogFilter { .. })));
    let a = args(&["--listen-v4", "127.0.0.1:8181", "--bpffs-dir", "rel/dir"]).expect("parses");
    assert!(matches!(a.validate(), Err(Error::BpffsDir { .. })));
}

#[test]
fn validation_reads_nothing_and_loading_names_the_flag() {
    // Files that do not exist: validation does not look at them.
    let a = args(&[
        "--listen-v4",
        "127.0.0.1:8181",
        "--cgroup",
        "/no/such/cgroup",
        "--bindings",
        "/no/such/bindings.yaml",
        "--static-credentials",
        "/no/such/credentials.yaml",
    ])
    .expect("parses");
    let plan = a.validate().expect("valid flags");
    assert_eq!(
        plan.bindings.as_deref(),
        Some(Path::new("/no/such/bindings.yaml"))
    );
    // Loading reads them, and says which flag named what it could not read.
    let e = plan.load_with(false).expect_err("nothing to load");
    assert!(e.to_string().starts_with("--cgroup: "), "{e}");
}

#[test]
fn a_bad_sts_endpoint_is_its_own_error() {
    let a = args(&["--listen-v4", "127.0.0.1:8181", "--sts-endpoint", "ftp://x"]).expect("parses");
    assert!(matches!(a.validate(), Err(Error::StsEndpoint { .. })));
}

#[test]
fn busy_polling_is_off_unless_asked_for() {
    let plan = |extra: &[&str]| {
        let mut v = vec!["--listen-v4", "127.0.0.1:8181"];
        v.extend_from_slice(extra);
        args(&v).expect("parses").validate().expect("valid")
    };
    assert_eq!(plan(&[]).runtime.proxy_busy_poll, None);
    assert_eq!(
        plan(&["--proxy-busy-poll", "200us"])
            .runtime
            .proxy_busy_poll,
        Some(Duration::from_micros(200))
    );
    assert_eq!(
        plan(&["--proxy-busy-poll", "0"]).runtime.proxy_busy_poll,
        None
    );
}
