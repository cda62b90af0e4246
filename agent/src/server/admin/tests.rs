use super::*;

fn admin() -> Arc<Admin> {
    Admin::new(
        Registry::with_prefix("iamlet"),
        None,
        "10.0.0.5:9809".parse().expect("address"),
    )
}

#[test]
fn routes() {
    let admin = admin();
    let get = |path| admin.route(&Method::GET, path, None, true);
    assert_eq!(get("/live").status(), 200);
    assert_eq!(get("/ready").status(), 503);
    admin.set_ready(true);
    assert_eq!(get("/ready").status(), 200);
    admin.set_datapath_ok(false);
    assert_eq!(get("/ready").status(), 503);
    admin.set_datapath_ok(true);
    let text = get("/metrics");
    assert_eq!(text.status(), 200);
    assert!(text.headers()["content-type"]
        .to_str()
        .is_ok_and(|t| t.starts_with("text/plain; version=0.0.4")));
    let om = admin.route(
        &Method::GET,
        "/metrics",
        Some(b"application/openmetrics-text;version=1.0.0,*/*;q=0.1"),
        true,
    );
    assert!(om.headers()["content-type"]
        .to_str()
        .is_ok_and(|t| t.starts_with("application/openmetrics-text")));
    assert_eq!(get("/x").status(), 404);
    assert_eq!(get("/debug/pods").status(), 404, "no inventory here");
    assert_eq!(
        admin
            .route(&Method::POST, "/debug/pods", None, true)
            .status(),
        405
    );
}

#[test]
fn readiness_is_a_gauge() {
    let admin = admin();
    let scrape = |admin: &Admin| {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &admin.registry).expect("encode");
        out
    };
    assert!(
        scrape(&admin).contains("iamlet_ready 0\n"),
        "{}",
        scrape(&admin)
    );
    admin.set_ready(true);
    assert!(
        scrape(&admin).contains("iamlet_ready 1\n"),
        "{}",
        scrape(&admin)
    );
    admin.set_datapath_ok(false);
    assert!(
        scrape(&admin).contains("iamlet_ready 0\n"),
        "{}",
        scrape(&admin)
    );
}

#[test]
fn node_local_routes_refuse_other_clients() {
    let admin = admin();
    for (peer, local) in [
        ("127.0.0.1", true),
        ("::1", true),
        ("10.0.0.5", true),
        ("::ffff:10.0.0.5", true),
        ("10.0.0.6", false),
        ("198.18.0.2", false),
    ] {
        let ip: IpAddr = peer.parse().expect("ip");
        assert_eq!(admin.is_local(ip), local, "{peer}");
    }
    for path in ["/debug/pods", "/log-filter"] {
        assert_eq!(admin.route(&Method::GET, path, None, false).status(), 403);
    }
    // Metrics and probes stay open to everyone.
    assert_eq!(
        admin.route(&Method::GET, "/metrics", None, false).status(),
        200
    );
    assert_eq!(
        admin.route(&Method::GET, "/live", None, false).status(),
        200
    );
    // Listening on every address, only loopback is the node.
    let any = Admin::new(
        Registry::default(),
        None,
        "0.0.0.0:9809".parse().expect("address"),
    );
    assert!(any.is_local("127.0.0.1".parse().expect("ip")));
    assert!(!any.is_local("0.0.0.0".parse().expect("ip")));
    assert!(!any.is_local("10.0.0.5".parse().expect("ip")));
}

#[test]
fn bad_log_filters_are_refused_with_the_reason() {
    let bad = Admin::set_log_filter(b"info,iamlet=notalevel");
    assert_eq!(bad.status(), 400);
    assert_eq!(Admin::set_log_filter(b"  ").status(), 400);
    assert_eq!(Admin::set_log_filter(&[0xff, 0xfe]).status(), 400);
}
