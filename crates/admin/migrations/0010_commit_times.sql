-- When each revision was committed, in milliseconds: with the time each gateway node
-- swapped it in (its heartbeat's `applied_at_ms`), how long a change took to reach
-- every node. NULL for revisions committed before this column existed.
ALTER TABLE changes ADD COLUMN changed_at_ms BIGINT;
