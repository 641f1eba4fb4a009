//! An open-loop HTTP/1.1 load generator for latency comparisons at a fixed offered
//! rate (wrk's closed loop measures latency at whatever rate the slower side allows,
//! so a faster proxy saturates the load side and gets its queueing counted).
//!
//! ```text
//! cargo run --release -p testkit --example paced_load -- URL RATE [CONNECTIONS] [SECONDS]
//! ```
//!
//! Each of CONNECTIONS keep-alive connections sends `GET` requests on a fixed schedule
//! (RATE / CONNECTIONS per second each, start times staggered). A request held up by
//! the previous response on its connection counts from the time it was *scheduled*,
//! so a stall delays every request behind it and is counted in full (no coordinated
//! omission); one sent on time counts from when it was sent, since tokio's timers wake
//! up to a millisecond late and that slack is the generator's, not the proxy's. Prints
//! one line: `sent=… rate=… p50_ms=… p90_ms=… p99_ms=… p999_ms=… max_ms=… errors=…`.
//! Responses must carry a Content-Length (the benchmark's upstreams do).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(rate)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: paced_load URL RATE [CONNECTIONS] [SECONDS]");
    };
    let rate: f64 = rate.parse()?;
    let connections: usize = args.get(2).map_or(Ok(64), |c| c.parse())?;
    let seconds: f64 = args.get(3).map_or(Ok(10.0), |s| s.parse())?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(
        authority.to_string(),
        request,
        rate,
        connections,
        Duration::from_secs_f64(seconds),
    ))
}

async fn run(
    authority: String,
    request: Vec<u8>,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let stream = TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let request = request.clone();
        // Staggered, so the connections do not fire together.
        let first = start + interval.mul_f64(c as f64 / connections as f64);
        tasks.spawn(connection(
            stream,
            request,
            first,
            interval,
            start + duration,
        ));
    }
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (mut l, e) = done?;
        latencies.append(&mut l);
        errors += e;
    }
    latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[i] as f64 / 1000.0
    };
    println!(
        "sent={} rate={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} errors={errors}",
        latencies.len(),
        latencies.len() as f64 / duration.as_secs_f64(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
    );
    Ok(())
}

/// Latencies in microseconds, and the number of failed requests.
async fn connection(
    mut stream: TcpStream,
    request: Vec<u8>,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> (Vec<u32>, usize) {
    let mut latencies = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut due = first;
    // When the previous response arrived.
    let mut free_at = Instant::now();
    while due < end {
        tokio::time::sleep_until(due).await;
        // A request the previous response held up counts from when it was due; one the
        // timer woke late (tokio's timers tick in milliseconds) from when it was sent,
        // so the generator's own timer slack is not charged to the proxy.
        let from = if free_at > due { due } else { Instant::now() };
        if stream.write_all(&request).await.is_err()
            || read_response(&mut stream, &mut buf).await.is_err()
        {
            return (latencies, 1);
        }
        free_at = Instant::now();
        latencies.push((free_at - from).as_micros().min(u32::MAX as u128) as u32);
        due += interval;
    }
    (latencies, 0)
}

/// Reads one response (head, then Content-Length bytes of body).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        if !head.starts_with("HTTP/1.1 200") {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or(std::io::ErrorKind::InvalidData)?;
        if buf.len() >= head_end + 4 + length {
            return Ok(());
        }
    }
}
