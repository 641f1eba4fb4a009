-- Which resource names which: a route its upstream and service, a service its
-- upstream, a consumer its group (model::resource::Resource::references). A
-- referenced resource must exist when the referencing one is written and cannot be
-- deleted while referenced; "what uses this" is one indexed query on every database.
-- Routes written before carry their upstream in resources.upstream_ref: copied here.
CREATE TABLE resource_refs (
    cluster VARCHAR(64) NOT NULL,
    instance VARCHAR(64) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    id VARCHAR(64) NOT NULL,
    field VARCHAR(255) NOT NULL,
    ref_kind VARCHAR(16) NOT NULL,
    ref_id VARCHAR(64) NOT NULL,
    PRIMARY KEY (cluster, instance, kind, id, field)
);

CREATE INDEX resource_refs_by_target ON resource_refs (cluster, instance, ref_kind, ref_id);

INSERT INTO resource_refs (cluster, instance, kind, id, field, ref_kind, ref_id)
SELECT cluster, instance, kind, id, 'upstream_id', 'upstreams', upstream_ref
FROM resources WHERE kind = 'routes' AND upstream_ref IS NOT NULL;
