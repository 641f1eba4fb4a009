//! Access logs: `file-logger` (JSON lines appended to a file) and `http-logger` (JSON
//! arrays POSTed in batches). A request's line is made in the log phase, so refused
//! requests are logged too, and handed to a sink without waiting: each sink has a
//! bounded queue, and a line that does not fit is dropped and counted
//! (`portico_log_lines_dropped_total`, per node) rather than slowing requests down.
//!
//! One sink per file or URL and process, shared by every plugin that names it. The
//! file sink runs on a thread of its own; it opens the file again after SIGUSR1 and
//! when the path no longer names the open file (renamed or removed by logrotate).
//! The HTTP sink is a task that sends a batch when it is full or when the oldest line
//! waited `inactive_timeout_ms`; a failed POST is logged and its batch dropped.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;

use super::PluginPlace;
use crate::core::phase::{LogRecord, PhaseCtx, Plugin};
use crate::runtime::{Effects, NodeCounters};

/// Lines a file sink holds before it drops.
const FILE_QUEUE: usize = 65_536;

/// Bumped by SIGUSR1: file sinks open their file again.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Starts the SIGUSR1 listener once per process (a thread of its own: plugins are
/// compiled off the async workers) and returns once the signal is taken, so a
/// SIGUSR1 never finds the process without its handler once a file logger exists.
fn listen_for_reopen() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let (ready, listening) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("portico-sigusr1".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut signals) = signal(SignalKind::user_defined1()) else {
                        return;
                    };
                    let _ = ready.send(());
                    while signals.recv().await.is_some() {
                        REOPEN.fetch_add(1, Ordering::Relaxed);
                    }
                });
            });
        let listening = spawned.is_ok() && listening.recv_timeout(Duration::from_secs(5)).is_ok();
        if !listening {
            tracing::warn!("cannot listen for SIGUSR1; log files reopen on rotation only");
        }
    });
}

/// One access-log line.
pub(crate) fn line(record: &LogRecord<'_>, ctx: &PhaseCtx) -> serde_json::Value {
    let request = ctx.request.as_deref();
    let header = |key: &str| {
        ctx.get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    json!({
        "time_ms": crate::now_ms(),
        "route": record.route_id,
        "service": record.service_id,
        "consumer": ctx.consumer.as_ref().map(|c| &*c.id),
        "client_ip": record.client_ip.map(|ip| ip.to_string()),
        "method": request.map(|r| r.method.as_str()),
        "host": request.map(|r| r.host.as_str()),
        "path": request.map(|r| r.path.as_str()),
        "status": record.status,
        "duration_ms": record.duration.as_secs_f64() * 1000.0,
        "upstream_ms": record.upstream.map(|d| d.as_secs_f64() * 1000.0),
        "request_id": header("request-id"),
        "trace_id": header(super::traceparent::TRACE_ID),
    })
}

/// The file sinks by path.
static FILES: LazyLock<Mutex<HashMap<String, SyncSender<String>>>> =
    LazyLock::new(Default::default);

fn file_sink(path: &str) -> Result<SyncSender<String>, String> {
    let mut files = FILES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = files.get(path) {
        return Ok(tx.clone());
    }
    listen_for_reopen();
    let file = open(path)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(FILE_QUEUE);
    let owned = path.to_owned();
    std::thread::Builder::new()
        .name("portico-file-logger".into())
        .spawn(move || write_lines(&owned, file, rx))
        .map_err(|e| format!("cannot start the writer of {path}: {e}"))?;
    files.insert(path.to_owned(), tx.clone());
    Ok(tx)
}

fn open(path: &str) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("path: cannot open {path}: {e}"))
}

/// Whether `path` still names the open file.
fn same_file(path: &str, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => named.ino() == open.ino() && named.dev() == open.dev(),
        _ => false,
    }
}

/// The file sink's thread: writes lines as they come, flushes when the queue is empty,
/// opens the file again when asked or rotated. Ends when every sender is gone.
fn write_lines(path: &str, file: std::fs::File, rx: Receiver<String>) {
    let mut out = std::io::BufWriter::new(file);
    let mut generation = REOPEN.load(Ordering::Relaxed);
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let asked = REOPEN.load(Ordering::Relaxed);
        if asked != generation || !same_file(path, out.get_ref()) {
            generation = asked;
            let _ = out.flush();
            match open(path) {
                Ok(file) => out = std::io::BufWriter::new(file),
                Err(e) => tracing::warn!(error = %e, "cannot reopen the access log"),
            }
        }
        if let Some(line) = line {
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
        }
        // Drain what is queued, then flush once.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
}

#[derive(Debug)]
pub struct FileLogger {
    tx: SyncSender<String>,
    counters: Arc<NodeCounters>,
}

impl FileLogger {
    /// In a dry build the file is not opened and no writer started: the plugin's
    /// lines would be dropped (it never serves a request).
    pub fn compile(
        config: &model::plugin::FileLogger,
        place: &PluginPlace<'_>,
    ) -> Result<Self, String> {
        let tx = match place.effects {
            Effects::Live => file_sink(&config.path)?,
            Effects::Dry => std::sync::mpsc::sync_channel(1).0,
        };
        Ok(Self {
            tx,
            counters: place.counters.clone(),
        })
    }
}

fn dropped(counters: &NodeCounters) {
    counters.log_dropped.fetch_add(1, Ordering::Relaxed);
}

impl Plugin for FileLogger {
    fn name(&self) -> &'static str {
        model::plugin::FILE_LOGGER.name
    }

    fn wants_request_summary(&self) -> bool {
        true
    }

    fn log(&self, record: &LogRecord<'_>, ctx: &PhaseCtx) {
        match self.tx.try_send(line(record, ctx).to_string()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => dropped(&self.counters),
        }
    }
}

/// The HTTP sinks by (URL, batch size, wait, queue).
type HttpKey = (String, usize, u64, usize);
static ENDPOINTS: LazyLock<Mutex<HashMap<HttpKey, tokio::sync::mpsc::Sender<serde_json::Value>>>> =
    LazyLock::new(Default::default);

fn http_sink(
    config: &model::plugin::HttpLogger,
) -> Result<tokio::sync::mpsc::Sender<serde_json::Value>, String> {
    let key = (
        config.uri.clone(),
        config.batch_max_size,
        config.inactive_timeout_ms,
        config.max_queue,
    );
    let mut endpoints = ENDPOINTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = endpoints.get(&key).filter(|tx| !tx.is_closed()) {
        return Ok(tx.clone());
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "http-logger needs the gateway's runtime".to_owned())?;
    let (tx, rx) = tokio::sync::mpsc::channel(config.max_queue);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("uri: {e}"))?;
    runtime.spawn(send_batches(
        client,
        config.uri.clone(),
        config.batch_max_size,
        Duration::from_millis(config.inactive_timeout_ms),
        rx,
    ));
    endpoints.insert(key, tx.clone());
    Ok(tx)
}

/// Collects lines into batches and POSTs each as a JSON array; ends when every sender
/// is gone (after sending what is left).
async fn send_batches(
    client: reqwest::Client,
    uri: String,
    batch: usize,
    wait: Duration,
    mut rx: tokio::sync::mpsc::Receiver<serde_json::Value>,
) {
    let mut lines = Vec::with_capacity(batch);
    loop {
        let first = match rx.recv().await {
            Some(line) => line,
            None => return,
        };
        lines.push(first);
        let deadline = tokio::time::Instant::now() + wait;
        while lines.len() < batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => lines.push(line),
                Ok(None) | Err(_) => break,
            }
        }
        let body = serde_json::Value::Array(std::mem::take(&mut lines)).to_string();
        let sent = client
            .post(&uri)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(
                    status = response.status().as_u16(),
                    "the access-log endpoint refused a batch"
                )
            }
            Err(e) => tracing::warn!(error = %e, "an access-log batch was not delivered"),
        }
    }
}

#[derive(Debug)]
pub struct HttpLogger {
    tx: tokio::sync::mpsc::Sender<serde_json::Value>,
    counters: Arc<NodeCounters>,
}

impl HttpLogger {
    /// In a dry build no sender task is started (see [`FileLogger::compile`]).
    pub fn compile(
        config: &model::plugin::HttpLogger,
        place: &PluginPlace<'_>,
    ) -> Result<Self, String> {
        let tx = match place.effects {
            Effects::Live => http_sink(config)?,
            Effects::Dry => tokio::sync::mpsc::channel(1).0,
        };
        Ok(Self {
            tx,
            counters: place.counters.clone(),
        })
    }
}

impl Plugin for HttpLogger {
    fn name(&self) -> &'static str {
        model::plugin::HTTP_LOGGER.name
    }

    fn wants_request_summary(&self) -> bool {
        true
    }

    fn log(&self, record: &LogRecord<'_>, ctx: &PhaseCtx) {
        if self.tx.try_send(line(record, ctx)).is_err() {
            dropped(&self.counters);
        }
    }
}
