-- Gateway nodes as the admin has seen them through their agents' reports: when each
-- first appeared, and when it stopped being reported (`gone_at_ms`), so a node that
-- disappears is marked with a time rather than forgotten. Written only when a node
-- appears, goes or comes back; gone ones are kept for 7 days.
CREATE TABLE gateway_nodes (
    cluster VARCHAR(64) NOT NULL,
    instance VARCHAR(64) NOT NULL,
    node_id VARCHAR(128) NOT NULL,
    address VARCHAR(255) NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    gone_at_ms BIGINT,
    PRIMARY KEY (cluster, instance, node_id)
);
