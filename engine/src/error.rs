//! The engine's operating errors and their mapping to HTTP status and E-code. This is the one
//! place where that mapping lives (parse errors map in `kapsel_http::ParseError`).

use kapsel_http::Response;
use kapsel_wal::WalError;

/// Everything a request to the engine can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Bad or missing admin token, or an invalid inbound signature (401 E1001).
    #[error("{0}")]
    Unauthorized(String),
    /// Body too large (413 E1002).
    #[error("{0}")]
    TooLarge(String),
    /// The endpoint's ingest rate limit (429 E1003, `Retry-After`).
    #[error("rate limit exceeded")]
    RateLimited {
        /// Seconds until a request would be accepted.
        retry_after_s: u64,
    },
    /// Unknown endpoint, event or route (404 E1004).
    #[error("{0}")]
    NotFound(String),
    /// Malformed request (400 E1005).
    #[error("{0}")]
    Invalid(String),
    /// Method not allowed on a known path (405 E1005, `Allow`).
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the path accepts.
        allow: &'static str,
    },
    /// Backpressure: a queue is at its bound (503 E3002, `Retry-After`).
    #[error("{0}")]
    QueueFull(String),
    /// The write-ahead log failed (503 E3003).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The index database is needed for this query and unreachable (503 E3001).
    #[error("index database unavailable: {0}")]
    IndexUnavailable(String),
    /// Shutting down or still recovering (503 E3004).
    #[error("{0}")]
    Unavailable(String),
}

impl From<WalError> for EngineError {
    fn from(error: WalError) -> Self {
        match error {
            WalError::Backpressure { .. } => Self::QueueFull("the shard's write-ahead log queue is full".into()),
            WalError::Closed => Self::Unavailable("shutting down".into()),
            WalError::RecordTooLarge { bytes, limit } => {
                Self::TooLarge(format!("record of {bytes} bytes exceeds {limit}"))
            }
            other => Self::Storage(other.to_string()),
        }
    }
}

impl EngineError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthorized(_) => 401,
            Self::TooLarge(_) => 413,
            Self::RateLimited { .. } => 429,
            Self::NotFound(_) => 404,
            Self::Invalid(_) => 400,
            Self::MethodNotAllowed { .. } => 405,
            Self::QueueFull(_) | Self::Storage(_) | Self::IndexUnavailable(_) | Self::Unavailable(_) => 503,
        }
    }

    /// The E-code of the external contract.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "E1001",
            Self::TooLarge(_) => "E1002",
            Self::RateLimited { .. } => "E1003",
            Self::NotFound(_) => "E1004",
            Self::Invalid(_) | Self::MethodNotAllowed { .. } => "E1005",
            Self::IndexUnavailable(_) => "E3001",
            Self::QueueFull(_) => "E3002",
            Self::Storage(_) => "E3003",
            Self::Unavailable(_) => "E3004",
        }
    }

    /// The error response, with `Retry-After`, `Allow` or `WWW-Authenticate` where the contract
    /// asks for them.
    pub fn into_response(self) -> Response {
        let response = Response::error(self.status(), self.code(), &self.to_string());
        match self {
            // RFC 9110 §11.6.1: a 401 MUST carry a challenge. Admin paths and keyed ingest take a
            // bearer token (RFC 6750), and a bad inbound signature answers the same way.
            Self::Unauthorized(_) => response.with_header("WWW-Authenticate", "Bearer".to_string()),
            Self::RateLimited { retry_after_s } => response.with_header("Retry-After", retry_after_s.to_string()),
            Self::QueueFull(_) | Self::IndexUnavailable(_) | Self::Unavailable(_) => {
                response.with_header("Retry-After", "1".to_string())
            }
            Self::MethodNotAllowed { allow } => response.with_header("Allow", allow.to_string()),
            _ => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 9110 §11.6.1: "A server generating a 401 (Unauthorized) response MUST send a
    // WWW-Authenticate header field containing at least one challenge"; clients and proxies
    // look for it to know how to authenticate.
    #[test]
    fn unauthorized_answers_carry_a_bearer_challenge() {
        for message in ["missing or wrong admin bearer token", "missing or invalid webhook signature"] {
            let response = EngineError::Unauthorized(message.into()).into_response();
            assert_eq!((response.status, response.code), (401, Some("E1001")));
            let challenges: Vec<&(&str, String)> =
                response.headers.iter().filter(|(name, _)| *name == "WWW-Authenticate").collect();
            assert_eq!(challenges, [&("WWW-Authenticate", "Bearer".to_string())], "{message}");
        }
        let not_found = EngineError::NotFound("no".into()).into_response();
        assert!(not_found.headers.iter().all(|(name, _)| *name != "WWW-Authenticate"));
    }
}
