//! `imds-client-rs`: fetches credentials from the instance metadata service with the AWS SDK
//! for Rust (`aws-config`'s IMDS credentials provider, defaults only; under emulation its
//! timeouts are stretched, see `imds_client`) and prints them as one JSON line:
//! `{"access_key_id", "secret_access_key", "session_token", "expiration", "fetch_ms"}`.
//!
//! The integration tests run it inside a fake pod (`iamlet_tests::clients`) with an empty
//! environment apart from `PATH` and `HOME` (an empty directory), so the provider uses its
//! default endpoint `http://169.254.169.254`. The SDK's debug log goes to stderr.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_credential_types::provider::ProvideCredentials;

/// `SystemTime` as RFC 3339 UTC with seconds (`2026-01-02T03:04:05Z`).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or_else(
        |e| i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
        |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
    );
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The SDK's IMDS client with its defaults, except under emulation (the kernel-matrix VMs set
/// `IAMLET_TEST_TIME_SCALE`): there its timeouts (connect and read 1 s, attempt 10 s, operation
/// 30 s) are multiplied by that factor, as every other time limit of the tests is, since a
/// debug build under TCG takes seconds just to set up its HTTP client.
fn imds_client() -> aws_config::imds::Client {
    let builder = aws_config::imds::Client::builder();
    let scale = iamlet_tests::time_scale();
    if scale == 1 {
        return builder.build();
    }
    builder
        .connect_timeout(Duration::from_secs(1) * scale)
        .read_timeout(Duration::from_secs(1) * scale)
        .operation_attempt_timeout(Duration::from_secs(10) * scale)
        .operation_timeout(Duration::from_secs(30) * scale)
        .build()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "aws_config=debug,aws_smithy_runtime=info",
        ))
        .init();

    let provider = ImdsCredentialsProvider::builder()
        .imds_client(imds_client())
        .build();
    let start = Instant::now();
    let creds = provider
        .provide_credentials()
        .await
        .map_err(anyhow::Error::new)
        .context("ImdsCredentialsProvider::provide_credentials failed")?;
    let fetch_ms = start.elapsed().as_secs_f64() * 1000.0;

    let out = serde_json::json!({
        "access_key_id": creds.access_key_id(),
        "secret_access_key": creds.secret_access_key(),
        "session_token": creds.session_token(),
        "expiration": creds.expiry().map(rfc3339),
        "fetch_ms": fetch_ms,
    });
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199); // leap year, end of February
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29 (400-year rule)
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
    }
}
