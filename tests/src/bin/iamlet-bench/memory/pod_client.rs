//! Inside a pod (`iamlet-bench memory-client`): the SDK flow, with its answers checked.

use super::{
    ensure, Context, Duration, Read, Result, SocketAddr, TcpStream, Value, Write, IMDS_V4,
    ROLES_PATH, TOKEN_PATH,
};

/// One HTTP/1.1 request to the metadata service (one connection, `Connection: close`);
/// answers the status and body.
pub(super) fn request(
    method: &str,
    path: &str,
    header: Option<(&str, &str)>,
) -> Result<(u16, String)> {
    let addr = SocketAddr::new(IMDS_V4.into(), 80);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {IMDS_V4}\r\nConnection: close\r\n");
    if let Some((k, v)) = header {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: no end of headers in {raw:?}"))?;
    ensure!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{method} {path}: chunked answer"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: status line {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Inside a pod: the SDK flow (PUT token, GET role list, GET credentials with the token);
/// fails unless the role list is exactly `role` and the credentials are a success document.
pub(crate) fn client(args: &[String]) -> Result<()> {
    let role = args.first().context("role")?;
    let (status, token) = request(
        "PUT",
        TOKEN_PATH,
        Some(("X-aws-ec2-metadata-token-ttl-seconds", "21600")),
    )?;
    ensure!(status == 200, "PUT {TOKEN_PATH}: {status} {token}");
    let with = Some(("X-aws-ec2-metadata-token", token.as_str()));
    let (status, roles) = request("GET", ROLES_PATH, with)?;
    ensure!(
        status == 200 && roles == *role,
        "GET {ROLES_PATH}: {status} {roles:?}, wanted {role:?}"
    );
    let path = format!("{ROLES_PATH}{role}");
    let (status, body) = request("GET", &path, with)?;
    ensure!(status == 200, "GET {path}: {status} {body}");
    let doc: Value = serde_json::from_str(&body).context("credentials are not JSON")?;
    ensure!(
        doc["Code"] == "Success" && doc["AccessKeyId"].as_str().is_some_and(|k| !k.is_empty()),
        "GET {path}: {body}"
    );
    Ok(())
}
