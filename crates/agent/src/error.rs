//! Agent errors and their one mapping to HTTP statuses; the JSON body is rendered by
//! `apikit::error`, shared with the admin.

use apikit::error::BodyFailure;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::validate::{FieldError, ValidationErrors};

use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The store is not at the revision before this change; the admin sends a snapshot.
    #[error("revision conflict: the store holds revision {held}, the change needs {needed}")]
    RevisionConflict { held: u64, needed: u64 },
    #[error("{message}")]
    BadRequest {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("invalid {what}")]
    Invalid {
        what: String,
        errors: ValidationErrors,
    },
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive within the body deadline (`apikit::limits`).
    #[error("the request body did not arrive in time")]
    BodyTimedOut,
    #[error("config store unavailable")]
    Unavailable(#[source] StoreError),
    #[error("config store refused the change")]
    Store(#[source] StoreError),
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => AgentError::Unavailable(e),
            other => AgentError::Store(other),
        }
    }
}

impl From<BytesRejection> for AgentError {
    fn from(e: BytesRejection) -> Self {
        match BodyFailure::of(&e) {
            BodyFailure::TooLarge => AgentError::PayloadTooLarge(crate::api::MAX_BODY),
            BodyFailure::TimedOut => AgentError::BodyTimedOut,
            BodyFailure::Other(message) => AgentError::BadRequest {
                message,
                details: Vec::new(),
            },
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        match self {
            // Both close the connection: the rest of the body is never read.
            AgentError::PayloadTooLarge(limit) => return apikit::error::payload_too_large(limit),
            AgentError::BodyTimedOut => return apikit::error::request_timeout(),
            _ => {}
        }
        let (status, code) = match &self {
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            AgentError::RevisionConflict { .. } => (StatusCode::CONFLICT, "revision_conflict"),
            AgentError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            AgentError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AgentError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AgentError::Store(_) => (StatusCode::BAD_GATEWAY, "store_error"),
            AgentError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AgentError::BodyTimedOut => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
        };
        if let AgentError::Unavailable(source) | AgentError::Store(source) = &self {
            tracing::warn!(error = %source, "store request failed");
        }
        let details = match &self {
            AgentError::BadRequest { details, .. } => details.clone(),
            AgentError::Invalid { errors, .. } => errors.0.clone(),
            _ => Vec::new(),
        };
        apikit::error::response(status, code, self.to_string(), details)
    }
}

/// A body that is not the JSON expected: 400, naming the field when known.
pub(crate) fn bad_json(what: &str, e: &model::json::JsonError) -> AgentError {
    AgentError::BadRequest {
        message: e.message(what),
        details: e.details().to_vec(),
    }
}
