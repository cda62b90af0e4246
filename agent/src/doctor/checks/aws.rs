//! STS, when the agent gets credentials from it: a region known at all, the endpoint resolves
//! and accepts TCP connections, and `GetCallerIdentity` there with the credentials the AWS
//! SDK's default chain finds (the agent signs its AssumeRole calls with those; this also
//! proves the TLS handshake and the signature). Each step is bounded by the timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

use super::error_chain;
use crate::doctor::report::Check;
use crate::doctor::settings::{Credentials, Roles, Settings};

/// Error codes of STS that blame the caller's credentials.
const CREDENTIAL_ERRORS: [&str; 7] = [
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "AccessDenied",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "UnrecognizedClientException",
];

/// The STS checks for `settings`.
pub(crate) async fn check_sts(settings: &Settings) -> Vec<Check> {
    let (region, endpoint) = match (&settings.credentials, &settings.roles) {
        (Credentials::Static(path), _) => {
            return vec![check_static(path)];
        }
        (_, Roles::Nothing) => {
            return vec![Check::skip(
                "sts",
                "no role source, so the agent makes no STS calls",
            )]
        }
        (Credentials::Sts { region, endpoint }, _) => (region, endpoint),
    };
    let timeout = settings.timeout;
    let (region_check, region) = check_region(region.as_deref(), timeout).await;
    let mut checks = vec![region_check];
    let Some(region) = region else {
        checks.push(Check::skip("sts endpoint", "no region (see above)"));
        checks.push(Check::skip("aws identity", "no region (see above)"));
        return checks;
    };
    let url = endpoint
        .clone()
        .unwrap_or_else(|| regional_endpoint(&region));
    let reachable = check_endpoint(&url, timeout).await;
    let reached = reachable.status == crate::doctor::report::Status::Ok;
    checks.push(reachable);
    checks.push(if reached {
        check_identity(&region, endpoint.as_deref(), &url, timeout).await
    } else {
        Check::skip("aws identity", "STS is not reachable (see above)")
    });
    checks
}

/// Static credentials: the file reads and parses, as the agent loads it.
fn check_static(path: &std::path::Path) -> Check {
    const NAME: &str = "credentials";
    match crate::credentials::static_file::StaticCredentials::load(path) {
        Ok(_) => Check::ok(
            NAME,
            format!("static credentials from {} (STS is not used)", path.display()),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("--static-credentials: {e}"),
            "fix the file (see README: role ARN -> access_key_id, secret_access_key, session_token), or drop the flag to use STS",
        ),
    }
}

/// The region: `--region`, else the SDK's chain (`AWS_REGION`, the profile, the instance's
/// placement), as the agent finds it.
async fn check_region(given: Option<&str>, timeout: Duration) -> (Check, Option<String>) {
    const NAME: &str = "region";
    if let Some(region) = given {
        return (
            Check::ok(NAME, format!("{region} (--region)")),
            Some(region.to_owned()),
        );
    }
    let chain = aws_config::default_provider::region::DefaultRegionChain::builder().build();
    match tokio::time::timeout(timeout, chain.region()).await {
        Ok(Some(region)) => (
            Check::ok(
                NAME,
                format!("{region} (from AWS_REGION, the AWS profile or the instance's placement)"),
            ),
            Some(region.to_string()),
        ),
        Ok(None) | Err(_) => (
            Check::fail(
                NAME,
                format!("no region: no --region, no AWS_REGION, no profile region, and the instance's placement did not answer within {} ms", timeout.as_millis()),
                "pass the agent --region (IAMLET_REGION), e.g. the node's own region",
            ),
            None,
        ),
    }
}

/// The regional STS endpoint the SDK uses for `region`.
pub(crate) fn regional_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://sts.{region}.{suffix}")
}

/// Host and port of an `http(s)://` URL.
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: hyper::Uri = url.parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })?;
    Some((host, port))
}

/// DNS and a TCP connection to the endpoint at `url`.
async fn check_endpoint(url: &str, timeout: Duration) -> Check {
    const NAME: &str = "sts endpoint";
    let net = "the node must reach STS: check its DNS, routes, security groups and any proxy (HTTPS_PROXY), or use a VPC endpoint for STS";
    let Some((host, port)) = host_port(url) else {
        return Check::fail(
            NAME,
            format!("{url} is not an http(s) URL with a host"),
            "pass --sts-endpoint as https://HOST[:PORT]",
        );
    };
    let started = Instant::now();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Check::fail(NAME, format!("{host} does not resolve: {e}"), net),
            Err(_) => {
                return Check::fail(
                    NAME,
                    format!("{host} did not resolve within {} ms", timeout.as_millis()),
                    net,
                )
            }
        };
    let mut last = String::from("no address");
    for addr in &addrs {
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                let resolved = if host.parse::<std::net::IpAddr>().is_ok() {
                    String::new()
                } else {
                    format!(" ({host} resolves to {})", addr.ip())
                };
                return Check::ok(
                    NAME,
                    format!(
                        "{url} accepts connections{resolved} ({} ms)",
                        started.elapsed().as_millis()
                    ),
                );
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => {
                last = format!("{addr}: no answer within {} ms", timeout.as_millis());
                break;
            }
        }
    }
    Check::fail(NAME, format!("{url} is not reachable ({last})"), net)
}

/// `GetCallerIdentity` with the default chain's credentials.
async fn check_identity(
    region: &str,
    endpoint: Option<&str>,
    url: &str,
    timeout: Duration,
) -> Check {
    const NAME: &str = "aws identity";
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .operation_timeout(timeout)
        .build();
    let call = async {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        let mut conf = aws_sdk_sts::config::Builder::from(&shared);
        if let Some(endpoint) = endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        aws_sdk_sts::Client::from_conf(conf.build())
            .get_caller_identity()
            .send()
            .await
    };
    let creds_action = "the agent signs AssumeRole with its own credentials from the default chain (environment, IRSA web identity, Pod Identity, the instance profile): give it valid ones, and run doctor in the agent's container so it sees the same";
    match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
        Ok(Ok(out)) => Check::ok(
            NAME,
            format!(
                "{} (account {}), from GetCallerIdentity at {url} with the default chain's credentials",
                out.arn().unwrap_or("(no ARN)"),
                out.account().unwrap_or("?")
            ),
        ),
        Ok(Err(SdkError::ServiceError(e))) => {
            let err = e.err();
            let code = err.code().unwrap_or("UnknownError");
            let action = if CREDENTIAL_ERRORS.contains(&code) {
                creds_action.to_owned()
            } else {
                format!("check that {url} is STS (--sts-endpoint) and that no proxy answers in its place")
            };
            Check::fail(
                NAME,
                format!(
                    "STS refused GetCallerIdentity (HTTP {}): {code}: {}",
                    e.raw().status().as_u16(),
                    err.message().unwrap_or("no message")
                ),
                action,
            )
        }
        Ok(Err(e)) => {
            let text = error_chain(&e);
            let action = if text.contains("credentials") {
                creds_action
            } else {
                "check that STS answers HTTPS at the endpoint (a proxy or firewall may cut TLS)"
            };
            Check::fail(NAME, format!("GetCallerIdentity at {url} failed: {text}"), action)
        }
        Err(_) => Check::fail(
            NAME,
            format!("GetCallerIdentity at {url} did not answer within {} ms", timeout.as_millis()),
            "check that STS answers HTTPS at the endpoint, and that the credentials chain answers (IMDS, the web identity token file)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_their_hosts() {
        assert_eq!(
            regional_endpoint("us-east-1"),
            "https://sts.us-east-1.amazonaws.com"
        );
        assert_eq!(
            regional_endpoint("cn-north-1"),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            host_port("https://sts.eu-west-1.amazonaws.com"),
            Some(("sts.eu-west-1.amazonaws.com".to_owned(), 443))
        );
        assert_eq!(
            host_port("http://127.0.0.1:15000"),
            Some(("127.0.0.1".to_owned(), 15000))
        );
        assert_eq!(host_port("http://[::1]:80/"), Some(("::1".to_owned(), 80)));
        assert_eq!(host_port("sts.amazonaws.com"), None);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_problem() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let check =
            check_endpoint(&format!("http://127.0.0.1:{port}"), Duration::from_secs(1)).await;
        assert_eq!(
            check.status,
            crate::doctor::report::Status::Fail,
            "{check:?}"
        );
        assert!(check.finding.contains("is not reachable"), "{check:?}");
    }
}
