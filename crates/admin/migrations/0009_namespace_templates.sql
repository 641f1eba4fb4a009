-- A namespace's plugin template overrides (requirement N5): per plugin, what the
-- namespace states over its instances' templates (enabled, priority, defaults). `body`
-- is the JSON of a `model::plugin::NamespacePluginTemplate`. Gateways get them with
-- their instance's binding.
CREATE TABLE namespace_plugin_templates (
    namespace VARCHAR(64) NOT NULL,
    plugin VARCHAR(64) NOT NULL,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, plugin)
);
