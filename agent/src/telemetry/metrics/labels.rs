//! The label sets of iamlet's metrics: each a closed set of values, so no series count can
//! grow with what pods send or what STS answers.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Outcome of attributing a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum ConnResult {
    /// The kernel had a record for it.
    Attributed,
    /// It came from outside the attached cgroup (answered 403).
    Unattributed,
    /// Closed unserved: its pod had its limit of connections served and waiting.
    OverPodLimit,
    /// Closed unserved: the proxy held `--max-connections` already.
    OverTotalLimit,
    /// Closed unserved: it waited `--header-timeout` for its pod's turn.
    WaitTimedOut,
}

impl EncodeLabelValue for ConnResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let text = match self {
            ConnResult::Attributed => "attributed",
            ConnResult::Unattributed => "unattributed",
            ConnResult::OverPodLimit => "over_pod_limit",
            ConnResult::OverTotalLimit => "over_total_limit",
            ConnResult::WaitTimedOut => "wait_timed_out",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

/// Labels of `iamlet_proxy_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConnLabels {
    /// Outcome.
    pub result: ConnResult,
}

/// Labels of `iamlet_proxy_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// Route name (a fixed set, never the raw path).
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of `iamlet_datapath_repairs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RepairLabels {
    /// What was put back (`program`, `link_pin`, `map_pin`, `forward_guard`), or `failed`.
    pub what: &'static str,
}

/// The class of an HTTP status (`2xx` ... `5xx`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct StatusClass(u8);

impl StatusClass {
    /// The class of `status`.
    pub(crate) fn of(status: u16) -> Self {
        StatusClass(u8::try_from((status / 100).clamp(1, 5)).unwrap_or(5))
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let text = match self.0 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

/// Labels of `iamlet_proxy_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DurationLabels {
    /// Route name (a fixed set, never the raw path).
    pub route: &'static str,
    /// Status class.
    pub status: StatusClass,
}

/// The AWS error codes AssumeRole failures are counted by; any other code counts as `Other`.
/// Besides STS's own codes, iamlet's: `RequestTimeout` and `ServiceUnavailable` (STS not
/// reached in time, or at all), `InvalidResponse` (an answer iamlet could not read),
/// `InternalFailure`.
pub(crate) const ASSUME_ROLE_CODES: &[&str] = &[
    "AccessDenied",
    "ExpiredTokenException",
    "IDPCommunicationError",
    "InvalidClientTokenId",
    "InvalidIdentityToken",
    "InvalidParameterValue",
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
    "SignatureDoesNotMatch",
    "Throttling",
    "RequestTimeout",
    "ServiceUnavailable",
    "InvalidResponse",
    "InternalFailure",
];

/// Labels of `iamlet_sts_assume_role_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    /// The AWS error code, one of [`ASSUME_ROLE_CODES`] or `Other`.
    pub code: &'static str,
}

impl FailureLabels {
    /// The labels of a failure with `code`.
    pub(crate) fn of(code: &str) -> Self {
        FailureLabels {
            code: ASSUME_ROLE_CODES
                .iter()
                .find(|known| **known == code)
                .copied()
                .unwrap_or("Other"),
        }
    }
}

/// Labels of `iamlet_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    /// The crate version.
    pub version: &'static str,
    /// The source revision it was built from (`unknown` outside `cargo xtask`).
    pub revision: &'static str,
}

/// Labels of `iamlet_kube_watch_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WatchLabels {
    /// `namespaces` / `serviceaccounts` / `pods`.
    pub resource: &'static str,
}
