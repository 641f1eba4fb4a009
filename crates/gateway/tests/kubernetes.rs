//! Upstreams in `kubernetes` discovery mode (requirement X5), end to end: a gateway
//! node with a cluster list follows a Service's EndpointSlices in two test Kubernetes
//! API servers (testkit's `kube`, the wire protocol kube-rs speaks) and sends requests
//! to the union of their ready endpoints, real upstreams on loopback addresses; the
//! node list follows the slices without a reload; a cluster whose API server is black
//! holed keeps its endpoints for the grace period, then gives none until it answers
//! again; a cluster that never answered does not hold the others back.
//!
//! `cargo xtask test` runs this suite on both engines (the fast path, then Pingora's
//! path with `PORTICO_TEST_PINGORA_ONLY`).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Node, Options};
use serde_json::{json, Value};
use testkit::kube::{Fault, KubeServer};
use testkit::upstream::NamedUpstream;

/// The cluster's own slice of `shop/web`: `endpoints` (address, ready) on `port`.
fn slice(name: &str, port: u16, endpoints: &[(&NamedUpstream, bool)]) -> Value {
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
            .iter()
            .map(|(u, ready)| json!({"addresses": [u.addr.ip().to_string()], "conditions": {"ready": ready}}))
            .collect::<Vec<_>>(),
    })
}

/// Upstreams named `names` on distinct loopback addresses and one port, as a
/// Service's pods are (EndpointSlices give one port per slice).
async fn pods(names: &[&str], first_address: u8) -> (u16, Vec<NamedUpstream>) {
    'again: loop {
        let first: SocketAddr = format!("127.0.0.{first_address}:0").parse().unwrap();
        let mut started = vec![NamedUpstream::start_on(names[0], first).await];
        let port = started[0].port();
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr: SocketAddr = format!("127.0.0.{}:{port}", usize::from(first_address) + i)
                .parse()
                .unwrap();
            // The port may be taken on another loopback address: pick another.
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'again;
            }
            started.push(NamedUpstream::start_on(name, addr).await);
        }
        return (port, started);
    }
}

/// The node's cluster list: idc, and peak when `with_peak`.
fn cluster_list(with_peak: bool) -> String {
    let mut list = "grace: 2s\nprobe_every: 200ms\nrequest_timeout: 500ms\nwatch_timeout: 2s\n\
                    reload_every: 300ms\nclusters:\n\
                    - {name: idc, role: production, kubeconfig: idc.kubeconfig}\n"
        .to_owned();
    if with_peak {
        list.push_str("- {name: peak, role: peak, kubeconfig: peak.kubeconfig}\n");
    }
    list
}

/// A node, two clusters (idc with pod idc-1, peak with peak-1 and peak-2) and a route
/// `/web` to `shop/web` in both.
struct World {
    node: Node,
    idc: KubeServer,
    peak: KubeServer,
    /// Kept running while the world lives.
    _idc_pods: (u16, Vec<NamedUpstream>),
    peak_pods: (u16, Vec<NamedUpstream>),
    /// The node's status listener.
    status: String,
    dir: tempfile::TempDir,
}

impl World {
    /// `list_peak`: whether the node's cluster list names the peak cluster.
    async fn new(peak_fault: Fault, list_peak: bool) -> Self {
        let idc = KubeServer::start("idc").await;
        let peak = KubeServer::start("peak").await;
        peak.set_fault(peak_fault);
        let idc_pods = pods(&["idc-1"], 2).await;
        let peak_pods = pods(&["peak-1", "peak-2"], 3).await;
        idc.apply(
            "endpointslice-controller.k8s.io",
            slice("web-a", idc_pods.0, &[(&idc_pods.1[0], true)]),
        );
        peak.apply(
            "endpointslice-controller.k8s.io",
            slice(
                "web-b",
                peak_pods.0,
                &[(&peak_pods.1[0], true), (&peak_pods.1[1], true)],
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        idc.write_kubeconfig(&dir.path().join("idc.kubeconfig"));
        peak.write_kubeconfig(&dir.path().join("peak.kubeconfig"));
        let clusters = dir.path().join("clusters.yaml");
        std::fs::write(&clusters, cluster_list(list_peak)).unwrap();
        let status = format!("127.0.0.1:{}", testkit::free_port());
        let mut node = Node::start_with_options(Options {
            kubernetes_clusters: Some(clusters),
            status_listen: Some(status.parse().unwrap()),
            ..Options::default()
        })
        .await;
        node.put(
            "upstreams/web",
            json!({"id": "web", "discovery": {
                "type": "kubernetes", "service": "shop/web", "port": "http",
                "clusters": ["idc", "peak"],
            }}),
        )
        .await;
        node.put(
            "routes/web",
            json!({"id": "web", "paths": ["/web"], "upstream_id": "web"}),
        )
        .await;
        Self {
            node,
            idc,
            peak,
            _idc_pods: idc_pods,
            peak_pods,
            status,
            dir,
        }
    }

    /// The pods that answered 60 requests to `/web` (and any other status seen).
    async fn answering(&self) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            let (status, body, _) = self.node.get("GET", "/web").await;
            seen.insert(if status == 200 {
                body
            } else {
                status.to_string()
            });
        }
        seen
    }

    /// Waits until exactly `want` answer; returns how long that took.
    async fn until_answering(&self, want: &[&str], within: Duration) -> Duration {
        let start = Instant::now();
        let want: BTreeSet<String> = want.iter().map(|w| (*w).to_owned()).collect();
        loop {
            let seen = self.answering().await;
            if seen == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "wanted {want:?} within {within:?}, last saw {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node's `/status`.
    async fn status(&self) -> Value {
        reqwest::get(format!("http://{}/status", self.status))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The node's `/status` view of a cluster.
    async fn cluster_status(&self, cluster: &str) -> Value {
        self.status().await["kubernetes"][cluster].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_follows_a_services_ready_endpoints_across_clusters() {
    let world = World::new(Fault::None, true).await;
    world
        .until_answering(&["idc-1", "peak-1", "peak-2"], Duration::from_secs(10))
        .await;
    let revision = world.status().await["applied_revision"].clone();
    let idc = world.cluster_status("idc").await;
    assert_eq!(
        (&idc["link"], &idc["contributes"], &idc["endpoints"]),
        (&json!("synced"), &json!(true), &json!(1)),
        "{idc}"
    );

    // A pod turns not ready in the peak cluster: it leaves the node list.
    let (port, pods) = &world.peak_pods;
    world.peak.apply(
        "endpointslice-controller.k8s.io",
        slice("web-b", *port, &[(&pods[0], true), (&pods[1], false)]),
    );
    let took = world
        .until_answering(&["idc-1", "peak-1"], Duration::from_secs(5))
        .await;
    assert!(took < Duration::from_secs(1), "left after {took:?}");
    // It comes back; the idc pod's slice is deleted.
    world.peak.apply(
        "endpointslice-controller.k8s.io",
        slice("web-b", *port, &[(&pods[0], true), (&pods[1], true)]),
    );
    assert!(world.idc.delete("EndpointSlice", "shop", "web-a"));
    world
        .until_answering(&["peak-1", "peak-2"], Duration::from_secs(5))
        .await;
    // No reload: the config the node serves is the same revision.
    assert_eq!(world.status().await["applied_revision"], revision);
    world.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_cluster_keeps_its_endpoints_for_the_grace_then_drains() {
    let world = World::new(Fault::None, true).await;
    world
        .until_answering(&["idc-1", "peak-1", "peak-2"], Duration::from_secs(10))
        .await;
    // The peak cluster's API server stops answering; its pods go on serving.
    world.peak.set_fault(Fault::BlackHole);
    let lost = Instant::now();
    // Within the grace (2 s) its endpoints stay.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        world.answering().await,
        ["idc-1", "peak-1", "peak-2"].map(str::to_owned).into()
    );
    // Then they are left out: found within the request timeout (0.5 s) + the grace.
    world
        .until_answering(&["idc-1"], Duration::from_secs(6))
        .await;
    let drained = lost.elapsed();
    // The grace counts from the last answer, up to a probe interval (0.2 s) before
    // the black hole began.
    assert!(
        drained >= Duration::from_millis(1800),
        "drained after {drained:?}, before the grace"
    );
    let peak = world.cluster_status("peak").await;
    assert_eq!(
        (&peak["link"], &peak["contributes"], &peak["endpoints"]),
        (&json!("lost"), &json!(false), &json!(2)),
        "{peak}"
    );
    // The API server answers again: the endpoints are back.
    world.peak.set_fault(Fault::None);
    world
        .until_answering(&["idc-1", "peak-1", "peak-2"], Duration::from_secs(10))
        .await;
    world.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_never_answered_does_not_hold_the_others_back() {
    let world = World::new(Fault::Refuse, true).await;
    world
        .until_answering(&["idc-1"], Duration::from_secs(10))
        .await;
    let peak = world.cluster_status("peak").await;
    assert_eq!(peak["link"], "unknown", "{peak}");
    world.peak.set_fault(Fault::None);
    world
        .until_answering(&["idc-1", "peak-1", "peak-2"], Duration::from_secs(10))
        .await;
    world.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_list_is_read_again_without_a_restart() {
    let world = World::new(Fault::None, false).await;
    world
        .until_answering(&["idc-1"], Duration::from_secs(10))
        .await;
    let peak = world.cluster_status("peak").await;
    assert_eq!(peak, Value::Null, "not listed: {peak}");
    // The operator adds the peak cluster to the list: read within reload_every.
    std::fs::write(world.dir.path().join("clusters.yaml"), cluster_list(true)).unwrap();
    world
        .until_answering(&["idc-1", "peak-1", "peak-2"], Duration::from_secs(10))
        .await;
    // And takes it out again: its endpoints leave at once (it is no longer a source).
    std::fs::write(world.dir.path().join("clusters.yaml"), cluster_list(false)).unwrap();
    world
        .until_answering(&["idc-1"], Duration::from_secs(10))
        .await;
    world.node.stop().await;
}
