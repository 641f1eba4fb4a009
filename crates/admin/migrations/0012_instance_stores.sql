-- Which config store each instance's agent keeps it in (requirement M5: instances of
-- one agent may each have their own), as the agent last reported it: the backend
-- (`etcd`, `redis`, `memory`) and its endpoints, comma-separated. NULL when the agent
-- did not say. Never credentials: agents report none.
ALTER TABLE instances ADD COLUMN store_backend VARCHAR(16);
ALTER TABLE instances ADD COLUMN store_endpoints TEXT;
