-- The admin's schema, in the subset of SQL that SQLite, PostgreSQL and MySQL/MariaDB all
-- run unchanged: VARCHAR keys, TEXT bodies, BIGINT numbers and times (unix seconds), no
-- auto-increment. Names and ids are at most 64 characters (model::validate::check_id),
-- which keeps every composite key under MySQL's 3072-byte index limit in utf8mb4.

-- Admin-wide settings; `admin_token_sha256` holds the hex SHA-256 of the admin token.
CREATE TABLE settings (
    name VARCHAR(64) NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (name)
);

-- Clusters registered by an operator.
CREATE TABLE clusters (
    name VARCHAR(64) NOT NULL,
    agent_address VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (name)
);

-- Instances discovered by polling agents. `revision` is the desired (DB) revision of the
-- instance's config; `applied_revision` the one its store was last seen to hold.
CREATE TABLE instances (
    cluster VARCHAR(64) NOT NULL,
    name VARCHAR(64) NOT NULL,
    agent_address VARCHAR(255) NOT NULL,
    status VARCHAR(16) NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    applied_revision BIGINT,
    PRIMARY KEY (cluster, name),
    FOREIGN KEY (cluster) REFERENCES clusters (name)
);

-- The desired config: one row per resource, isolated by (cluster, instance). `body` is
-- the resource's full JSON (certificate keys included: the snapshot needs them);
-- `upstream_ref` is a route's `upstream_id`, so "which routes use this upstream" is a
-- plain indexed query on every database.
CREATE TABLE resources (
    cluster VARCHAR(64) NOT NULL,
    instance VARCHAR(64) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    id VARCHAR(64) NOT NULL,
    upstream_ref VARCHAR(64),
    body TEXT NOT NULL,
    revision BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (cluster, instance, kind, id),
    FOREIGN KEY (cluster, instance) REFERENCES instances (cluster, name)
);

CREATE INDEX resources_by_upstream ON resources (cluster, instance, upstream_ref);

-- Every accepted change, keyed by the revision it produced. `body` is the resource as
-- written with certificate keys removed; NULL for deletes and resyncs. Rows outlive
-- their cluster, so a re-registered instance continues its revision sequence.
CREATE TABLE changes (
    cluster VARCHAR(64) NOT NULL,
    instance VARCHAR(64) NOT NULL,
    revision BIGINT NOT NULL,
    kind VARCHAR(16),
    resource_id VARCHAR(64),
    op VARCHAR(16) NOT NULL,
    body TEXT,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (cluster, instance, revision)
);
