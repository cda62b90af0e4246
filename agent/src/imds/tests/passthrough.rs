//! Passthrough to the real metadata service: allowed paths with the agent's own token, and
//! the node's credentials never passed on.

use super::*;

/// A stand-in for the real metadata service on loopback: IMDSv2 required, and the node's
/// credentials on every path that could carry them. It counts token PUTs, and counts (and
/// answers like the real service would after decoding them once more) paths that still
/// carry an escape, a backslash or a `;`.
async fn fake_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, puts, _) = fake_upstream_counting().await;
    (addr, puts)
}

async fn fake_upstream_counting() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let puts = Arc::new(AtomicUsize::new(0));
    let raw = Arc::new(AtomicUsize::new(0));
    let (puts2, raw2) = (puts.clone(), raw.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (puts, raw) = (puts2.clone(), raw2.clone());
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (puts, raw) = (puts.clone(), raw.clone());
                async move {
                    let mut path = req.uri().path().to_string();
                    if path.contains(['%', '\\', ';']) {
                        raw.fetch_add(1, Ordering::SeqCst);
                        path = path
                            .replace("%2e", ".")
                            .replace("%69", "i")
                            .replace('\\', "/");
                    }
                    let path = path.to_lowercase();
                    let (status, body) = if req.method() == Method::PUT {
                        puts.fetch_add(1, Ordering::SeqCst);
                        (200, "upstream-token".to_string())
                    } else if req
                        .headers()
                        .get(TOKEN_HEADER)
                        .map(hyper::http::HeaderValue::as_bytes)
                        != Some(b"upstream-token")
                    {
                        (401, String::new())
                    } else if path.trim_end_matches('/').ends_with("security-credentials") {
                        (200, "node-role".to_string())
                    } else if path.contains("iam") || path.contains("user-data") {
                        (200, r#"{"Code":"Success","AccessKeyId":"ASIANODE","SecretAccessKey":"NODE-SECRET","Token":"t"}"#.to_string())
                    } else {
                        (200, format!("upstream says {path}"))
                    };
                    let mut resp = Response::new(Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, puts, raw)
}

#[tokio::test]
async fn passthrough_forwards_allowed_paths_with_the_agents_token() {
    let (addr, puts) = fake_upstream().await;
    let upstream = Upstream::new(
        format!("http://{addr}").parse().expect("uri"),
        Duration::from_secs(2),
    );
    let imds = imds_with(settings(), Some(upstream));
    let a = caller(POD_A, Some("uid-a"));
    // The pod's own token is not what goes upstream.
    let t = get_token(&imds, &a).await;
    for _ in 0..3 {
        let resp = call(
            &imds,
            &a,
            Method::GET,
            "/latest/meta-data/instance-id",
            &[(TOKEN_HEADER, &t)],
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            body(resp).await,
            "upstream says /latest/meta-data/instance-id"
        );
    }
    assert_eq!(
        puts.load(Ordering::SeqCst),
        1,
        "the agent's upstream token is reused"
    );
    let resp = call(
        &imds,
        &a,
        Method::GET,
        "/latest/meta-data//placement/./region",
        &[],
    )
    .await;
    assert_eq!(
        body(resp).await,
        "upstream says /latest/meta-data/placement/region"
    );
    assert_eq!(
        call(
            &imds,
            &a,
            Method::GET,
            "/latest/meta-data/spot/instance-action",
            &[]
        )
        .await
        .status(),
        404
    );
    // What goes upstream is the canonical path, with no escape left.
    let resp = call(
        &imds,
        &a,
        Method::GET,
        "/latest/meta-data/%70lacement/%72egion",
        &[],
    )
    .await;
    assert_eq!(
        body(resp).await,
        "upstream says /latest/meta-data/placement/region"
    );
}

#[tokio::test]
async fn only_the_canonical_path_is_forwarded() {
    let (addr, _, raw) = fake_upstream_counting().await;
    for patterns in [paths::DEFAULT_ALLOW, &[".*"][..]] {
        let upstream = Upstream::new(
            format!("http://{addr}").parse().expect("uri"),
            Duration::from_secs(2),
        );
        let settings = ImdsSettings {
            allow: AllowList::new(patterns).expect("allow"),
            ..settings()
        };
        let imds = imds_with(settings, Some(upstream));
        let a = caller(NO_ROLE, Some("uid-n"));
        for (path, want) in [
            ("/latest/meta-data/placement/%252e%252e/%2569am/info", 400),
            ("/latest/meta-data/placement/..\\iam/info", 400),
            ("/latest/meta-data/placement/..%5ciam/info", 400),
            ("/latest/meta-data/placement/..%2fiam/info", 400),
            ("/latest/meta-data/iam;/info", 400),
            ("/latest/meta-data/placement;x=1/region", 400),
            ("/latest/meta-data/placement/r%c3%a9gion", 400),
            ("/latest/meta-data/IAM/info", 404),
            ("/latest/meta-data/%49AM/info", 404),
            ("/latest/meta-data/Iam/security-credentials/node-role", 404),
            ("/latest/meta-data/placement/node-role", 404),
            ("/latest/meta-data/placement/NODE-ROLE", 404),
            ("/latest/user-data", 404),
            ("/latest/USER-DATA", 404),
        ] {
            let resp = get(&imds, &a, path).await;
            let status = resp.status();
            let text = body(resp).await;
            assert!(
                !text.contains("NODE-SECRET") && !text.contains("node-role"),
                "{path}: {text}"
            );
            assert_eq!(status, want, "{path}: {text}");
        }
    }
    assert_eq!(
        raw.load(Ordering::SeqCst),
        0,
        "an escape reached the upstream"
    );
}

#[tokio::test]
async fn node_credentials_never_pass_through() {
    let (addr, _) = fake_upstream().await;
    let allow_all = ImdsSettings {
        allow: AllowList::new(&[".*"]).expect("allow"),
        ..settings()
    };
    let upstream = Upstream::new(
        format!("http://{addr}").parse().expect("uri"),
        Duration::from_secs(2),
    );
    let imds = imds_with(allow_all, Some(upstream));
    let none = caller(NO_ROLE, Some("uid-n"));
    for path in [
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/node-role",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/iam/",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "/latest/meta-data/%69am/security-credentials/node-role",
        "/latest/meta-data/x/../iam/security-credentials/node-role",
        "/1.0/meta-data/iam/security-credentials/node-role",
        "/latest/user-data",
    ] {
        let resp = get(&imds, &none, path).await;
        let status = resp.status();
        let text = body(resp).await;
        assert!(
            !text.contains("NODE-SECRET") && !text.contains("ASIANODE"),
            "{path}: {text}"
        );
        assert!(status == 404 || status == 502, "{path}: {status}");
    }
}
