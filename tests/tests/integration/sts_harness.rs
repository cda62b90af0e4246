//! Self-tests of the STS harness: moto behind `sts-fault-proxy` in a fake node's namespace,
//! driven by boto3 from the SDK venv. Run as root:
//! `cargo test -p iamlet-tests --test integration -- --test-threads=1 sts_harness::`.

use std::time::{Duration, Instant};

use anyhow::Result;
use iamlet_tests::sts::{MOTO_ACCOUNT, REGION};
use iamlet_tests::{
    assume_role, boto3_sts, caller_identity, skip_unless_privileged, sts_available, Boto3Options,
    Boto3Outcome, Fault, FaultProxy, MotoSts, TestNode,
};
use serde_json::{json, Value};

const ROLE: &str = "arn:aws:iam::123456789012:role/app-a";
const OTHER_ROLE: &str = "arn:aws:iam::210987654321:role/team/app-b";

struct Sts {
    // Drop order: proxy, moto, then the node.
    proxy: FaultProxy,
    moto: MotoSts,
    node: TestNode,
}

fn start() -> Result<Sts> {
    sts_available().map_err(anyhow::Error::msg)?;
    let node = TestNode::new()?;
    let moto = MotoSts::start(&node)?;
    eprintln!("moto answered STS {:?} after start", moto.startup());
    let proxy = FaultProxy::start(&node, moto.addr())?;
    Ok(Sts { proxy, moto, node })
}

fn assume_params(session: &str) -> Value {
    json!({
        "RoleArn": ROLE,
        "RoleSessionName": session,
        "DurationSeconds": 900,
        "ExternalId": "ext-123",
        "Tags": [
            { "Key": "kubernetes-namespace", "Value": "default" },
            { "Key": "kubernetes-pod", "Value": "web-0" },
        ],
    })
}

fn call(sts: &Sts, session: &str, opts: &Boto3Options) -> Result<Boto3Outcome> {
    boto3_sts(
        &sts.node,
        &sts.proxy.endpoint(),
        "assume_role",
        &assume_params(session),
        opts,
    )
}

#[track_caller]
fn expect_client_error(outcome: &Boto3Outcome, want_code: &str, want_status: u16) {
    match outcome {
        Boto3Outcome::ClientError {
            code, http_status, ..
        } if code == want_code && *http_status == want_status => {}
        other => panic!("expected ClientError {want_code} ({want_status}), got {other:?}"),
    }
}

#[track_caller]
fn expect_ok(outcome: &Boto3Outcome) -> &Value {
    match outcome {
        Boto3Outcome::Ok { result, .. } => result,
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn assume_role_through_the_proxy_is_forwarded_and_logged() {
    skip_unless_privileged!();
    let sts = start().expect("starting moto STS and the fault proxy");
    let out =
        call(&sts, "pod-web-0", &Boto3Options::default()).expect("boto3 AssumeRole as pod-web-0");
    let result = expect_ok(&out);
    assert!(
        result["AssumedRoleUser"]["Arn"]
            == "arn:aws:sts::123456789012:assumed-role/app-a/pod-web-0",
        "{result}"
    );
    let key = result["Credentials"]["AccessKeyId"].as_str().unwrap_or("");
    assert!(key.starts_with("ASIA"), "moto's key {key:?}");

    let stats = sts.proxy.stats().expect("the fault proxy stats");
    assert!(stats.total == 1 && stats.faulted == 0, "{stats:?}");
    assert!(stats.assume_role_calls() == 1, "{stats:?}");
    assert!(stats.assume_role_calls_for(ROLE) == 1, "{stats:?}");
    assert!(sts.proxy.assume_role_calls() == 1);
    let logged = &stats.assume_role_log[0];
    assert!(logged.role_arn.as_deref() == Some(ROLE), "{logged:?}");
    assert!(
        logged.role_session_name.as_deref() == Some("pod-web-0"),
        "{logged:?}"
    );
    assert!(
        logged.external_id.as_deref() == Some("ext-123"),
        "{logged:?}"
    );
    assert!(logged.duration_seconds == Some(900), "{logged:?}");
    let tags: Vec<(&str, &str)> = logged
        .tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    assert!(
        tags == [
            ("kubernetes-namespace", "default"),
            ("kubernetes-pod", "web-0")
        ],
        "{logged:?}"
    );
    assert!(
        logged.signing_access_key_id.as_deref() == Some("testing"),
        "{logged:?}"
    );
    assert!(
        logged.signing_region.as_deref() == Some(REGION),
        "{logged:?}"
    );
    assert!(logged.fault == "none", "{logged:?}");

    // Other actions are counted by action, not logged as AssumeRole.
    boto3_sts(
        &sts.node,
        &sts.proxy.endpoint(),
        "get_caller_identity",
        &json!({}),
        &Boto3Options::default(),
    )
    .expect("running boto3 GetCallerIdentity through the proxy")
    .into_result()
    .expect("GetCallerIdentity through the proxy");
    let stats = sts.proxy.stats().expect("the fault proxy stats");
    assert!(stats.total == 2, "{stats:?}");
    assert!(
        stats.by_action.get("GetCallerIdentity") == Some(&1),
        "{stats:?}"
    );
    assert!(stats.assume_role_log.len() == 1, "{stats:?}");

    sts.proxy
        .reset_stats()
        .expect("resetting the fault proxy stats");
    assert!(
        sts.proxy.stats().expect("the fault proxy stats") == iamlet_tests::sts::Stats::default()
    );
}

#[test]
fn moto_credentials_identify_the_assumed_role() {
    skip_unless_privileged!();
    let sts = start().expect("starting moto STS and the fault proxy");
    for (role, session, want) in [
        (
            ROLE,
            "demo-web",
            "arn:aws:sts::123456789012:assumed-role/app-a/demo-web",
        ),
        // The account comes from the role ARN; the path is not part of the assumed-role ARN.
        (
            OTHER_ROLE,
            "demo-batch",
            "arn:aws:sts::210987654321:assumed-role/app-b/demo-batch",
        ),
    ] {
        let assumed = assume_role(&sts.node, &sts.proxy.endpoint(), role, session)
            .unwrap_or_else(|e| panic!("AssumeRole {role} as {session}: {e:#}"));
        assert!(assumed.arn == want, "{assumed:?}");
        for endpoint in [sts.proxy.endpoint(), sts.moto.endpoint()] {
            let id = caller_identity(&sts.node, &endpoint, &assumed.creds)
                .unwrap_or_else(|e| panic!("GetCallerIdentity at {endpoint}: {e:#}"));
            assert!(id.arn == want, "{endpoint}: {id:?}");
            assert!(
                id.user_id.starts_with("AROA") && id.user_id.ends_with(&format!(":{session}")),
                "{id:?}"
            );
        }
    }
    // Unknown credentials are moto's default user, not an error.
    let id = caller_identity(
        &sts.node,
        &sts.moto.endpoint(),
        &iamlet_tests::ClientCreds {
            access_key_id: "ASIAUNKNOWN000000000".into(),
            secret_access_key: "x".into(),
            session_token: Some("y".into()),
            expiration: None,
        },
    )
    .expect("GetCallerIdentity with unknown credentials");
    assert!(id.account == MOTO_ACCOUNT, "{id:?}");
}

#[test]
fn moto_expiration_follows_duration_seconds() {
    skip_unless_privileged!();
    let sts = start().expect("starting moto STS and the fault proxy");
    for duration in [900u64, 3600, 43_200] {
        let before = std::time::SystemTime::now();
        let params =
            json!({ "RoleArn": ROLE, "RoleSessionName": "exp", "DurationSeconds": duration });
        let out = boto3_sts(
            &sts.node,
            &sts.moto.endpoint(),
            "assume_role",
            &params,
            &Boto3Options::default(),
        )
        .unwrap_or_else(|e| panic!("boto3 AssumeRole at moto for {duration} s: {e:#}"));
        let expiration = expect_ok(&out)["Credentials"]["Expiration"]
            .as_str()
            .expect("no Expiration")
            .to_owned();
        // Ask Python for the offset, to avoid a date parser here.
        let check = sts.node.run(&[
            "python3",
            "-c",
            "import sys,datetime; e=datetime.datetime.fromisoformat(sys.argv[1]); print(e.timestamp())",
            &expiration,
        ]).expect("converting the expiration to a timestamp with python3");
        let expires: f64 = check
            .stdout
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{check}: {e}"));
        let start = before
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock before the epoch")
            .as_secs_f64();
        let offset = expires - start;
        assert!(
            (offset - duration as f64).abs() < 30.0,
            "DurationSeconds {duration}: expires {expiration}, {offset:.1} s after the call"
        );
    }
}

#[test]
fn faults_do_what_they_say() {
    skip_unless_privileged!();
    let sts = start().expect("starting moto STS and the fault proxy");
    let opts = Boto3Options::default();

    sts.proxy
        .set_fault(Fault::Throttle)
        .expect("setting fault Throttle");
    expect_client_error(
        &call(&sts, "throttled", &opts).expect("boto3 AssumeRole as throttled"),
        "Throttling",
        400,
    );

    for (code, name) in [(500, "InternalFailure"), (503, "ServiceUnavailable")] {
        sts.proxy
            .set_fault(Fault::Status(code))
            .expect("setting fault Status(code)");
        expect_client_error(
            &call(&sts, "status", &opts).expect("boto3 AssumeRole as status"),
            name,
            code,
        );
    }

    sts.proxy
        .set_fault(Fault::Deny)
        .expect("setting fault Deny");
    expect_client_error(
        &call(&sts, "denied", &opts).expect("boto3 AssumeRole as denied"),
        "AccessDenied",
        403,
    );

    sts.proxy
        .set_fault(Fault::Reset)
        .expect("setting fault Reset");
    match call(&sts, "reset", &opts).expect("boto3 AssumeRole as reset") {
        Boto3Outcome::ConnectionError { kind, .. } if kind == "ConnectionClosedError" => {}
        other => panic!("reset: {other:?}"),
    }

    sts.proxy
        .set_fault(Fault::Hang)
        .expect("setting fault Hang");
    let short = Boto3Options {
        read_timeout: Duration::from_secs(1),
        ..Boto3Options::default()
    };
    match call(&sts, "hang", &short).expect("boto3 AssumeRole as hang") {
        Boto3Outcome::ConnectionError {
            kind, elapsed_ms, ..
        } if kind == "ReadTimeoutError" && elapsed_ms >= 900.0 => {}
        other => panic!("hang: {other:?}"),
    }

    sts.proxy
        .set_fault(Fault::Latency(Duration::from_millis(1500)))
        .expect("setting a latency of 1.5 s");
    let out = call(&sts, "slow", &opts).expect("boto3 AssumeRole as slow");
    expect_ok(&out);
    assert!(
        out.elapsed() >= Duration::from_millis(1500),
        "latency: {:?}",
        out.elapsed()
    );

    sts.proxy.clear().expect("clearing the fault");
    let out = call(&sts, "cleared", &opts).expect("boto3 AssumeRole as cleared");
    expect_ok(&out);
    assert!(
        out.elapsed() < Duration::from_millis(1500),
        "{:?}",
        out.elapsed()
    );

    let stats = sts.proxy.stats().expect("the fault proxy stats");
    let faults: Vec<&str> = stats
        .assume_role_log
        .iter()
        .map(|c| c.fault.as_str())
        .collect();
    assert!(
        faults == ["throttle", "status", "status", "deny", "reset", "hang", "latency", "none"],
        "{faults:?}"
    );
    assert!(stats.faulted == 7 && stats.total == 8, "{stats:?}");
}

#[test]
fn only_action_limits_the_fault() {
    skip_unless_privileged!();
    let sts = start().expect("starting moto STS and the fault proxy");
    let opts = Boto3Options::default();
    sts.proxy
        .set_fault_only(Fault::Deny, "AssumeRole")
        .expect("setting fault Deny for AssumeRole");
    expect_client_error(
        &call(&sts, "denied", &opts).expect("boto3 AssumeRole as denied"),
        "AccessDenied",
        403,
    );
    boto3_sts(
        &sts.node,
        &sts.proxy.endpoint(),
        "get_caller_identity",
        &json!({}),
        &opts,
    )
    .expect("running boto3 GetCallerIdentity through the proxy")
    .into_result()
    .expect("GetCallerIdentity must pass");
    let stats = sts.proxy.stats().expect("the fault proxy stats");
    assert!(stats.faulted == 1 && stats.total == 2, "{stats:?}");
}

#[test]
fn hang_is_released_when_cleared_and_retries_see_the_new_fault() {
    skip_unless_privileged!();
    let sts = start().expect("starting moto STS and the fault proxy");
    sts.proxy
        .set_fault(Fault::Hang)
        .expect("setting fault Hang");
    let started = Instant::now();
    let hung = std::thread::scope(|scope| -> Result<Boto3Outcome> {
        let handle = scope.spawn(|| {
            call(
                &sts,
                "held",
                &Boto3Options {
                    read_timeout: Duration::from_secs(20),
                    ..Boto3Options::default()
                },
            )
        });
        sts.proxy
            .wait_assume_role_calls(1, Duration::from_secs(15))?;
        std::thread::sleep(Duration::from_millis(300));
        sts.proxy.clear()?;
        handle.join().expect("boto3 thread panicked")
    })
    .expect("a call held by the hang, released by clearing the fault");
    // The held connection is reset when the fault changes, well before the read timeout.
    match &hung {
        Boto3Outcome::ConnectionError { kind, .. } if kind == "ConnectionClosedError" => {}
        other => panic!("held call: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15), "{hung:?}");

    // A retrying client's attempts are each counted: 3 attempts, all throttled.
    sts.proxy
        .set_fault(Fault::Throttle)
        .expect("setting fault Throttle");
    let retrying = Boto3Options {
        max_attempts: 3,
        ..Boto3Options::default()
    };
    expect_client_error(
        &call(&sts, "retry", &retrying).expect("boto3 AssumeRole as retry"),
        "Throttling",
        400,
    );
    assert!(
        sts.proxy.assume_role_calls() == 4,
        "{:?}",
        sts.proxy.stats().expect("the fault proxy stats")
    );
}
