-- One agent token per cluster, sealed with the admin's data key (`enc:v1:…`, see
-- src/secrets.rs). NULL for clusters registered before, which keep using the admin's
-- shared PORTICO_AGENT_TOKEN.
ALTER TABLE clusters ADD COLUMN agent_token TEXT;
