//! A built-in echo upstream for the demo: answers every request with what it received.

use axum::extract::Request;
use axum::Json;
use serde_json::json;

/// Serves the echo upstream on `listener` until `shutdown` flips to true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = axum::Router::new().fallback(echo);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn echo(request: Request) -> Json<serde_json::Value> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                json!(String::from_utf8_lossy(value.as_bytes())),
            )
        })
        .collect();
    Json(json!({
        "service": "portico-demo-echo",
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "headers": headers,
    }))
}
