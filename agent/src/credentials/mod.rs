//! Where a role's credentials come from: the [`CredentialSource`] trait and the
//! [`Credentials`] it returns; the production source, the STS cache ([`sts_cache`], filled by
//! the STS client [`sts_client`] and warmed by [`prefetch`]); and fixed credentials from a
//! file ([`static_file`], for development and tests).

pub(crate) mod prefetch;
pub(crate) mod static_file;
pub(crate) mod sts_cache;
pub(crate) mod sts_client;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;

use crate::role::{BoxFuture, RoleBinding};
use crate::timefmt;

/// Temporary credentials of one role session.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token.
    pub session_token: String,
    /// When they stop working.
    pub expiration: SystemTime,
    /// When they were obtained.
    pub last_updated: SystemTime,
    /// The documents served for them, rendered on first use.
    pub rendered: RenderedDocs,
}

/// The credentials documents of one set of credentials, rendered once: they change only with
/// the credentials, which a pod polls. A cache, not part of the value: it never makes two
/// credentials unequal.
#[derive(Clone, Default)]
pub(crate) struct RenderedDocs {
    plain: OnceLock<Bytes>,
    extended: OnceLock<Bytes>,
}

impl RenderedDocs {
    /// The document (`extended`: the form with `AccountId`), rendered by `render` the first
    /// time it is asked for.
    pub(crate) fn get_or_render(&self, extended: bool, render: impl FnOnce() -> Bytes) -> Bytes {
        let cell = if extended {
            &self.extended
        } else {
            &self.plain
        };
        cell.get_or_init(render).clone()
    }
}

impl PartialEq for RenderedDocs {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RenderedDocs {}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &timefmt::format_utc(self.expiration))
            .field("last_updated", &timefmt::format_utc(self.last_updated))
            // The rendered documents hold the secret key: never shown.
            .finish_non_exhaustive()
    }
}

/// Why credentials could not be had. `code` is an AWS-style error code (`AccessDenied`,
/// `Throttling`, `RequestTimeout`, ...) that the metadata response passes on to the SDK.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub(crate) struct CredentialError {
    /// Error code.
    pub code: String,
    /// Human-readable cause.
    pub message: String,
}

impl CredentialError {
    /// An error with the given code and message.
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CredentialError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Produces credentials for role bindings.
pub(crate) trait CredentialSource: Send + Sync + std::fmt::Debug + 'static {
    /// Credentials for `binding`.
    fn credentials<'a>(
        &'a self,
        binding: &'a RoleBinding,
    ) -> BoxFuture<'a, Result<Arc<Credentials>, CredentialError>>;
}

/// The source when none is configured: every request fails with `NoCredentialSource`.
#[derive(Debug, Default)]
pub(crate) struct NoCredentials;

impl CredentialSource for NoCredentials {
    fn credentials<'a>(
        &'a self,
        binding: &'a RoleBinding,
    ) -> BoxFuture<'a, Result<Arc<Credentials>, CredentialError>> {
        Box::pin(std::future::ready(Err(CredentialError::new(
            "NoCredentialSource",
            format!(
                "iamlet has no credential source configured, so it cannot serve {}",
                binding.role_arn
            ),
        ))))
    }
}
