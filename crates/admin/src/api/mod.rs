//! The admin's REST API under `/gateway/apiserver/v1` (see `docs/api.md`).
//!
//! Bodies are taken as bytes and parsed here, not by axum's `Json`, so every refusal
//! has our JSON error shape and names what is wrong: where the JSON breaks (line and
//! column), or which field is unknown, missing or of the wrong type (its full path).

mod clusters;
mod resources;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::routing::get;
use axum::Router;
use model::validate::FieldError;
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted (2 MiB); larger ones get 413.
pub(crate) const MAX_BODY: usize = 2 * 1024 * 1024;

/// The admin's router, authentication included: every route, known or not, needs the
/// admin token.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let instance = "/clusters/{cluster}/instances/{instance}";
    let api = Router::new()
        .route(
            "/clusters",
            get(clusters::list_clusters).post(clusters::create_cluster),
        )
        .route(
            "/clusters/{cluster}",
            get(clusters::get_cluster)
                .put(clusters::update_cluster)
                .delete(clusters::delete_cluster),
        )
        .route(
            "/clusters/{cluster}/instances",
            get(clusters::list_instances),
        )
        .route(instance, get(clusters::get_instance))
        .route(&format!("{instance}/nodes"), get(clusters::list_nodes))
        .route(&format!("{instance}/changes"), get(clusters::list_changes))
        .route(
            &format!("{instance}/{{kind}}"),
            get(resources::list).post(resources::create),
        )
        .route(
            &format!("{instance}/{{kind}}/{{id}}"),
            get(resources::get_one)
                .put(resources::put)
                .delete(resources::delete),
        );
    Router::new()
        .nest("/gateway/apiserver/v1", api)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `Path` whose rejection is an [`ApiError`] (JSON) rather than axum's plain text.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

/// Parses a JSON body into `T`; `what` names it in messages ("route", "cluster").
pub(crate) fn parse_json<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(what, &path, &e.into_inner())
    })?;
    // Trailing characters after the value are malformed JSON too.
    de.end().map_err(|e| json_error(what, ".", &e))?;
    Ok(value)
}

/// Malformed JSON → 400 saying where; a data error (unknown or missing field, wrong
/// type or value) → 400 naming the field by its full path (`nodes[0].port`).
fn json_error(what: &str, path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    if !matches!(e.classify(), Category::Data) {
        return ApiError::BadRequest {
            message: format!("malformed JSON: {e}"),
            details: Vec::new(),
        };
    }
    let full = e.to_string();
    // serde_json appends " at line L column C"; the detail keeps just the reason.
    let reason = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(reason, _)| reason);
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| reason.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let base = if path == "." { "" } else { path };
    let field = match named {
        // The path may already end at the named field; do not name it twice.
        Some(name) if base == name || base.ends_with(&format!(".{name}")) => base.to_owned(),
        Some(name) if base.is_empty() => name.to_owned(),
        Some(name) => format!("{base}.{name}"),
        None => base.to_owned(),
    };
    let details = if field.is_empty() {
        Vec::new()
    } else {
        vec![FieldError {
            field,
            message: reason.to_owned(),
        }]
    };
    ApiError::BadRequest {
        message: format!("invalid {what}: {full}"),
        details,
    }
}

#[cfg(test)]
mod tests {
    use model::route::Route;
    use model::upstream::Upstream;

    use super::*;

    fn refusal<T: DeserializeOwned + std::fmt::Debug>(json: &str) -> (String, Vec<String>) {
        match parse_json::<T>("thing", json.as_bytes()).unwrap_err() {
            ApiError::BadRequest { message, details } => {
                (message, details.into_iter().map(|d| d.field).collect())
            }
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_says_where() {
        let (message, fields) = refusal::<Route>("{\"id\": \"r9\", ");
        assert!(message.starts_with("malformed JSON"), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
        assert!(fields.is_empty());
        let (message, _) = refusal::<Route>(r#"{"id":"r","paths":["/"],"upstream_id":"u"} x"#);
        assert!(message.contains("trailing characters"), "{message}");
        let (message, _) = refusal::<Route>("");
        assert!(message.contains("EOF"), "{message}");
    }

    #[test]
    fn data_errors_name_the_field_by_path() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","colour":"red"}"#,
                "colour",
            ),
            (r#"{"id":"r","upstream_id":"u"}"#, "paths"),
            (r#"{"id":"r","paths":"/","upstream_id":"u"}"#, "paths"),
            (
                r#"{"id":"r","paths":["/", 3],"upstream_id":"u"}"#,
                "paths[1]",
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream":{"nodes":[{"host":"a","port":"80"}]}}"#,
                "upstream.nodes[0].port",
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream":{"nodes":[{"host":"a","port":80,"x":1}]}}"#,
                "upstream.nodes[0].x",
            ),
        ];
        for (json, field) in cases {
            let (message, fields) = refusal::<Route>(json);
            assert_eq!(fields, [*field], "{json}: {message}");
            assert!(message.starts_with("invalid thing: "), "{message}");
        }
        let (_, fields) = refusal::<Upstream>(r#"{"id":"u","nodes":[],"type":"magic"}"#);
        assert_eq!(fields, ["type"]);
    }
}
