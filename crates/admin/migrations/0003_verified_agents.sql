-- The agent address that last proved it holds the cluster's agent token (see
-- src/sync.rs). The admin sends the token and the snapshot only to that address; a new
-- address (or token) is proven first. Addresses registered before are taken as proven.
ALTER TABLE clusters ADD COLUMN verified_address VARCHAR(255);
UPDATE clusters SET verified_address = agent_address;
