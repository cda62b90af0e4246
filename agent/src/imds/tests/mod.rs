//! Unit tests of every route, status code and header of the metadata API.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::*;
use crate::credentials::RenderedDocs;
use crate::role::BoxFuture;

const ROLE_A: &str = "arn:aws:iam::123456789012:role/team/role-a";
// The header names as a client writes them (the module's own are `HeaderName`s).
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

#[derive(Debug)]
struct MapRoles(HashMap<u64, RoleBinding>);

impl RoleResolver for MapRoles {
    fn role_for<'a>(&'a self, caller: &'a Caller) -> crate::role::RoleAnswer<'a> {
        let found = self.0.get(&caller.cgroup_id).cloned().map(Arc::new);
        crate::role::answer_now(Ok(found))
    }
}

#[derive(Debug)]
struct MapCreds;

impl CredentialSource for MapCreds {
    fn credentials<'a>(
        &'a self,
        binding: &'a RoleBinding,
    ) -> BoxFuture<'a, Result<Arc<Credentials>, CredentialError>> {
        Box::pin(async move {
            match binding.role_name() {
                "role-a" => Ok(Arc::new(Credentials {
                    access_key_id: "ASIAPODA".into(),
                    secret_access_key: "secret-a".into(),
                    session_token: "token-a".into(),
                    expiration: UNIX_EPOCH + Duration::from_secs(4_102_444_800),
                    last_updated: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                    rendered: RenderedDocs::default(),
                })),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Err(CredentialError::new("Never", "never"))
                }
                _ => Err(CredentialError::new(
                    "AccessDenied",
                    "not authorized to perform sts:AssumeRole",
                )),
            }
        })
    }
}

fn binding(arn: &str) -> RoleBinding {
    RoleBinding {
        role_arn: arn.into(),
        session_name: "s".into(),
        external_id: None,
        session_tags: Vec::new(),
    }
}

fn caller(cgroup_id: u64, pod_uid: Option<&str>) -> Caller {
    Caller::redirected(cgroup_id, &format!("/pods/{cgroup_id}"), pod_uid)
}

const POD_A: u64 = 1;
const POD_B: u64 = 2;
const NO_ROLE: u64 = 3;
const DENIED: u64 = 4;
const SLOW: u64 = 5;

fn settings() -> ImdsSettings {
    ImdsSettings {
        require_imdsv2: false,
        allow: AllowList::new(paths::DEFAULT_ALLOW).expect("allow"),
        rate_limit: 0.0,
        rate_burst: 1.0,
        credentials_timeout: Duration::from_millis(200),
    }
}

fn imds_with(settings: ImdsSettings, upstream: Option<Upstream>) -> Imds {
    let roles = MapRoles(HashMap::from([
        (POD_A, binding(ROLE_A)),
        (POD_B, binding("arn:aws:iam::123456789012:role/role-b")),
        (DENIED, binding("arn:aws:iam::123456789012:role/denied")),
        (SLOW, binding("arn:aws:iam::123456789012:role/slow")),
    ]));
    Imds::new(
        settings,
        TokenKey::from_bytes([9; 32]),
        Arc::new(roles),
        Arc::new(MapCreds),
        upstream,
    )
}

fn imds() -> Imds {
    imds_with(settings(), None)
}

async fn call(imds: &Imds, c: &Caller, method: Method, path: &str, hdrs: &[(&str, &str)]) -> Resp {
    // A fresh connection for each request, as a client that does not keep its connections.
    call_on(imds, c, &Session::new(c), method, path, hdrs).await
}

/// One request on the connection whose state is `conn`.
async fn call_on(
    imds: &Imds,
    c: &Caller,
    conn: &Session,
    method: Method,
    path: &str,
    hdrs: &[(&str, &str)],
) -> Resp {
    let mut headers = HeaderMap::new();
    for (k, v) in hdrs {
        headers.insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    imds.handle(c, conn, (&method, path, &headers), clock::now())
        .await
        .resp
}

/// `GET path` without headers.
async fn get(imds: &Imds, c: &Caller, path: &str) -> Resp {
    call(imds, c, Method::GET, path, &[]).await
}

/// The body of `resp`, parsed as JSON.
async fn json(resp: Resp) -> serde_json::Value {
    serde_json::from_str(&body(resp).await).expect("json")
}

async fn body(resp: Resp) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

async fn get_token(imds: &Imds, c: &Caller) -> String {
    let resp = call(
        imds,
        c,
        Method::PUT,
        "/latest/api/token",
        &[(TTL_HEADER, "21600")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    body(resp).await
}

#[tokio::test]
async fn token_put_mints_and_echoes_ttl() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let resp = call(
        &imds,
        &a,
        Method::PUT,
        "/latest/api/token",
        &[(TTL_HEADER, "60")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[TTL_HEADER], "60");
    assert!(!body(resp).await.is_empty());
    // A TTL written otherwise is echoed as its number.
    for (asked, echoed) in [("021600", "21600"), ("  300 ", "300")] {
        let headers: &[(&str, &str)] = &[(TTL_HEADER, asked)];
        let resp = call(&imds, &a, Method::PUT, "/latest/api/token", headers).await;
        assert_eq!(resp.status(), 200, "{asked:?}");
        assert_eq!(resp.headers()[TTL_HEADER], echoed, "{asked:?}");
    }
    // Any version prefix.
    let resp = call(
        &imds,
        &a,
        Method::PUT,
        "/2021-07-15/api/token",
        &[(TTL_HEADER, "1")],
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn token_put_refusals() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let put = |h: &'static [(&'static str, &'static str)]| {
        call(&imds, &a, Method::PUT, "/latest/api/token", h)
    };
    assert_eq!(put(&[]).await.status(), 400);
    assert_eq!(put(&[(TTL_HEADER, "0")]).await.status(), 400);
    assert_eq!(put(&[(TTL_HEADER, "21601")]).await.status(), 400);
    assert_eq!(put(&[(TTL_HEADER, "ten")]).await.status(), 400);
    assert_eq!(
        put(&[(TTL_HEADER, "60"), ("x-forwarded-for", "10.0.0.1")])
            .await
            .status(),
        403
    );
    let resp = get(&imds, &a, "/latest/api/token").await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "PUT");
}

#[tokio::test(start_paused = true)]
async fn a_connection_keeps_its_token_only_until_it_expires() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let conn = Session::new(&a);
    let path = "/latest/meta-data/iam/security-credentials/";
    let on_conn = |token: String| {
        let (imds, a, conn) = (&imds, &a, &conn);
        async move {
            let with = [(TOKEN_HEADER, token.as_str())];
            call_on(imds, a, conn, Method::GET, path, &with)
                .await
                .status()
        }
    };
    let minted = call(
        &imds,
        &a,
        Method::PUT,
        "/latest/api/token",
        &[(TTL_HEADER, "2")],
    )
    .await;
    let token = body(minted).await;
    assert_eq!(on_conn(token.clone()).await, 200);
    assert_eq!(on_conn(token.clone()).await, 200, "the same token again");
    assert_eq!(on_conn("not-a-token".into()).await, 401);
    assert_eq!(on_conn(token.clone()).await, 200, "checked again");
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(on_conn(token).await, 401, "expired on the connection too");
    // What the connection remembers is what it trusts (no second check on it).
    conn.tokens().remember(b"remembered", u64::MAX);
    assert_eq!(on_conn("remembered".into()).await, 200);
}

#[tokio::test]
async fn tokens_are_bound_to_the_pod() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let a_other_container = caller(11, Some("uid-a"));
    let b = caller(POD_B, Some("uid-b"));
    let t = get_token(&imds, &a).await;
    let path = "/latest/meta-data/iam/security-credentials/";
    let with = [(TOKEN_HEADER, t.as_str())];
    assert_eq!(
        call(&imds, &a, Method::GET, path, &with).await.status(),
        200
    );
    // Same pod, other container cgroup: same subject.
    assert_eq!(
        call(
            &imds,
            &a_other_container,
            Method::GET,
            "/iamlet/whoami",
            &with
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        call(&imds, &b, Method::GET, path, &with).await.status(),
        401
    );
    // Checked again on every connection: it never lets another pod in.
    assert_eq!(
        call(&imds, &a, Method::GET, path, &with).await.status(),
        200
    );
    assert_eq!(
        call(&imds, &b, Method::GET, path, &with).await.status(),
        401
    );
    let junk = [(TOKEN_HEADER, "not-a-token")];
    assert_eq!(
        call(&imds, &a, Method::GET, path, &junk).await.status(),
        401
    );
    // Outside a pod, the cgroup is the subject.
    let bare = caller(77, None);
    let t_bare = get_token(&imds, &bare).await;
    let other_bare = caller(78, None);
    let w = [(TOKEN_HEADER, t_bare.as_str())];
    assert_eq!(
        call(&imds, &bare, Method::GET, "/iamlet/whoami", &w)
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&imds, &other_bare, Method::GET, "/iamlet/whoami", &w)
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let old = imds
        .tokens
        .mint(Session::new(&a).binding(), unix_now() - 100, 10);
    let h = [(TOKEN_HEADER, old.as_str())];
    let resp = call(
        &imds,
        &a,
        Method::GET,
        "/latest/meta-data/iam/security-credentials/",
        &h,
    )
    .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn imdsv1_allowed_by_default_and_refused_when_v2_required() {
    let path = "/latest/meta-data/iam/security-credentials/";
    let a = caller(POD_A, Some("uid-a"));
    let open = imds();
    assert_eq!(get(&open, &a, path).await.status(), 200);
    let strict = imds_with(
        ImdsSettings {
            require_imdsv2: true,
            ..settings()
        },
        None,
    );
    assert_eq!(get(&strict, &a, path).await.status(), 401);
    let t = get_token(&strict, &a).await;
    let resp = call(&strict, &a, Method::GET, path, &[(TOKEN_HEADER, &t)]).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn role_listing_with_and_without_slash() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    for path in [
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials",
        "/2016-09-02/meta-data/iam/security-credentials/",
    ] {
        let resp = get(&imds, &a, path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(body(resp).await, "role-a");
    }
    let none = caller(NO_ROLE, Some("uid-n"));
    let resp = get(&imds, &none, "/latest/meta-data/iam/security-credentials/").await;
    assert_eq!(resp.status(), 404);
    let resp = get(&imds, &none, "/latest/meta-data/iam/info").await;
    assert_eq!(resp.status(), 404);
    let resp = get(&imds, &a, "/latest/meta-data/iam/").await;
    assert_eq!(body(resp).await, "info\nsecurity-credentials/");
}

#[tokio::test]
async fn credentials_document_has_exactly_the_imds_fields() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let resp = get(
        &imds,
        &a,
        "/latest/meta-data/iam/security-credentials/role-a",
    )
    .await;
    assert_eq!(resp.status(), 200);
    let doc = json(resp).await;
    let mut keys: Vec<&str> = doc
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "AccessKeyId",
            "Code",
            "Expiration",
            "LastUpdated",
            "SecretAccessKey",
            "Token",
            "Type"
        ]
    );
    assert_eq!(doc["Code"], "Success");
    assert_eq!(doc["Type"], "AWS-HMAC");
    assert_eq!(doc["AccessKeyId"], "ASIAPODA");
    assert_eq!(doc["Expiration"], "2100-01-01T00:00:00Z");
    assert_eq!(doc["LastUpdated"], "2023-11-14T22:13:20Z");
    // Any other role name, and trailing junk, are 404.
    for path in [
        "/latest/meta-data/iam/security-credentials/role-b",
        "/latest/meta-data/iam/security-credentials/node-role",
        "/latest/meta-data/iam/security-credentials/role-a/x",
    ] {
        assert_eq!(get(&imds, &a, path).await.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn extended_credentials_add_the_account() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let resp = get(
        &imds,
        &a,
        "/latest/meta-data/iam/security-credentials-extended/",
    )
    .await;
    assert_eq!(body(resp).await, "role-a");
    let resp = get(
        &imds,
        &a,
        "/latest/meta-data/iam/security-credentials-extended/role-a",
    )
    .await;
    let doc = json(resp).await;
    assert_eq!(doc["AccountId"], "123456789012");
    assert_eq!(doc["AccessKeyId"], "ASIAPODA");
    // Each form is rendered once per credentials, apart: the plain one after the extended
    // one has no account, and asked again it is the same bytes.
    let plain = "/latest/meta-data/iam/security-credentials/role-a";
    let first = body(get(&imds, &a, plain).await).await;
    let doc: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert!(doc.get("AccountId").is_none(), "{first}");
    assert_eq!(doc["AccessKeyId"], "ASIAPODA");
    assert_eq!(body(get(&imds, &a, plain).await).await, first);
}

#[tokio::test(start_paused = true)]
async fn credential_errors_are_500_with_a_code() {
    let imds = imds();
    let d = caller(DENIED, Some("uid-d"));
    let resp = get(
        &imds,
        &d,
        "/latest/meta-data/iam/security-credentials/denied",
    )
    .await;
    assert_eq!(resp.status(), 500);
    let doc = json(resp).await;
    assert_eq!(doc["Code"], "AccessDenied");
    assert!(doc["Message"]
        .as_str()
        .expect("message")
        .contains("AssumeRole"));
    let s = caller(SLOW, Some("uid-s"));
    let started = crate::clock::now();
    let resp = get(&imds, &s, "/latest/meta-data/iam/security-credentials/slow").await;
    assert_eq!(resp.status(), 500);
    // The slow source is given exactly --credentials-timeout (200 ms here), not its 30 s.
    assert_eq!(crate::clock::since(started), Duration::from_millis(200));
    let doc = json(resp).await;
    assert_eq!(doc["Code"], "RequestTimeout");
}

#[tokio::test]
async fn iam_info_document() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let resp = get(&imds, &a, "/latest/meta-data/iam/info").await;
    assert_eq!(resp.status(), 200);
    let doc = json(resp).await;
    assert_eq!(doc["Code"], "Success");
    assert_eq!(
        doc["InstanceProfileArn"],
        "arn:aws:iam::123456789012:instance-profile/team/role-a"
    );
    let id = doc["InstanceProfileId"].as_str().expect("id");
    assert!(id.starts_with("AIPA") && id.len() == 21, "{id}");
    assert!(doc["LastUpdated"].as_str().expect("t").ends_with('Z'));
}

#[tokio::test]
async fn methods_paths_and_rate_limits() {
    let imds = imds();
    let a = caller(POD_A, Some("uid-a"));
    let resp = call(&imds, &a, Method::POST, "/latest/meta-data/iam/info", &[]).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(get(&imds, &a, "/latest/%ff").await.status(), 400);
    for forbidden in [
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "/latest/meta-data/iam/security-credentials/role-a/../../iam-x",
        "/latest/user-data",
    ] {
        assert_eq!(get(&imds, &a, forbidden).await.status(), 404, "{forbidden}");
    }
    let limited = imds_with(
        ImdsSettings {
            rate_limit: 1.0,
            rate_burst: 3.0,
            ..settings()
        },
        None,
    );
    for _ in 0..3 {
        assert_eq!(get(&limited, &a, "/iamlet/whoami").await.status(), 200);
    }
    let resp = get(&limited, &a, "/iamlet/whoami").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let b = caller(POD_B, Some("uid-b"));
    assert_eq!(get(&limited, &b, "/iamlet/whoami").await.status(), 200);
}

mod passthrough;
mod wire;
