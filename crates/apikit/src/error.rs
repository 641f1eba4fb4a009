//! The JSON error body every refusal of the admin and agent APIs carries, and what a
//! failed request-body read means.
//!
//! Each API keeps its own error enum (which failures exist is its business) and renders
//! it through [`response`], so the body's shape and the status codes shared by both
//! (401, 408, 413) are decided here once.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use model::validate::{ErrorBody, FieldError};

/// A JSON error answer: `{"error": message, "code": code, "details": [...]}`.
pub fn response(
    status: StatusCode,
    code: &str,
    message: String,
    details: Vec<FieldError>,
) -> Response {
    let body = ErrorBody {
        error: message,
        code: code.to_owned(),
        details,
    };
    (status, axum::Json(body)).into_response()
}

/// 401: no token, or not the right one. Says nothing about which.
pub fn unauthorized() -> Response {
    let mut answer = response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token".to_owned(),
        Vec::new(),
    );
    answer
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    answer
}

/// 413 for a body over `limit` bytes; the connection is closed after it, since the
/// rest of the body is never read.
pub fn payload_too_large(limit: usize) -> Response {
    closing(response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than {limit} bytes"),
        Vec::new(),
    ))
}

/// 408 for a body that did not arrive in time; the connection is closed after it.
pub fn request_timeout() -> Response {
    closing(response(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time".to_owned(),
        Vec::new(),
    ))
}

fn closing(mut answer: Response) -> Response {
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFailure {
    /// Over the body limit (413).
    TooLarge,
    /// Not complete within the body deadline (408).
    TimedOut,
    /// Anything else, such as a connection closed mid-body (400); the text says what.
    Other(String),
}

impl BodyFailure {
    /// Classifies axum's rejection of a `Bytes` body.
    pub fn of(rejection: &BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return BodyFailure::TooLarge;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
        while let Some(error) = source {
            if error.is::<crate::limits::BodyTimedOut>() {
                return BodyFailure::TimedOut;
            }
            source = error.source();
        }
        BodyFailure::Other(format!(
            "cannot read the request body: {}",
            rejection.body_text()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_json_with_their_code() {
        let answer = unauthorized();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(answer.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let body = axum::body::to_bytes(answer.into_body(), 1024)
            .await
            .unwrap();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.code, "unauthorized");

        let answer = payload_too_large(10);
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.headers()[header::CONNECTION], "close");
        let answer = request_timeout();
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(answer.headers()[header::CONNECTION], "close");
    }
}
