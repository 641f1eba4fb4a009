//! The web console's files as the admin serves them: at `/` and `/console/…` without a
//! token, with their types, a strict Content-Security-Policy and ETags; nothing outside
//! the embedded files; the API and every other path still behind the token.

mod common;

use std::time::Duration;

use common::{TestAdmin, API};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_without_a_token_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let base = admin.url.trim_end_matches(API).to_owned();
    let http = reqwest::Client::new();

    let shell = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(shell.status(), StatusCode::OK);
    let headers = shell.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-cache");
    let html = shell.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/app.js">"#));
    assert!(!html.contains("<script>"), "no inline script");

    let app = http
        .get(format!("{base}/console/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(app.status(), StatusCode::OK);
    assert_eq!(
        app.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = app.headers()["etag"].to_str().unwrap().to_owned();
    let again = http
        .get(format!("{base}/console/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
    let css = http
        .get(format!("{base}/console/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    let missing = http
        .get(format!("{base}/console/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], "application/json");

    // The path as sent, not as a client would normalise it.
    let addr = base.trim_start_matches("http://").to_owned();
    for path in [
        "/console/../Cargo.toml",
        "/console/%2e%2e/Cargo.toml",
        "/console/../../src/lib.rs",
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer.split(' ').nth(1).unwrap_or_default();
        assert!(status == "404" || status == "401", "{path}: {answer}");
        assert!(
            !answer.contains("[package]") && !answer.contains("mod console"),
            "{path}: {answer}"
        );
    }

    // Everything else still needs the token.
    for path in [
        format!("{API}/namespaces"),
        "/whatever".to_owned(),
        format!("{API}/"),
    ] {
        let answer = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    admin.stop().await;
}
