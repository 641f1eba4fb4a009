//! `portico xcluster` started the way an operator starts it, against two test
//! Kubernetes API servers: it unites a peak Service's endpoints into the production
//! cluster, serves its status and metrics, and on SIGTERM stops and gives its Lease up.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::kube::KubeServer;
use testkit::process::Process;

fn service(remote: bool) -> Value {
    json!({
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"ex-remote": remote.to_string()}},
        "spec": {"ports": [{"port": 80}]},
    })
}

fn slice(addresses: &[&str]) -> Value {
    json!({
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
    })
}

// Several threads: the test API servers must answer while the test waits for the
// process to stop (its Lease is given up on the way out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_process_unites_reports_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let production = KubeServer::start("idc").await;
    let peak = KubeServer::start("peak").await;
    production.apply("endpointslice-controller.k8s.io", service(false));
    production.apply("endpointslice-controller.k8s.io", slice(&["10.0.0.1"]));
    peak.apply("endpointslice-controller.k8s.io", service(true));
    peak.apply(
        "endpointslice-controller.k8s.io",
        slice(&["10.9.0.1", "10.9.0.2"]),
    );
    production.write_kubeconfig(&dir.path().join("idc.kubeconfig"));
    peak.write_kubeconfig(&dir.path().join("peak.kubeconfig"));
    let clusters = dir.path().join("clusters.yaml");
    std::fs::write(
        &clusters,
        "probe_every: 500ms\nclusters:\n\
         - {name: idc, role: production, provider: idc, kubeconfig: idc.kubeconfig}\n\
         - {name: peak, role: peak, provider: aliyun, kubeconfig: peak.kubeconfig}\n",
    )
    .unwrap();
    let status_addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut process = Process::start(
        "xcluster",
        env!("CARGO_BIN_EXE_portico"),
        &[
            "xcluster",
            "--clusters",
            clusters.to_str().unwrap(),
            "--status-listen",
            &status_addr,
            "--identity",
            "xc-1",
        ],
        &[],
        dir.path(),
    );

    let start = Instant::now();
    loop {
        let united: Vec<Value> = production.list(
            "EndpointSlice",
            "endpointslice.kubernetes.io/managed-by=portico-xcluster",
        );
        if united.len() == 1 && united[0]["endpoints"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no union; log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let http = reqwest::Client::new();
    let status: Value = http
        .get(format!("http://{status_addr}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["leader"], true);
    let links: Vec<(&str, &str)> = status["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["link"].as_str().unwrap()))
        .collect();
    assert_eq!(links, [("idc", "synced"), ("peak", "synced")]);
    assert_eq!(status["services"][0]["union_endpoints"], 3);
    assert_eq!(status["clusters"][1]["endpoints_contributed"], 2);

    let metrics = http
        .get(format!("http://{status_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"portico_xcluster_cluster_synced{cluster="peak",role="peak",provider="aliyun"} 1"#,
        r#"portico_xcluster_endpoints_contributed{cluster="peak",role="peak",provider="aliyun"} 2"#,
        r#"portico_xcluster_union_endpoints{cluster="idc",namespace="shop",service="web"} 3"#,
        r#"portico_xcluster_slice_writes_total{result="applied"} 1"#,
        "portico_xcluster_leader 1",
        "portico_xcluster_reconcile_duration_seconds_count 1",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    let lease = production
        .get("Lease", "default", "portico-xcluster")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "xc-1");
    process.stop();
    assert!(!process.is_running());
    let lease = production
        .get("Lease", "default", "portico-xcluster")
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "the lease is given up on SIGTERM; log:\n{}",
        process.log()
    );
    let log = process.log();
    assert!(
        !log.contains(&production.token()),
        "no credential in the log"
    );
}

/// The clusters come from the admin's registry: each cluster's Kubernetes face and
/// kubeconfig are registered there, the controller reads them (and reads them again,
/// so a rotated credential is a PUT to the admin and nothing else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_registered_in_the_admin_are_watched_and_rotated_credentials_followed() {
    const ADMIN_TOKEN: &str = "xcluster-test-admin-token-0123";
    let dir = tempfile::tempdir().unwrap();
    let production = KubeServer::start("idc").await;
    let peak = KubeServer::start("peak").await;
    production.apply("endpointslice-controller.k8s.io", service(false));
    peak.apply("endpointslice-controller.k8s.io", service(true));
    peak.apply("endpointslice-controller.k8s.io", slice(&["10.9.0.1"]));

    let admin_listen = format!("127.0.0.1:{}", testkit::free_port());
    let database = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = Process::start(
        "admin",
        env!("CARGO_BIN_EXE_portico"),
        &[
            "admin",
            "--listen",
            &admin_listen,
            "--database",
            &database,
            "--poll-interval",
            "60s",
        ],
        &[
            ("PORTICO_ADMIN_TOKEN", ADMIN_TOKEN),
            (
                "PORTICO_DATA_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
        ],
        dir.path(),
    );
    testkit::wait_for_tcp(&admin_listen, Duration::from_secs(20)).await;
    let admin_url = format!("http://{admin_listen}/gateway/apiserver/v1");
    let http = reqwest::Client::new();
    let cluster = |name: &str, role: &str, kubeconfig: String| {
        json!({
            "name": name,
            "agent_address": "http://127.0.0.1:1",
            "agent_token": "unused-agent-token-0123456789",
            "kubernetes": {"role": role, "provider": "test", "kubeconfig": kubeconfig},
        })
    };
    for (name, role, server) in [("idc", "production", &production), ("peak", "peak", &peak)] {
        let answer = http
            .post(format!("{admin_url}/clusters"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&cluster(name, role, server.kubeconfig()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());
    }

    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "probe_every: 300ms\nrequest_timeout: 1s\nreload_every: 500ms\n",
    )
    .unwrap();
    let status_addr = format!("127.0.0.1:{}", testkit::free_port());
    let process = Process::start(
        "xcluster",
        env!("CARGO_BIN_EXE_portico"),
        &[
            "xcluster",
            "--admin",
            &admin_url,
            "--clusters",
            settings.to_str().unwrap(),
            "--status-listen",
            &status_addr,
        ],
        &[("PORTICO_ADMIN_TOKEN", ADMIN_TOKEN)],
        dir.path(),
    );
    let united = |addresses: &[&str]| {
        let held: Vec<String> = production
            .list(
                "EndpointSlice",
                "endpointslice.kubernetes.io/managed-by=portico-xcluster",
            )
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| e["addresses"][0].as_str().unwrap().to_owned())
            .collect();
        held == addresses
    };
    let start = Instant::now();
    while !united(&["10.9.0.1"]) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no union; log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The leader reports what it sees to the admin, which shows it in the cluster's view.
    let start = Instant::now();
    loop {
        let view: Value = http
            .get(format!("{admin_url}/clusters/peak"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = &view["kubernetes_status"];
        if status["link"] == "synced" {
            assert_eq!(status["endpoints_contributed"], 1, "{view}");
            assert_eq!(status["services"], 1, "{view}");
            let contributions = status["contributions"].as_array().expect("per Service");
            assert_eq!(contributions.len(), 1, "{view}");
            assert_eq!(contributions[0]["endpoints"], 1, "{view}");
            assert!(
                contributions[0]["service"].as_str().unwrap().contains('/'),
                "{view}"
            );
            assert!(
                status["reported_at_ms"].as_i64().is_some() && status["reporter"].is_string(),
                "{view}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no status reported: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The peak's token is rotated: the operator gives the admin the new kubeconfig.
    peak.rotate_token();
    let answer = http
        .put(format!("{admin_url}/clusters/peak"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&cluster("peak", "peak", peak.kubeconfig()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    // Open watches outlive a rotation (as on a real API server): end them, so the new
    // change comes only through requests made with the new token.
    peak.close_watches();
    peak.apply("endpointslice-controller.k8s.io", slice(&["10.9.0.7"]));
    let start = Instant::now();
    while !united(&["10.9.0.7"]) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the rotation was not followed; log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = process.log();
    for secret in [peak.token(), production.token(), ADMIN_TOKEN.to_owned()] {
        assert!(!log.contains(&secret), "a credential in the log");
    }
    // Each kubeconfig was fetched once per version, not at every reload of the list.
    let audit: Value = http
        .get(format!("{admin_url}/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    for (cluster, reads) in [("idc", 1), ("peak", 2)] {
        let action = format!("GET /gateway/apiserver/v1/clusters/{cluster}/kubeconfig");
        assert_eq!(text.matches(&action).count(), reads, "{cluster}: {text}");
    }
    drop(admin);
}
