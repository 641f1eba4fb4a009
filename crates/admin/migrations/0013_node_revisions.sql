-- When each gateway node first reported each revision (requirement: convergence per
-- revision). One row per (node, revision) the admin saw a node serve: `applied_at_ms`
-- is when the node swapped it in by its own clock (its heartbeat's), `reported_at_ms`
-- when the admin first saw it (the admin's clock). Written only when a node's applied
-- revision changed since the poll before, never once per poll; a revision a node
-- jumped over has no row (it is reached by the node's first report at or above it,
-- worked out when asked). Only the last 1000 revisions of each instance are kept.
CREATE TABLE node_revisions (
    cluster VARCHAR(64) NOT NULL,
    instance VARCHAR(64) NOT NULL,
    node_id VARCHAR(128) NOT NULL,
    revision BIGINT NOT NULL,
    applied_at_ms BIGINT NOT NULL,
    reported_at_ms BIGINT NOT NULL,
    PRIMARY KEY (cluster, instance, node_id, revision)
);

CREATE INDEX node_revisions_by_revision ON node_revisions (cluster, instance, revision);
