//! Encryption at rest on SQLite (PostgreSQL and MariaDB run the same flow in
//! `databases.rs`): certificate keys and agent tokens never reach a row in clear.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_rotated_and_never_opened_wrongly_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    common::secrets_flow(&db).await;
}
