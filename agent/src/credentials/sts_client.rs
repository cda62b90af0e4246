//! AssumeRole against the regional STS endpoint, with the agent's own credentials from the
//! aws-config default chain (environment, web identity / IRSA, Pod Identity, instance
//! profile).
//!
//! Every call is bounded (connect, read, attempt and whole-operation timeouts) and retried with
//! the SDK's standard backoff and jitter, so a hung STS cannot block callers; errors come back
//! as [`CredentialError`]s whose code names the cause (`AccessDenied`, `Throttling`,
//! `RequestTimeout`, `ServiceUnavailable`, ...).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Tag;

use crate::clock;
use crate::credentials::{CredentialError, Credentials, RenderedDocs};
use crate::role::{BoxFuture, RoleBinding};

/// Something that can assume roles (STS, or a fake in tests).
pub(crate) trait Assumer: Send + Sync + std::fmt::Debug + 'static {
    /// One AssumeRole for `binding`.
    fn assume<'a>(
        &'a self,
        binding: &'a RoleBinding,
    ) -> BoxFuture<'a, Result<Credentials, CredentialError>>;
}

/// How the STS client is set up.
#[derive(Clone, Debug)]
pub(crate) struct StsSettings {
    /// Region whose regional endpoint is used.
    pub region: String,
    /// Endpoint override (e.g. the global endpoint, or a test server).
    pub endpoint: Option<String>,
    /// DurationSeconds of each session.
    pub session_duration: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout (no byte for this long fails the attempt).
    pub read_timeout: Duration,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
    /// Bound on a whole call, retries included.
    pub operation_timeout: Duration,
    /// Attempts per call (1 = no retry).
    pub max_attempts: u32,
}

impl StsSettings {
    /// Defaults for `region`: 1 s connect, 2 s read and attempt, 5 s per call, 3 attempts.
    pub(crate) fn new(region: impl Into<String>, session_duration: Duration) -> Self {
        StsSettings {
            region: region.into(),
            endpoint: None,
            session_duration,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            max_attempts: 3,
        }
    }
}

/// The STS client.
#[derive(Clone, Debug)]
pub(crate) struct Sts {
    client: aws_sdk_sts::Client,
    settings: Arc<StsSettings>,
}

impl Sts {
    /// Builds the client: the agent's own credentials from the default chain, the regional
    /// endpoint unless overridden.
    pub(crate) async fn new(settings: StsSettings) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .operation_attempt_timeout(settings.attempt_timeout)
            .operation_timeout(settings.operation_timeout)
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .load()
            .await;
        let mut conf = aws_sdk_sts::config::Builder::from(&shared);
        if let Some(endpoint) = &settings.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        Sts {
            client: aws_sdk_sts::Client::from_conf(conf.build()),
            settings: Arc::new(settings),
        }
    }

    async fn assume_role(&self, binding: &RoleBinding) -> Result<Credentials, CredentialError> {
        let secs = i32::try_from(self.settings.session_duration.as_secs()).unwrap_or(3600);
        let mut req = self
            .client
            .assume_role()
            .role_arn(&binding.role_arn)
            .role_session_name(&binding.session_name)
            .duration_seconds(secs);
        if let Some(ext) = &binding.external_id {
            req = req.external_id(ext);
        }
        for (key, value) in &binding.session_tags {
            let tag = Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| CredentialError::new("InvalidParameterValue", e.to_string()))?;
            req = req.tags(tag);
        }
        let out = req
            .send()
            .await
            .map_err(|e| map_error(&binding.role_arn, &e))?;
        let creds = out.credentials().ok_or_else(|| {
            CredentialError::new(
                "InvalidResponse",
                format!(
                    "STS answered AssumeRole for {} without credentials",
                    binding.role_arn
                ),
            )
        })?;
        let expiration = SystemTime::try_from(*creds.expiration()).map_err(|e| {
            CredentialError::new("InvalidResponse", format!("bad expiration from STS: {e}"))
        })?;
        Ok(Credentials {
            access_key_id: creds.access_key_id().to_owned(),
            secret_access_key: creds.secret_access_key().to_owned(),
            session_token: creds.session_token().to_owned(),
            expiration,
            last_updated: clock::wall(),
            rendered: RenderedDocs::default(),
        })
    }
}

impl Assumer for Sts {
    fn assume<'a>(
        &'a self,
        binding: &'a RoleBinding,
    ) -> BoxFuture<'a, Result<Credentials, CredentialError>> {
        Box::pin(self.assume_role(binding))
    }
}

/// Turns an SDK error into a credential error with an AWS-style code.
fn map_error<E, R>(role: &str, err: &SdkError<E, R>) -> CredentialError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("UnknownError");
            let message = e.message().unwrap_or("no message");
            CredentialError::new(code, format!("STS AssumeRole {role}: {message}"))
        }
        SdkError::TimeoutError(_) => CredentialError::new(
            "RequestTimeout",
            format!("STS AssumeRole {role}: no answer in time"),
        ),
        SdkError::DispatchFailure(d) => {
            let what = if d.is_timeout() {
                "RequestTimeout"
            } else {
                "ServiceUnavailable"
            };
            CredentialError::new(
                what,
                format!(
                    "STS AssumeRole {role}: could not reach STS: {}",
                    error_chain(&err)
                ),
            )
        }
        SdkError::ResponseError(_) => CredentialError::new(
            "InvalidResponse",
            format!(
                "STS AssumeRole {role}: unreadable answer: {}",
                error_chain(&err)
            ),
        ),
        _ => CredentialError::new(
            "InternalFailure",
            format!("STS AssumeRole {role}: {}", error_chain(&err)),
        ),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
