-- Revisions (requirement D4): every change to an instance's config is a revision with
-- its author and message (on its `changes` row), and the objects it wrote, each as
-- stored (secrets sealed, so an old revision restores them; NULL for a delete). The
-- state at revision N is, per object, its row of the highest revision <= N: history
-- is never rewritten, a rollback is a new revision.
ALTER TABLE changes ADD COLUMN author VARCHAR(255);
ALTER TABLE changes ADD COLUMN message TEXT;

CREATE TABLE revision_objects (
    cluster VARCHAR(64) NOT NULL,
    instance VARCHAR(64) NOT NULL,
    revision BIGINT NOT NULL,
    kind VARCHAR(16) NOT NULL,
    id VARCHAR(64) NOT NULL,
    op VARCHAR(16) NOT NULL,
    body TEXT,
    PRIMARY KEY (cluster, instance, revision, kind, id)
);

CREATE INDEX revision_objects_by_object ON revision_objects (cluster, instance, kind, id, revision);

-- Earlier changes logged their object without its secrets; the version each object
-- still has in `resources` is taken from there (secrets sealed), so the current state
-- is restorable in full. Older versions of certificates and consumers carry no
-- secrets: restoring one keeps the secrets the object has now.
INSERT INTO revision_objects (cluster, instance, revision, kind, id, op, body)
SELECT c.cluster, c.instance, c.revision, c.kind, c.resource_id, c.op, COALESCE(r.body, c.body)
FROM changes c
LEFT JOIN resources r ON r.cluster = c.cluster AND r.instance = c.instance
    AND r.kind = c.kind AND r.id = c.resource_id AND r.revision = c.revision
WHERE c.kind IS NOT NULL AND c.resource_id IS NOT NULL;
