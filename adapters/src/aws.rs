//! What the AWS adapters share: the SDK configuration and the classification of SDK errors.
//!
//! Credentials come only from the default provider chain (environment, profile, web identity
//! on EKS/IRSA, instance metadata) and endpoints from the standard variables
//! (`AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_DYNAMODB`, …) or the real service endpoints.
//! The SDK's own retries are off: every adapter retries through `proto::RetryPolicy`, deciding
//! per error whether a retry can succeed.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use std::time::Duration;

/// Connect within 3 s, one attempt within 20 s (a GetRecords of 10 MB takes a while).
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(20))
        .build()
}

/// The SDK configuration for real runs: default credential chain, endpoints and region from the
/// environment, no SDK retries.
pub async fn load_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
        .load()
        .await
}

/// How an SDK call failed, before each port maps it to its own error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The service answered with an error.
    Service { code: String, message: String, status: u16 },
    /// No (complete) answer: the request may have been applied.
    NoAnswer(String),
    /// The request was never sent (it could not be built, or no connection was made).
    NotSent(String),
}

const THROTTLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "LimitExceededException",
    "KMSThrottlingException",
    "ActiveStatementsExceededException",
];

impl Failure {
    pub fn code(&self) -> &str {
        match self {
            Failure::Service { code, .. } => code,
            _ => "",
        }
    }

    /// The service asked us to slow down.
    pub fn is_throttle(&self) -> bool {
        THROTTLE_CODES.contains(&self.code())
    }

    /// A fault on the service's side (5xx): retrying later can succeed.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Failure::Service { status, .. } if *status >= 500)
            || matches!(self.code(), "InternalServerError" | "InternalFailure" | "ServiceUnavailable")
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Service { code, message, status } => write!(f, "{code} ({status}): {message}"),
            Failure::NoAnswer(m) => write!(f, "no answer: {m}"),
            Failure::NotSent(m) => write!(f, "not sent: {m}"),
        }
    }
}

/// Classifies any SDK error.
pub fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> Failure {
    match err {
        SdkError::ServiceError(e) => {
            let inner = e.err();
            Failure::Service {
                code: inner.code().unwrap_or("Unknown").to_owned(),
                message: inner.message().unwrap_or_default().to_owned(),
                status: e.raw().status().as_u16(),
            }
        }
        SdkError::ConstructionFailure(_) => Failure::NotSent(describe(err)),
        SdkError::DispatchFailure(d) if d.is_io() && describe(err).contains("onnect") => {
            Failure::NotSent(describe(err))
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Failure::NoAnswer(describe(err))
        }
        _ => Failure::NoAnswer(describe(err)),
    }
}

/// The error and its sources in one line.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
