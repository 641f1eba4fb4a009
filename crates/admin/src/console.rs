//! The web console: the files under `console/src/`, embedded into the binary at build
//! time (in debug builds too, so a copied binary serves them and tests see what ships),
//! served at `/` and `/console/{file}`.
//!
//! They are served without a token: they are the same for everyone and hold no data;
//! everything the console shows it asks the authenticated API for. Only embedded files
//! are answered (nothing is read from disk at run time, so a path cannot reach
//! outside them). Every answer carries a strict Content-Security-Policy (scripts,
//! styles and calls from this origin only; no inline script or style, no framing), an
//! `ETag` from the file's SHA-256 (`If-None-Match` gets 304) and `Cache-Control:
//! no-cache`, so browsers revalidate and pick up a new binary's console at once.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "console/src/"]
struct Files;

/// What a console page may load and call: this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
    connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (outside authentication; see the module's doc).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/console/{*file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

fn serve(file: &str, request: &HeaderMap) -> Response {
    let Some(found) = Files::get(file) else {
        return ApiError::NotFound(format!("the console has no file {file:?}")).into_response();
    };
    let etag = format!("\"{}\"", hex::encode(found.metadata.sha256_hash()));
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header value"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(file)),
    );
    (StatusCode::OK, headers, found.data.into_owned()).into_response()
}

/// The media type of a console file, by its extension.
fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_known_type_and_the_shell_is_there() {
        assert!(Files::get("index.html").is_some());
        for file in Files::iter() {
            assert_ne!(
                content_type(&file),
                "application/octet-stream",
                "{file} would be served without a type"
            );
        }
    }
}
