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
