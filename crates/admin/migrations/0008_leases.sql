-- Leases held in the database, so several admin processes on one PostgreSQL or MySQL
-- work together: only the holder of `reconciler` polls agents and reconciles; another
-- takes over when it stops renewing (src/lease.rs).
CREATE TABLE leases (
    name VARCHAR(64) NOT NULL,
    holder VARCHAR(255) NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (name)
);

INSERT INTO leases (name, holder, expires_at_ms) VALUES ('reconciler', '', 0);
