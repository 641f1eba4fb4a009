-- Namespaces (requirements N1-N3): the business lines one admin keeps apart. `id` is
-- generated on creation and never changes; `default` always exists. Every instance
-- belongs to one namespace, and its resources with it.
CREATE TABLE namespaces (
    id VARCHAR(64) NOT NULL,
    name VARCHAR(255) NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (id)
);

CREATE UNIQUE INDEX namespaces_by_name ON namespaces (name);

INSERT INTO namespaces (id, name, description, created_at, updated_at)
VALUES ('default', 'default', 'The namespace of instances nobody assigned elsewhere.', 0, 0);

-- `namespace`: where the instance lives (it may name a namespace that does not exist
-- yet when its agent reported it so: the instance is then unbound and loads nothing).
-- `namespace_pinned`: 1 when an operator assigned it, which the agent's report no
-- longer changes; 0 when it follows the agent's report. `reported_namespace`: what the
-- agent's environment last said (NULL: nothing, meaning `default`).
ALTER TABLE instances ADD COLUMN namespace VARCHAR(64) NOT NULL DEFAULT 'default';
ALTER TABLE instances ADD COLUMN namespace_pinned BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN reported_namespace VARCHAR(64);

CREATE INDEX instances_by_namespace ON instances (namespace);
