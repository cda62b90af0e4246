//! The metadata API end to end: real SDK clients in fake pods, through the eBPF redirect, with
//! no AWS settings in the pod; token binding; node credentials never reaching a pod; limits.
//! Run as root through `cargo xtask test` (serially).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use iamlet_tests::fake_imds::{INSTANCE_ID, NODE_ACCESS_KEY, NODE_ACCOUNT, NODE_SECRET};
use iamlet_tests::{
    fetch_credentials, http_each, http_with, sdk_available, skip_unless_privileged, Agent,
    FakeImds, FakePod, Family, Sdk, TestNode,
};

const UID_A: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_B: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";
const UID_NONE: &str = "99999999-8888-4777-8666-555555555555";
const ROLE_A: &str = "arn:aws:iam::123456789012:role/app-a";
const ROLE_B: &str = "arn:aws:iam::123456789012:role/app-b";
const KEY_A: &str = "ASIAPODAEXAMPLE00001";
const KEY_B: &str = "ASIAPODBEXAMPLE00002";

fn pod_cgroup(uid: &str, container: u64) -> String {
    iamlet_tests::besteffort_container_cgroup(uid, container)
}

/// Config files for the agent: two roles bound to two pods, static credentials for both.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn write() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "iamlet-imds-test-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        let bindings = format!(
            "bindings:\n  - cgroup: \"kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice\"\n    role: {ROLE_A}\n  - cgroup: \"**/kubepods-besteffort-pod{}.slice\"\n    role: app-b\n",
            UID_A.replace('-', "_"),
            UID_B.replace('-', "_"),
        );
        std::fs::write(dir.join("bindings.yaml"), bindings)?;
        let creds = format!(
            "credentials:\n  {ROLE_A}:\n    access_key_id: {KEY_A}\n    secret_access_key: secret-a\n    session_token: token-a\n  {ROLE_B}:\n    access_key_id: {KEY_B}\n    secret_access_key: secret-b\n    session_token: token-b\n"
        );
        std::fs::write(dir.join("creds.yaml"), creds)?;
        Ok(Files { dir })
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--bindings".into(),
            self.dir.join("bindings.yaml").display().to_string(),
            "--static-credentials".into(),
            self.dir.join("creds.yaml").display().to_string(),
            "--base-role-arn".into(),
            "arn:aws:iam::123456789012:role/".into(),
        ]
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(node: &TestNode, files: &Files, extra: &[&str]) -> Result<Agent> {
    let mut args = files.args();
    args.extend(extra.iter().map(std::string::ToString::to_string));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(node, &refs)
}

fn get(pod: &FakePod, path: &str, headers: &[(&str, &str)]) -> Result<iamlet_tests::HttpAnswer> {
    pod.imds("GET", path, headers)
}

fn put_token(pod: &FakePod, ttl: &str) -> Result<iamlet_tests::HttpAnswer> {
    http_with(
        pod.command("python3"),
        Family::V4,
        "169.254.169.254",
        80,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
    )
}

#[test]
fn sdk_clients_get_their_own_pods_credentials() {
    skip_unless_privileged!();
    for sdk in Sdk::ALL {
        sdk_available(sdk).unwrap_or_else(|e| panic!("{e}"));
    }
    let node = TestNode::new().expect("creating the test node");
    let a = node.add_pod(&pod_cgroup(UID_A, 1)).expect("adding pod a");
    let b = node.add_pod(&pod_cgroup(UID_B, 2)).expect("adding pod b");
    let files = Files::write().expect("writing the agent config files");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let agent = start(&node, &files, &[]).expect("starting the agent");
    for sdk in Sdk::ALL {
        for (pod, key, secret) in [(&a, KEY_A, "secret-a"), (&b, KEY_B, "secret-b")] {
            let creds = fetch_credentials(pod, sdk)
                .unwrap_or_else(|e| panic!("{} in {}: {e:#}", sdk.name(), pod.name()));
            assert!(
                creds.access_key_id == key && creds.secret_access_key == secret,
                "{} in {} got {:?}",
                sdk.name(),
                pod.name(),
                creds.access_key_id
            );
        }
    }
    let log = agent.log_text();
    assert!(!log.contains(NODE_SECRET), "node secret in the agent log");
}

#[test]
fn imdsv1_is_refused_when_v2_is_required() {
    skip_unless_privileged!();
    sdk_available(Sdk::Boto3).unwrap_or_else(|e| panic!("{e}"));
    let node = TestNode::new().expect("creating the test node");
    let a = node.add_pod(&pod_cgroup(UID_A, 1)).expect("adding pod a");
    let files = Files::write().expect("writing the agent config files");
    let _agent = start(&node, &files, &["--require-imdsv2", "--upstream", "off"])
        .expect("starting the agent");
    let creds = fetch_credentials(&a, Sdk::Boto3).expect("credentials through boto3 in a");
    assert!(creds.access_key_id == KEY_A, "v2 still works: {creds:?}");
    assert!(
        fetch_credentials(&a, Sdk::Boto3ImdsV1).is_err(),
        "a tokenless client got credentials"
    );
    let answer = get(&a, "/latest/meta-data/iam/security-credentials/", &[])
        .expect("GET /latest/meta-data/iam/security-credentials/ from a");
    assert!(answer.status == 401, "tokenless GET: {answer:?}");
}

#[test]
fn a_token_works_only_in_the_pod_that_minted_it() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let a = node.add_pod(&pod_cgroup(UID_A, 1)).expect("adding pod a");
    let b = node.add_pod(&pod_cgroup(UID_B, 2)).expect("adding pod b");
    let files = Files::write().expect("writing the agent config files");
    let _agent = start(&node, &files, &["--upstream", "off"]).expect("starting the agent");

    let minted = put_token(&a, "300").expect("PUT token (ttl 300) from a");
    assert!(minted.status == 200, "PUT: {minted:?}");
    assert!(
        minted.header("x-aws-ec2-metadata-token-ttl-seconds") == Some("300"),
        "TTL not echoed: {:?}",
        minted.headers
    );
    let token = minted.body.trim().to_string();
    let with = [("X-aws-ec2-metadata-token", token.as_str())];
    let path = "/latest/meta-data/iam/security-credentials/";
    let from_a = get(&a, path, &with).expect("GET the role list from A with its token");
    assert!(
        from_a.status == 200 && from_a.body == "app-a",
        "A: {from_a:?}"
    );
    let from_b = get(&b, path, &with).expect("GET the role list from B with A's token");
    assert!(from_b.status == 401, "replayed in B: {from_b:?}");
    let creds_b = get(
        &b,
        "/latest/meta-data/iam/security-credentials/app-a",
        &with,
    )
    .expect("GET app-a's credentials from B with A's token");
    assert!(creds_b.status == 401, "B with A's token: {creds_b:?}");
    // B's own token gets B's role, and A's role name is 404 for B.
    let tb = put_token(&b, "60").expect("PUT token (ttl 60) from b").body;
    let own = [("X-aws-ec2-metadata-token", tb.trim())];
    assert!(
        get(&b, path, &own)
            .expect("GET the role list from B with its token")
            .body
            == "app-b"
    );
    assert!(
        get(&b, "/latest/meta-data/iam/security-credentials/app-a", &own)
            .expect("GET app-a's credentials from B with its token")
            .status
            == 404
    );
    // Refusals of the PUT itself.
    assert!(put_token(&a, "0").expect("PUT token (ttl 0) from a").status == 400);
    assert!(
        put_token(&a, "21601")
            .expect("PUT token (ttl 21601) from a")
            .status
            == 400
    );
    let xff = http_with(
        a.command("python3"),
        Family::V4,
        "169.254.169.254",
        80,
        "PUT",
        "/latest/api/token",
        &[
            ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    )
    .expect("PUT a token with X-Forwarded-For");
    assert!(xff.status == 403, "PUT with X-Forwarded-For: {xff:?}");
    // A real SDK's whole IMDSv2 flow (token, role list, credentials) in each pod gets that
    // pod's own credentials. The AWS SDK for Rust: it starts in well under a second, also in
    // the kernel-matrix VMs, which run this test on every kernel.
    for (pod, key) in [(&a, KEY_A), (&b, KEY_B)] {
        let creds = fetch_credentials(pod, Sdk::Rust)
            .unwrap_or_else(|e| panic!("the Rust SDK in {}: {e:#}", pod.name()));
        assert!(creds.access_key_id == key, "{} got {creds:?}", pod.name());
    }
}

/// Every way a pod might try to reach the node's credentials.
const LEAK_PATHS: &[&str] = &[
    "/latest/meta-data/iam/security-credentials/",
    "/latest/meta-data/iam/security-credentials/node-role",
    "/latest/meta-data/iam/security-credentials-extended/node-role",
    "/latest/meta-data/iam/info",
    "/latest/meta-data/iam/",
    "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
    "/latest/meta-data/identity-credentials/ec2/info",
    "/latest/meta-data/%69am/security-credentials/node-role",
    "/latest/meta-data/IAM/security-credentials/node-role",
    "/latest/meta-data/placement/../iam/security-credentials/node-role",
    "//latest//meta-data//iam//security-credentials//node-role",
    "/latest/meta-data/./iam/info",
    "/2016-09-02/meta-data/iam/security-credentials/node-role",
    "/1.0/meta-data/iam/security-credentials/node-role",
    "/meta-data/iam/security-credentials/node-role",
    "/latest/user-data",
    "/latest/dynamic/../meta-data/iam/security-credentials/node-role",
    "/latest/meta-data/iam/security-credentials/node-role?x=1",
    // Paths whose meaning depends on who decodes them (the stand-in decodes once more,
    // turns backslashes into slashes, drops `;` parameters and ignores letter case).
    "/latest/meta-data/placement/%252e%252e/%2569am/info",
    "/latest/meta-data/placement/%252e%252e/%2569am/security-credentials/",
    "/latest/meta-data/placement/..\\iam/info",
    "/latest/meta-data/placement/..%5ciam/security-credentials/node-role",
    "/latest/meta-data/placement/..%2fiam/info",
    "/latest/meta-data/%49AM/info",
    "/latest/meta-data/IAM/security-credentials/",
    "/latest/meta-data/iam;/info",
    "/latest/meta-data/placement;/../iam/info",
    "/latest/meta-data/placement/node-role",
    "/latest/USER-DATA",
];

#[track_caller]
fn assert_no_leak(pod: &FakePod, agent: &Agent) {
    for family in [Family::V4, Family::V6] {
        let host = if family == Family::V4 {
            "169.254.169.254"
        } else {
            "fd00:ec2::254"
        };
        let answers = http_each(pod.command("python3"), family, host, 80, "GET", LEAK_PATHS)
            .unwrap_or_else(|e| panic!("{} GET each leak path ({family:?}): {e:#}", pod.name()));
        for (path, answer) in LEAK_PATHS.iter().zip(answers) {
            assert!(
                !answer.body.contains(NODE_SECRET) && !answer.body.contains(NODE_ACCESS_KEY),
                "{} got the node's credentials from {path} ({family:?}): {answer:?}",
                pod.name()
            );
            assert!(
                !answer.body.contains("instance-profile/node-role")
                    && answer.body.trim() != "node-role",
                "{} got the node's role from {path} ({family:?}): {answer:?}",
                pod.name()
            );
        }
    }
    assert!(
        !agent.log_text().contains(NODE_SECRET),
        "node secret in the agent log"
    );
}

#[test]
fn node_credentials_never_reach_a_pod() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let with_role = node
        .add_pod(&pod_cgroup(UID_A, 1))
        .expect("adding pod with_role");
    let without_role = node
        .add_pod(&pod_cgroup(UID_NONE, 3))
        .expect("adding pod without_role");
    let files = Files::write().expect("writing the agent config files");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    // The stand-in does hand out node credentials to whoever reaches it directly (here the
    // node itself, outside the pods' cgroup).
    let direct = http_with(
        node.command("python3"),
        Family::V4,
        "169.254.169.254",
        80,
        "GET",
        "/latest/meta-data/iam/security-credentials/node-role",
        &[("X-aws-ec2-metadata-token", "node-upstream-token")],
    )
    .expect("the node's credentials from the stand-in IMDS, directly");
    assert!(
        direct.body.contains(NODE_SECRET),
        "stand-in broken: {direct:?}"
    );

    for extra in [&[][..], &["--allow-path", ".*"][..]] {
        let agent = start(&node, &files, extra).expect("starting the agent");
        // Passthrough works (the agent uses its own upstream token)...
        let id = get(&with_role, "/latest/meta-data/instance-id", &[])
            .expect("GET /latest/meta-data/instance-id from with_role");
        assert!(
            id.status == 200 && id.body == INSTANCE_ID,
            "passthrough: {id:?}"
        );
        // ...but never for credentials.
        assert_no_leak(&with_role, &agent);
        assert_no_leak(&without_role, &agent);
        // An SDK in a pod without a role gets an error, not the node's role (the AWS SDK for
        // Rust, quick to start also in the kernel-matrix VMs).
        if sdk_available(Sdk::Rust).is_ok() {
            let got = fetch_credentials(&without_role, Sdk::Rust);
            assert!(got.is_err(), "pod without a role got credentials: {got:?}");
        }
        drop(agent);
    }
}

#[test]
fn agent_inside_the_pods_cgroup_still_reaches_the_real_service() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let agent_pod = node
        .add_host_network_pod("iamlet-agent")
        .expect("adding host-network pod iamlet-agent");
    let a = node.add_pod(&pod_cgroup(UID_A, 1)).expect("adding pod a");
    let files = Files::write().expect("writing the agent config files");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let mut args = files.args();
    args.push("--log".into());
    args.push("debug".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // Plain, and in a private cgroup namespace (how non-privileged containers run on cgroup
    // v2), where /proc/self/cgroup only says "0::/".
    for private_cgroupns in [false, true] {
        let agent = if private_cgroupns {
            Agent::start_in_pod_cgroupns(&node, &agent_pod, &refs)
                .expect("starting the agent in its pod (own cgroup namespace)")
        } else {
            Agent::start_in_pod(&node, &agent_pod, &refs).expect("starting the agent in its pod")
        };
        assert!(
            agent.log_text().contains("its own connects are exempt"),
            "exemption not logged (cgroupns {private_cgroupns}):\n{}",
            agent.log_text()
        );
        let id = get(&a, "/latest/meta-data/instance-id", &[])
            .expect("GET /latest/meta-data/instance-id from a");
        assert!(
            id.status == 200 && id.body == INSTANCE_ID,
            "passthrough from inside: {id:?}"
        );
        assert_no_leak(&a, &agent);
        // Other processes of the node stay redirected.
        let who = get(&a, "/iamlet/whoami", &[]).expect("GET /iamlet/whoami from a");
        assert!(who.status == 200, "{who:?}");
        drop(agent);
    }
}

#[test]
fn bare_role_names_use_the_nodes_account() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let a = node.add_pod(&pod_cgroup(UID_A, 1)).expect("adding pod a");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let dir = Files::write().expect("writing the agent config files");
    let bindings = dir.dir.join("bare.yaml");
    std::fs::write(
        &bindings,
        format!(
            "bindings:\n  - cgroup: \"**/kubepods-besteffort-pod{}.slice\"\n    role: team/bare-role\n",
            UID_A.replace('-', "_")
        ),
    ).expect("writing the bindings");
    let role = format!("arn:aws:iam::{NODE_ACCOUNT}:role/team/bare-role");
    let creds = dir.dir.join("bare-creds.yaml");
    std::fs::write(
        &creds,
        format!("credentials:\n  {role}:\n    access_key_id: ASIABARE\n    secret_access_key: s\n    session_token: t\n"),
    ).expect("writing the static credentials");
    let b = bindings.display().to_string();
    let c = creds.display().to_string();
    let _agent = Agent::start(&node, &["--bindings", &b, "--static-credentials", &c])
        .expect("starting the agent");
    let listing = get(&a, "/latest/meta-data/iam/security-credentials/", &[])
        .expect("GET /latest/meta-data/iam/security-credentials/ from a");
    assert!(listing.body == "bare-role", "{listing:?}");
    let info =
        get(&a, "/latest/meta-data/iam/info", &[]).expect("GET /latest/meta-data/iam/info from a");
    assert!(
        info.body.contains(&format!(
            "arn:aws:iam::{NODE_ACCOUNT}:instance-profile/team/bare-role"
        )),
        "{info:?}"
    );
    let got = get(
        &a,
        "/latest/meta-data/iam/security-credentials/bare-role",
        &[],
    )
    .expect("GET /latest/meta-data/iam/security-credentials/bare-role from a");
    assert!(got.body.contains("ASIABARE"), "{got:?}");
    // Without a way to learn the account, the agent refuses to start, saying why.
    let out = std::process::Command::new(iamlet_tests::agent::agent_bin())
        .args(["--listen-v4", "127.0.0.1:1", "--cgroup"])
        .arg(node.pods_cgroup())
        .args(["--bindings", &b, "--upstream", "off"])
        .output()
        .expect("running iamlet without a way to learn the account");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(64) && err.contains("bare name"),
        "{err}"
    );
}
