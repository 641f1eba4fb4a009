//! The controller end to end, against test API servers acting as clusters (testkit's
//! `kube`, the wire protocol kube-rs speaks): peak endpoints reach the production
//! cluster's slices within a second and leave them; a steady state writes nothing; a
//! black-holed peak keeps its endpoints for the grace period, then drains them, and
//! gets them back when it returns; a watch that went silent while its API server
//! answers is found out within the watch timeout; a restart while a peak is
//! unreachable does not flap the slices; rotated credentials are picked up from the
//! kubeconfig; only the Lease holder writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::kube::{Fault, KubeServer};
use tokio::sync::watch;
use xcluster::aggregator::Status;

const MANAGER: &str = "portico-xcluster";

fn service(remote: bool) -> Value {
    json!({
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "labels": {"ex-remote": if remote { "true" } else { "false" }},
        },
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

/// The cluster's own slice of `web`, as its built-in controller writes it.
fn own_slice(name: &str, addresses: &[&str]) -> Value {
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
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect::<Vec<_>>(),
    })
}

/// Two clusters and the controller's files.
struct World {
    production: KubeServer,
    peak: KubeServer,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let production = KubeServer::start("idc-a").await;
        let peak = KubeServer::start("peak-1").await;
        production.apply("endpointslice-controller.k8s.io", service(false));
        production.apply(
            "endpointslice-controller.k8s.io",
            own_slice("web-own", &["10.0.0.1", "10.0.0.2"]),
        );
        peak.apply("endpointslice-controller.k8s.io", service(true));
        peak.apply(
            "endpointslice-controller.k8s.io",
            own_slice("web-peak", &["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        );
        let dir = tempfile::tempdir().unwrap();
        production.write_kubeconfig(&dir.path().join("idc-a.kubeconfig"));
        peak.write_kubeconfig(&dir.path().join("peak-1.kubeconfig"));
        std::fs::write(
            dir.path().join("clusters.yaml"),
            "grace: 3s\nprobe_every: 200ms\nrequest_timeout: 500ms\nwatch_timeout: 2s\nreload_every: 500ms\n\
             lease: {duration: 3s}\n\
             clusters:\n\
             - {name: idc-a, role: production, provider: idc, kubeconfig: idc-a.kubeconfig}\n\
             - {name: peak-1, role: peak, provider: aliyun, kubeconfig: peak-1.kubeconfig}\n",
        )
        .unwrap();
        Self {
            production,
            peak,
            dir,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("clusters.yaml")
    }

    fn start(&self) -> Controller {
        Controller::start(self.path(), "replica-a")
    }

    /// The resourceVersions of Portico's slices in the production cluster (the Lease
    /// lives there too, so the cluster's own version moves with its renewals).
    fn slice_versions(&self) -> Vec<String> {
        self.production
            .list(
                "EndpointSlice",
                "endpointslice.kubernetes.io/managed-by=portico-xcluster",
            )
            .iter()
            .map(|s| {
                s["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// The peak endpoints in the production cluster's Portico slices: address → ready.
    fn united(&self) -> BTreeMap<String, bool> {
        portico_endpoints(&self.production)
    }

    fn set_peak_addresses(&self, addresses: &[&str]) {
        self.peak.apply(
            "endpointslice-controller.k8s.io",
            own_slice("web-peak", addresses),
        );
    }

    fn writes(&self) -> u64 {
        self.production
            .writes()
            .get(MANAGER)
            .copied()
            .unwrap_or_default()
    }
}

fn portico_endpoints(server: &KubeServer) -> BTreeMap<String, bool> {
    let mut all = BTreeMap::new();
    for slice in server.list(
        "EndpointSlice",
        "endpointslice.kubernetes.io/managed-by=portico-xcluster",
    ) {
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            all.insert(
                endpoint["addresses"][0].as_str().unwrap().to_owned(),
                endpoint["conditions"]["ready"].as_bool().unwrap_or(true),
            );
        }
    }
    all
}

fn ready(addresses: &[&str]) -> BTreeMap<String, bool> {
    addresses.iter().map(|a| ((*a).to_owned(), true)).collect()
}

/// A running controller; stopped when dropped.
struct Controller {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    status: Arc<Mutex<Status>>,
}

impl Controller {
    fn start(path: PathBuf, identity: &str) -> Self {
        let (stop, stopped) = watch::channel(false);
        let status = Arc::new(Mutex::new(Status::default()));
        let task = tokio::spawn(xcluster::controller::run(
            xcluster::controller::Options {
                clusters: Some(path),
                admin: None,
                identity: identity.to_owned(),
            },
            status.clone(),
            stopped,
        ));
        Self { stop, task, status }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        let task = self.task;
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the controller stops");
        result.unwrap().unwrap();
    }

    fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    /// Ends the controller without letting it give its Lease up (a crash).
    fn crash(self) {
        self.task.abort();
    }
}

/// Waits until `check` holds, for at most `limit`; answers how long it took.
async fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn peak_endpoints_reach_production_within_a_second_and_a_steady_state_writes_nothing() {
    let world = World::new().await;
    let controller = world.start();
    within(Duration::from_secs(10), "the first union", || {
        world.united() == ready(&["10.1.0.1", "10.1.0.2", "10.1.0.3"])
    })
    .await;

    // The slice is Portico's, labelled as the MCS API and the built-in controller expect.
    let slices = world.production.list(
        "EndpointSlice",
        "endpointslice.kubernetes.io/managed-by=portico-xcluster",
    );
    assert_eq!(slices.len(), 1);
    let labels = &slices[0]["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/service-name"], "web");
    assert_eq!(
        labels["multicluster.kubernetes.io/source-cluster"],
        "peak-1"
    );
    assert_eq!(
        slices[0]["metadata"]["ownerReferences"][0]["kind"],
        "Service"
    );
    assert_eq!(slices[0]["ports"][0]["port"], 8080);
    let own = world
        .production
        .get("EndpointSlice", "shop", "web-own")
        .unwrap();
    let managers: Vec<&str> = own["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(
        managers,
        ["endpointslice-controller.k8s.io"],
        "the built-in slice is not touched"
    );

    // A peak pod comes: in the production slices within a second.
    world.set_peak_addresses(&["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"]);
    let took = within(Duration::from_secs(1), "a new peak endpoint", || {
        world.united().contains_key("10.1.0.4")
    })
    .await;
    eprintln!("a peak endpoint reached production in {took:?}");

    // A peak pod goes: gone from them.
    world.set_peak_addresses(&["10.1.0.1", "10.1.0.2", "10.1.0.4"]);
    within(Duration::from_secs(1), "a removed peak endpoint", || {
        world.united() == ready(&["10.1.0.1", "10.1.0.2", "10.1.0.4"])
    })
    .await;

    // Steady: its own writes' events, bookmarks, watch restarts and resyncs cause no
    // writes (the watch timeout is 2 s, so this spans restarted watches).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = world.writes();
    let versions = world.slice_versions();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(world.writes(), writes, "a steady state writes nothing");
    assert_eq!(world.slice_versions(), versions);

    let status = controller.status();
    assert_eq!(status.clusters["peak-1"].contributed, 3);
    assert_eq!(
        status.union_sizes.values().copied().collect::<Vec<_>>(),
        [5],
        "2 own + 3 peak"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_black_holed_peak_keeps_its_endpoints_for_the_grace_then_drains_and_comes_back() {
    let world = World::new().await;
    let controller = world.start();
    let all = ready(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    within(Duration::from_secs(10), "the first union", || {
        world.united() == all
    })
    .await;

    world.peak.set_fault(Fault::BlackHole);
    let lost = Instant::now();
    // Within the grace (3 s): still ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(world.united(), all, "kept during the grace period");
    // After it: listed, not ready.
    let drained = within(Duration::from_secs(5), "drained after the grace", || {
        world.united().values().all(|ready| !ready) && world.united().len() == 3
    })
    .await;
    eprintln!(
        "drained {:?} after the peak was black-holed",
        lost.elapsed() - Duration::from_millis(1500) + drained
    );
    assert!(lost.elapsed() >= Duration::from_secs(3));

    // Back: ready again, from a fresh list (the old watches were black-holed).
    world.peak.set_fault(Fault::None);
    world.set_peak_addresses(&["10.1.0.1", "10.1.0.2"]);
    within(Duration::from_secs(5), "back after the black hole", || {
        world.united() == ready(&["10.1.0.1", "10.1.0.2"])
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn a_restart_while_a_peak_is_unreachable_does_not_flap_the_slices() {
    let world = World::new().await;
    let first = world.start();
    let all = ready(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    within(Duration::from_secs(10), "the first union", || {
        world.united() == all
    })
    .await;
    first.stop().await;

    world.peak.set_fault(Fault::Refuse);
    let writes = world.writes();
    let versions = world.slice_versions();
    let second = world.start();
    // The production cluster is synced again but the peak is unknown: its slices stay.
    within(
        Duration::from_secs(10),
        "the production cluster synced",
        || {
            second
                .status()
                .clusters
                .get("idc-a")
                .is_some_and(|c| c.link == xcluster::union::Link::Synced)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        world.united(),
        all,
        "the unknown peak's endpoints stay as they were"
    );
    assert_eq!(world.writes(), writes);
    assert_eq!(world.slice_versions(), versions);

    // The peak comes back unchanged: still nothing to write.
    world.peak.set_fault(Fault::None);
    within(Duration::from_secs(10), "the peak synced", || {
        second
            .status()
            .clusters
            .get("peak-1")
            .is_some_and(|c| c.link == xcluster::union::Link::Synced)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        world.writes(),
        writes,
        "a restart writes nothing when nothing changed"
    );
    second.stop().await;
}

#[tokio::test]
async fn rotated_credentials_and_new_clusters_are_picked_up_without_a_restart() {
    let world = World::new().await;
    let controller = world.start();
    within(Duration::from_secs(10), "the first union", || {
        world.united().len() == 3
    })
    .await;

    // The peak's token is rotated and its kubeconfig rewritten: changes still arrive.
    world.peak.rotate_token();
    world
        .peak
        .write_kubeconfig(&world.dir.path().join("peak-1.kubeconfig"));
    // Open watches outlive a rotation (as on a real API server): end them, so the
    // change comes only through requests made with the new token.
    world.peak.close_watches();
    world.set_peak_addresses(&["10.1.0.7"]);
    within(
        Duration::from_secs(5),
        "a change after the rotation",
        || world.united() == ready(&["10.1.0.7"]),
    )
    .await;

    // A second peak cluster is added to the list: its endpoints join the union.
    let second = KubeServer::start("peak-2").await;
    second.apply("endpointslice-controller.k8s.io", service(true));
    second.apply(
        "endpointslice-controller.k8s.io",
        own_slice("web-peak", &["10.2.0.1"]),
    );
    second.write_kubeconfig(&world.dir.path().join("peak-2.kubeconfig"));
    append(
        &world.path(),
        "- {name: peak-2, role: peak, provider: aws, kubeconfig: peak-2.kubeconfig}\n",
    );
    within(
        Duration::from_secs(5),
        "the new cluster's endpoints",
        || world.united() == ready(&["10.1.0.7", "10.2.0.1"]),
    )
    .await;
    controller.stop().await;
}

fn append(path: &Path, text: &str) {
    let mut all = std::fs::read_to_string(path).unwrap();
    all.push_str(text);
    let partial = path.with_extension("partial");
    std::fs::write(&partial, all).unwrap();
    std::fs::rename(partial, path).unwrap();
}

#[tokio::test]
async fn only_the_lease_holder_writes_and_a_standby_takes_over_when_it_dies() {
    let world = World::new().await;
    let a = Controller::start(world.path(), "replica-a");
    within(Duration::from_secs(10), "the first union", || {
        world.united().len() == 3
    })
    .await;
    let b = Controller::start(world.path(), "replica-b");
    within(Duration::from_secs(10), "the standby synced", || {
        b.status()
            .clusters
            .values()
            .all(|c| c.link == xcluster::union::Link::Synced)
    })
    .await;
    assert!(a.status().leader && !b.status().leader);
    let lease = world
        .production
        .get("Lease", "default", "portico-xcluster")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");

    world.set_peak_addresses(&["10.1.0.5"]);
    within(Duration::from_secs(2), "the leader's write", || {
        world.united() == ready(&["10.1.0.5"])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.status().applied > 0);
    assert_eq!(
        (b.status().applied, b.status().deleted),
        (0, 0),
        "the standby never writes"
    );

    // The leader dies without giving the Lease up: the standby takes it once the last
    // renewal it saw is 3 s old by its own clock (renewals come every 1 s, so at least
    // 2 s after the death), and writes from then on.
    a.crash();
    let died = Instant::now();
    world.set_peak_addresses(&["10.1.0.6"]);
    within(Duration::from_secs(10), "the standby's write", || {
        world.united() == ready(&["10.1.0.6"])
    })
    .await;
    assert!(
        died.elapsed() >= Duration::from_secs(2),
        "not before the Lease ran out"
    );
    assert!(b.status().leader);
    let lease = world
        .production
        .get("Lease", "default", "portico-xcluster")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    b.stop().await;
    let lease = world
        .production
        .get("Lease", "default", "portico-xcluster")
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "given up on a clean stop"
    );
}

#[tokio::test]
async fn a_silently_dead_watch_is_found_out_within_the_watch_timeout() {
    let world = World::new().await;
    let controller = world.start();
    within(Duration::from_secs(10), "the first union", || {
        world.united().len() == 3
    })
    .await;

    // The peak's open watches fall silent (no events, no bookmarks, never closed); the
    // API server itself answers, so the probe sees nothing wrong.
    world.peak.silence_watches();
    world.set_peak_addresses(&["10.1.0.8"]);
    // The watch timeout is 2 s here (60 s by default): kube-rs gives a silent watch
    // that plus 5 s, then watches again and gets the change.
    let took = within(
        Duration::from_secs(12),
        "the change behind the silent watch",
        || world.united() == ready(&["10.1.0.8"]),
    )
    .await;
    eprintln!("a silent watch was replaced after {took:?}");
    assert!(
        controller.status().clusters["peak-1"].link == xcluster::union::Link::Synced,
        "the peak never counted as lost: its API answered"
    );
    controller.stop().await;
}
