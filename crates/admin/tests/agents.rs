//! The admin's calls to agents over real connections: redirects are never followed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use common::{certificate, route, upstream, TestAdmin, TestAgent};
use reqwest::StatusCode;
use serde_json::json;

/// A listener that counts the connections it accepts and answers none of them.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, accepted)
}

/// An HTTP server that answers every request with 307 to the same path on `target`,
/// counting the requests.
async fn redirector(target: String) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let target = target.clone();
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            (
                AxumStatus::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("{target}{uri}"))],
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

/// A cluster moved to an address that redirects: pushes, polls and snapshots stop at
/// the redirect, nothing (no token, no certificate key) reaches the redirect's target,
/// and changes stay pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_from_an_agent_address_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_millis(200)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    let base = "/clusters/c1/instances/instance_a";
    let answer = admin
        .send(
            "POST",
            &format!("{base}/certificates"),
            certificate("cert1"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);

    let (target, accepted) = counting_listener().await;
    let (redirecting, hits) = redirector(target).await;
    let answer = admin
        .send(
            "PUT",
            "/clusters/c1",
            json!({"name": "c1", "agent_address": redirecting}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    // A change is pushed to the redirecting address (and the snapshot would follow a
    // refusal): the redirect is an unreachable agent, so the change stays pending.
    admin
        .send("POST", &format!("{base}/upstreams"), upstream("up", 8080))
        .await;
    let answer = admin
        .send("POST", &format!("{base}/routes"), route("r1", "up"))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.header("x-portico-sync"), "pending");

    // Several poll rounds go by; the redirector is asked every time, its target never.
    common::wait_until("the redirector polled several times", || async {
        (hits.load(Ordering::SeqCst) >= 5).then_some(())
    })
    .await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
    // The real agent's store did not move either.
    assert_eq!(
        agent
            .stored_ids("instance_a", model::resource::ResourceKind::Routes)
            .await,
        Vec::<String>::new()
    );
    admin.stop().await;
}
