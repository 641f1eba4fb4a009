-- What the cross-cluster controller last reported of each cluster's Kubernetes face
-- (`model::cluster::KubernetesStatus` as JSON) and when it arrived. One row per
-- cluster, replaced by each report, removed with the cluster or its face.
CREATE TABLE kubernetes_status (
    cluster VARCHAR(64) NOT NULL PRIMARY KEY,
    body TEXT NOT NULL,
    reported_at_ms BIGINT NOT NULL
);
