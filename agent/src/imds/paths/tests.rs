use super::*;

fn n(p: &str) -> NormalPath {
    normalize(p).expect("normalises")
}

#[test]
fn normalisation() {
    assert_eq!(
        n("//latest/meta-data/./iam/../iam/").render(),
        "/latest/meta-data/iam/"
    );
    assert_eq!(
        n("/latest/meta-data/%69am/info").render(),
        "/latest/meta-data/iam/info"
    );
    assert_eq!(
        n("/latest/meta-data/placement/%2e%2e/x").render(),
        "/latest/meta-data/x"
    );
    assert_eq!(n("/../../latest").render(), "/latest");
    assert_eq!(n("/").render(), "/");
    assert_eq!(
        n("/latest/meta-data/iam/.").render(),
        "/latest/meta-data/iam/"
    );
    assert_eq!(n("/latest/meta-data/iam/..").render(), "/latest/meta-data/");
    assert_eq!(
        n("/latest/meta-data/placement/").below_version(),
        "meta-data/placement/"
    );
    assert_eq!(
        n("/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/").render(),
        "/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/"
    );
    assert_eq!(
        n("/latest/meta-data/public-keys/0=my-key").render(),
        "/latest/meta-data/public-keys/0=my-key"
    );
}

#[test]
fn ambiguous_paths_are_refused() {
    use PathError::*;
    for (path, why) in [
        ("/latest/%ff", AmbiguousEscape('\u{fffd}')),
        ("/latest/%0a", AmbiguousEscape('\n')),
        ("/latest/%zz", BadEscape),
        ("/latest/%4", BadEscape),
        (
            "/latest/meta-data/placement/%252e%252e/%2569am/info",
            AmbiguousEscape('%'),
        ),
        (
            "/latest/meta-data/placement/..%2fiam/info",
            AmbiguousEscape('/'),
        ),
        (
            "/latest/meta-data/placement/..%5ciam/info",
            AmbiguousEscape('\\'),
        ),
        ("/latest/meta-data/placement/..\\iam/info", Backslash),
        ("/latest/meta-data/iam;/info", Parameter),
        ("/latest/meta-data/iam%3b/info", AmbiguousEscape(';')),
        (
            "/latest/meta-data/placement/r\u{e9}gion",
            Character('\u{fffd}'),
        ),
        ("/latest/meta-data/%c3%a9", AmbiguousEscape('\u{fffd}')),
        ("/latest/meta-data/a b", Character(' ')),
        ("/latest/meta-data/a%20b", AmbiguousEscape(' ')),
        ("/latest/meta-data/a%3fb", AmbiguousEscape('?')),
        ("/latest/meta-data/a%23b", AmbiguousEscape('#')),
        ("/latest/meta-data/a%00", AmbiguousEscape('\0')),
        ("latest/meta-data", NotAbsolute),
        ("*", NotAbsolute),
    ] {
        assert_eq!(normalize(path), Err(why), "{path}");
    }
    assert_eq!(
        normalize(&format!("/{}", "a/".repeat(MAX_PATH_BYTES))),
        Err(PathError::TooLong)
    );
}

#[test]
fn a_path_taken_as_it_stands_is_what_the_full_work_makes_of_it() {
    let canonical = [
        "/",
        "//",
        "/latest",
        "/latest/",
        "/latest/api/token",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/app-role",
        "/2021-07-15/meta-data/public-keys/0=my-key",
        "/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/",
    ];
    for raw in canonical {
        let fast = canonical_as_is(raw).unwrap_or_else(|| panic!("{raw} is canonical"));
        assert_eq!(Ok(fast), decoded_and_resolved(raw), "{raw}");
    }
    let not_as_is = [
        "/a//b",
        "/a/./b",
        "/a/../b",
        "/./",
        "/..",
        "/a/%2e%2e/b",
        "/latest/meta-data%2Fiam",
        "/a\\b",
        "/a;x",
        "/a b",
        "/\u{e9}",
        "/a///",
    ];
    for raw in not_as_is {
        assert_eq!(canonical_as_is(raw), None, "{raw}");
    }
}

#[test]
fn segments_in_order() {
    let segs = |p: &str| n(p).segments().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        segs("/latest/meta-data/iam/"),
        ["latest", "meta-data", "iam"]
    );
    assert_eq!(segs("/a"), ["a"]);
    assert_eq!(segs("/a//b/./c/../d"), ["a", "b", "d"]);
    assert!(segs("/").is_empty());
    assert!(segs("/..").is_empty());
}

#[test]
fn canonical_form_is_stable() {
    for p in [
        "//latest/meta-data/./iam/../iam/",
        "/latest/meta-data/%70lacement/region",
        "/a/b/../../..",
        "/latest/meta-data/placement/%2e/x/",
    ] {
        let once = n(p);
        assert_eq!(n(&once.render()), once, "{p}");
        assert!(once
            .render()
            .bytes()
            .all(|b| b == b'/' || is_segment_byte(b)));
    }
}

#[test]
fn routes() {
    // The route borrows the path: both live until the end of the statement.
    macro_rules! r {
        ($p:expr) => {
            route(&n($p))
        };
    }
    assert_eq!(r!("/latest/api/token"), Route::Token);
    assert_eq!(r!("/2021-07-15/api/token"), Route::Token);
    assert_eq!(r!("/latest/meta-data/iam"), Route::IamListing);
    assert_eq!(r!("/latest/meta-data/iam/"), Route::IamListing);
    assert_eq!(r!("/latest/meta-data/iam/info"), Route::IamInfo);
    assert_eq!(
        r!("/latest/meta-data/iam/security-credentials"),
        Route::RoleList { extended: false }
    );
    assert_eq!(
        r!("/2016-09-02/meta-data/iam/security-credentials/"),
        Route::RoleList { extended: false }
    );
    assert_eq!(
        r!("/latest/meta-data/iam/security-credentials/web"),
        Route::RoleCredentials {
            role: "web",
            extended: false
        }
    );
    assert_eq!(
        r!("/latest/meta-data/iam/security-credentials-extended/web"),
        Route::RoleCredentials {
            role: "web",
            extended: true
        }
    );
    for forbidden in [
        "/latest/meta-data/iam/security-credentials/web/extra",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "/bogus/meta-data/iam/security-credentials/",
        "/latest/meta-data/IAM/info",
        "/latest/meta-data/Iam/security-credentials/",
        "/latest/meta-data/%49AM/info",
        "/latest/meta-data/IDENTITY-CREDENTIALS/ec2/info",
        "/latest/meta-data/placement/Security-Credentials/x",
        "/latest/meta-data/iam/SECURITY-CREDENTIALS/web",
    ] {
        assert_eq!(r!(forbidden), Route::Forbidden, "{forbidden}");
    }
    assert_eq!(r!("/latest/meta-data/instance-id"), Route::Other);
    assert_eq!(r!("/iamlet/whoami"), Route::Whoami);
}

#[test]
fn allow_list() {
    let a = AllowList::new(DEFAULT_ALLOW).expect("valid");
    for ok in [
        "/latest/meta-data/instance-id",
        "/latest/meta-data/placement/region",
        "/latest/meta-data/placement/availability-zone",
        "/2021-07-15/meta-data/network/interfaces/macs/",
        "/latest/dynamic/instance-identity/document",
        "/latest//meta-data/./instance-id",
    ] {
        assert!(a.allows(&n(ok)), "{ok}");
    }
    for denied in [
        "/latest/user-data",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "/latest/meta-data/spot/instance-action",
        "/latest/meta-data/instance-idx",
        "/latest/meta-data/",
        "/latest/meta-data/placement/../iam/info",
        "/latest/meta-data/placement/IAM/info",
        "/meta-data/instance-id",
        "/",
    ] {
        assert!(!a.allows(&n(denied)), "{denied}");
    }
    // The node's role name is never forwarded, under any allowed prefix or letter case.
    assert!(names_role(
        &n("/latest/meta-data/placement/Node-Role"),
        "node-role"
    ));
    assert!(!names_role(
        &n("/latest/meta-data/placement/region"),
        "node-role"
    ));
    assert!(!names_role(&n("/latest/meta-data/placement/region"), ""));
    // Even an allow-everything list never forwards a credential path or user data.
    let all = AllowList::new(&[".*"]).expect("valid");
    assert!(!all.allows(&n("/latest/meta-data/iam/security-credentials/node-role")));
    assert!(!all.allows(&n("/latest/meta-data/iam/info")));
    assert!(!all.allows(&n("/latest/meta-data/IAM/info")));
    assert!(!all.allows(&n("/latest/meta-data/identity-credentials/ec2/info")));
    assert!(!all.allows(&n("/latest/user-data")));
    assert!(!all.allows(&n("/latest/USER-DATA/")));
    assert!(all.allows(&n("/latest/meta-data/spot/instance-action")));
    // User data needs its own flag.
    let with_user_data = AllowList::new(DEFAULT_ALLOW)
        .expect("valid")
        .with_user_data(true);
    assert!(with_user_data.allows(&n("/latest/user-data")));
    assert!(AllowList::new(&["("]).is_err());
}
