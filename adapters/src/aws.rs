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

/// Resolves credentials through the configured chain once (the SDK caches them): `Err` says why
/// none could be found. The credentials themselves are never shown.
pub async fn check_credentials(config: &SdkConfig) -> Result<(), String> {
    use aws_sdk_kinesis::config::ProvideCredentials;
    let provider = config.credentials_provider().ok_or("no credentials provider configured")?;
    provider.provide_credentials().await.map(|_| ()).map_err(|e| crate::error_chain(&e))
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
        SdkError::ConstructionFailure(_) => Failure::NotSent(crate::error_chain(err)),
        SdkError::DispatchFailure(_) if refused(err) => Failure::NotSent(crate::error_chain(err)),
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Failure::NoAnswer(crate::error_chain(err))
        }
        _ => Failure::NoAnswer(crate::error_chain(err)),
    }
}

/// The connection was refused before a byte of the request left: the only dispatch failure that
/// proves the service never saw the call. A reset or closed connection, a timeout or a DNS
/// answer that changed are all "no answer" (the call may have been applied).
fn refused(err: &dyn std::error::Error) -> bool {
    std::iter::successors(err.source(), |s| s.source()).any(|s| {
        s.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    async fn kinesis_at(port: u16) -> aws_sdk_kinesis::Client {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new("a", "b", None, None, "test"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .load()
            .await;
        aws_sdk_kinesis::Client::new(&config)
    }

    /// A port nobody listens on refuses the connection: provably not sent.
    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = kinesis_at(port).await.list_streams().send().await.unwrap_err();
        let failure = classify(&err);
        assert!(matches!(failure, Failure::NotSent(_)), "{failure}");
    }

    /// A server that reads the request and hangs up without answering: the call may have been
    /// applied, so it is "no answer", never "not sent".
    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_no_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.read(&mut [0u8; 4096]);
        });
        let err = kinesis_at(port).await.list_streams().send().await.unwrap_err();
        server.join().unwrap();
        let failure = classify(&err);
        assert!(matches!(failure, Failure::NoAnswer(_)), "{failure}");
    }
}
