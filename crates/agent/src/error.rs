//! Agent errors and their one mapping to HTTP statuses and JSON bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::validate::{FieldError, ValidationErrors};

use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
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

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            AgentError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            AgentError::RevisionConflict { .. } => (StatusCode::CONFLICT, "revision_conflict"),
            AgentError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            AgentError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AgentError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AgentError::Store(_) => (StatusCode::BAD_GATEWAY, "store_error"),
        };
        if let AgentError::Unavailable(source) | AgentError::Store(source) = &self {
            tracing::warn!(error = %source, "store request failed");
        }
        let details = match &self {
            AgentError::BadRequest { details, .. } => details.clone(),
            AgentError::Invalid { errors, .. } => errors.0.clone(),
            _ => Vec::new(),
        };
        let body = model::validate::ErrorBody {
            error: self.to_string(),
            code: code.to_owned(),
            details,
        };
        (status, axum::Json(body)).into_response()
    }
}

/// A body that is not the JSON expected: 400, naming the field when known.
pub(crate) fn bad_json(what: &str, e: &model::json::JsonError) -> AgentError {
    AgentError::BadRequest {
        message: e.message(what),
        details: e.details().to_vec(),
    }
}
