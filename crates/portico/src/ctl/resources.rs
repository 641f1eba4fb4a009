//! get, list, create, update and delete for every kind of object: the instance's
//! config (routes, services, upstreams, certificates, consumers, consumer groups,
//! global rules, plugin templates; revisions, messages, dry runs), the global objects
//! (clusters, namespaces, users) and a namespace's plugin template overrides, each
//! with the columns its table shows.

use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use super::changes;
use super::client::{seg, Answer, Body};
use super::error::{CtlError, Result};
use super::input;
use super::output::{self, text, yes_no, Column, Format, OutputArgs};
use super::{InstanceArgs, Session, Target, WriteArgs};

/// The kinds `get`, `list`, `create`, `update` and `delete` take (the singular, and
/// `-` for `_`, are accepted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    #[value(alias = "route")]
    Routes,
    #[value(alias = "service")]
    Services,
    #[value(alias = "upstream")]
    Upstreams,
    #[value(aliases = ["certificate", "cert", "certs"])]
    Certificates,
    #[value(alias = "consumer")]
    Consumers,
    #[value(name = "consumer_groups", aliases = ["consumer_group", "consumer-groups", "consumer-group"])]
    ConsumerGroups,
    #[value(name = "global_rules", aliases = ["global_rule", "global-rules", "global-rule"])]
    GlobalRules,
    #[value(name = "plugin_templates", aliases = ["plugin_template", "plugin-templates", "plugin-template"])]
    PluginTemplates,
    #[value(alias = "cluster")]
    Clusters,
    #[value(aliases = ["namespace", "ns"])]
    Namespaces,
    #[value(alias = "user")]
    Users,
    /// A namespace's plugin template overrides (`--namespace`, default `default`).
    #[value(name = "namespace_plugin_templates", aliases = [
        "namespace_plugin_template", "namespace-plugin-templates",
        "namespace-plugin-template", "ns-templates", "ns-template",
    ])]
    NamespacePluginTemplates,
}

impl Kind {
    /// The path segment of the API (`consumer_groups`).
    fn plural(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Services => "services",
            Kind::Upstreams => "upstreams",
            Kind::Certificates => "certificates",
            Kind::Consumers => "consumers",
            Kind::ConsumerGroups => "consumer_groups",
            Kind::GlobalRules => "global_rules",
            Kind::PluginTemplates => "plugin_templates",
            Kind::Clusters => "clusters",
            Kind::Namespaces => "namespaces",
            Kind::Users => "users",
            Kind::NamespacePluginTemplates => "plugin_templates",
        }
    }

    /// The name the command line takes (`namespace_plugin_templates`).
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_else(|| self.plural().to_owned())
    }

    /// For messages (`route r1 created`).
    fn singular(self) -> &'static str {
        match self {
            Kind::Routes => "route",
            Kind::Services => "service",
            Kind::Upstreams => "upstream",
            Kind::Certificates => "certificate",
            Kind::Consumers => "consumer",
            Kind::ConsumerGroups => "consumer group",
            Kind::GlobalRules => "global rule",
            Kind::PluginTemplates => "plugin template",
            Kind::Clusters => "cluster",
            Kind::Namespaces => "namespace",
            Kind::Users => "user",
            Kind::NamespacePluginTemplates => "namespace plugin template",
        }
    }

    /// One object for messages: `route r1`, `plugin template cors of namespace
    /// default`.
    fn what(self, id: &str, at: &InstanceArgs) -> String {
        match self {
            Kind::NamespacePluginTemplates => {
                format!(
                    "plugin template {id} of namespace {}",
                    at.namespace_or_default()
                )
            }
            _ => format!("{} {id}", self.singular()),
        }
    }

    /// Whether objects of this kind belong to an instance (and so have revisions).
    fn per_instance(self) -> bool {
        !matches!(
            self,
            Kind::Clusters | Kind::Namespaces | Kind::Users | Kind::NamespacePluginTemplates
        )
    }

    /// The field naming an object in its body.
    fn id_field(self) -> &'static str {
        match self {
            Kind::Clusters | Kind::Users => "name",
            _ => "id",
        }
    }

    /// The collection's path: under the instance, under the namespace, or at the top.
    fn collection(self, at: &InstanceArgs) -> Result<(String, Vec<(&'static str, String)>)> {
        if self == Kind::NamespacePluginTemplates {
            Ok((
                format!(
                    "/namespaces/{}/{}",
                    seg(&at.namespace_or_default()),
                    self.plural()
                ),
                Vec::new(),
            ))
        } else if self.per_instance() {
            let target: Target = at.target()?;
            Ok((
                format!("{}/{}", target.path(), self.plural()),
                target.query(),
            ))
        } else {
            Ok((format!("/{}", self.plural()), Vec::new()))
        }
    }

    fn columns(self) -> Vec<Column> {
        let id = Column {
            header: "ID",
            cell: |v| text(&v["id"]),
        };
        let name = Column {
            header: "NAME",
            cell: |v| text(&v["name"]),
        };
        let plugins = Column {
            header: "PLUGINS",
            cell: |v| text(&v["plugins"]),
        };
        let description = Column {
            header: "DESCRIPTION",
            cell: |v| text(&v["description"]),
        };
        match self {
            Kind::Routes => vec![
                id,
                name,
                Column {
                    header: "PATHS",
                    cell: |v| text(&v["paths"]),
                },
                Column {
                    header: "HOSTS",
                    cell: |v| text(&v["hosts"]),
                },
                Column {
                    header: "UPSTREAM",
                    cell: upstream_of,
                },
            ],
            Kind::Services => vec![
                id,
                name,
                Column {
                    header: "UPSTREAM",
                    cell: upstream_of,
                },
                plugins,
            ],
            Kind::Upstreams => vec![
                id,
                name,
                Column {
                    header: "NODES",
                    cell: |v| {
                        let nodes = v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
                        let shown: Vec<String> = nodes
                            .iter()
                            .map(|n| format!("{}:{}", text(&n["host"]), n["port"]))
                            .collect();
                        if shown.is_empty() {
                            "-".to_owned()
                        } else {
                            shown.join(",")
                        }
                    },
                },
                Column {
                    header: "LB",
                    cell: |v| text(&v["lb"]),
                },
            ],
            Kind::Certificates => vec![
                id,
                Column {
                    header: "SNIS",
                    cell: |v| text(&v["snis"]),
                },
            ],
            Kind::Consumers => vec![
                id,
                Column {
                    header: "GROUP",
                    cell: |v| text(&v["group_id"]),
                },
                Column {
                    header: "CREDENTIALS",
                    cell: |v| {
                        let list = v["credentials"]
                            .as_array()
                            .map(Vec::as_slice)
                            .unwrap_or_default();
                        let types: Vec<String> = list.iter().map(|c| text(&c["type"])).collect();
                        text(&Value::from(types))
                    },
                },
                plugins,
            ],
            Kind::ConsumerGroups => vec![id, plugins, description],
            Kind::GlobalRules => vec![id, plugins],
            // An instance's template without `enabled` is on; what a namespace's
            // override leaves out (`-`) stays the instance template's.
            Kind::PluginTemplates => template_columns(id, |v| match v["enabled"] {
                Value::Null => "yes".to_owned(),
                ref b => yes_no(b),
            }),
            Kind::NamespacePluginTemplates => template_columns(id, |v| yes_no(&v["enabled"])),
            Kind::Clusters => vec![
                name,
                Column {
                    header: "AGENT",
                    cell: |v| text(&v["agent_address"]),
                },
            ],
            Kind::Namespaces => vec![
                id,
                name,
                Column {
                    header: "INSTANCES",
                    cell: |v| text(&v["instances"]),
                },
                Column {
                    header: "ONLINE_NODES",
                    cell: |v| text(&v["online_nodes"]),
                },
                description,
            ],
            Kind::Users => vec![
                name,
                Column {
                    header: "PLATFORM_ADMIN",
                    cell: |v| yes_no(&v["platform_admin"]),
                },
                Column {
                    header: "ROLES",
                    cell: |v| roles(&v["roles"]),
                },
                Column {
                    header: "PASSWORD",
                    cell: |v| yes_no(&v["has_password"]),
                },
            ],
        }
    }
}

/// Where a route's or service's traffic goes: an upstream id, a service, or inline.
fn upstream_of(v: &Value) -> String {
    if let Some(id) = v["upstream_id"].as_str() {
        id.to_owned()
    } else if v["upstream"].is_object() {
        "(inline)".to_owned()
    } else if let Some(service) = v["service_id"].as_str() {
        format!("service:{service}")
    } else {
        "-".to_owned()
    }
}

/// `{"ns": "editor"}` as `ns=editor`.
pub fn roles(v: &Value) -> String {
    match v.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(ns, role)| format!("{ns}={}", text(role)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_owned(),
    }
}

pub async fn get(
    session: &Session,
    kind: Kind,
    id: &str,
    at: &InstanceArgs,
    output: OutputArgs,
) -> Result<()> {
    let (path, query) = kind.collection(at)?;
    let answer = session
        .client
        .get(&format!("{path}/{}", seg(id)), &query)
        .await?;
    if !output::print_raw(output.format, &answer.body)? {
        print!(
            "{}",
            output::table(&kind.columns(), std::slice::from_ref(&answer.body))
        );
    }
    Ok(())
}

pub async fn list(
    session: &Session,
    kind: Kind,
    at: &InstanceArgs,
    output: OutputArgs,
) -> Result<()> {
    let (path, query) = kind.collection(at)?;
    let answer = session.client.get(&path, &query).await?;
    if !output::print_raw(output.format, &answer.body)? {
        let items = output::items(&answer.body);
        print!("{}", output::table(&kind.columns(), items));
    }
    Ok(())
}

pub async fn create(
    session: &Session,
    kind: Kind,
    file: &Path,
    at: &InstanceArgs,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    check_write(kind, write)?;
    let doc = input::read(file)?;
    let object = input::object(&doc, kind.singular())?;
    if kind == Kind::NamespacePluginTemplates {
        let id = id_in(&doc, object, kind, "create")?;
        return create_by_put(session, kind, &id, &doc, at, write, output).await;
    }
    let (path, query) = kind.collection(at)?;
    let answer = session
        .client
        .send(
            Method::POST,
            &path,
            &query,
            Body::Json(doc.value.clone()),
            write.options(),
        )
        .await
        .map_err(|e| e.in_file(&doc.name))?;
    let id = text(&answer.body[kind.id_field()]);
    let id = if id == "-" {
        text(&doc.value[kind.id_field()])
    } else {
        id
    };
    written(&kind.what(&id, at), "created", &answer, write, output)?;
    if kind == Kind::Clusters {
        // A token the admin generated is answered this once: the agent needs it.
        if let (Format::Table, Some(token)) = (output.format, answer.body["agent_token"].as_str()) {
            eprintln!("the admin generated the cluster's agent token, shown only this once: give it to the agent as PORTICO_AGENT_TOKEN");
            println!("{token}");
        }
    }
    Ok(())
}

pub async fn update(
    session: &Session,
    kind: Kind,
    id: Option<&str>,
    file: &Path,
    at: &InstanceArgs,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    check_write(kind, write)?;
    let doc = input::read(file)?;
    let object = input::object(&doc, kind.singular())?;
    let id = match id {
        Some(id) => id.to_owned(),
        None => id_in(&doc, object, kind, "update")?,
    };
    let (path, query) = kind.collection(at)?;
    let answer = session
        .client
        .send(
            Method::PUT,
            &format!("{path}/{}", seg(&id)),
            &query,
            Body::Json(doc.value.clone()),
            write.options(),
        )
        .await
        .map_err(|e| e.in_file(&doc.name))?;
    let done = if answer.status == 201 {
        "created"
    } else {
        "updated"
    };
    written(&kind.what(&id, at), done, &answer, write, output)
}

/// The id a file gives its object, or an input error saying it is needed.
fn id_in(
    doc: &input::Document,
    object: &serde_json::Map<String, Value>,
    kind: Kind,
    verb: &str,
) -> Result<String> {
    object
        .get(kind.id_field())
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            CtlError::Input(format!(
                "{}: no `{}` to say which {} to {verb} (or give it after the kind)",
                doc.name,
                kind.id_field(),
                kind.singular()
            ))
        })
}

/// `create` of a kind the API writes only with `PUT` (a namespace's plugin template
/// overrides): like every `create`, it refuses an object that exists (exit 6) rather
/// than replace it, so it asks first. `update` replaces.
async fn create_by_put(
    session: &Session,
    kind: Kind,
    id: &str,
    doc: &input::Document,
    at: &InstanceArgs,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    let (path, query) = kind.collection(at)?;
    let one = format!("{path}/{}", seg(id));
    let what = kind.what(id, at);
    match session.client.get(&one, &query).await {
        Ok(_) => {
            return Err(CtlError::Exists(format!(
                "{}: {what} exists already (`update` replaces it)",
                doc.name
            )))
        }
        // Absent (or the namespace is: the PUT says which).
        Err(CtlError::Api { status: 404, .. }) => {}
        Err(e) => return Err(e),
    }
    let answer = session
        .client
        .send(
            Method::PUT,
            &one,
            &query,
            Body::Json(doc.value.clone()),
            write.options(),
        )
        .await
        .map_err(|e| e.in_file(&doc.name))?;
    if answer.status == 201 {
        written(&what, "created", &answer, write, output)
    } else {
        // Someone created it between the check and the write: the PUT replaced it.
        eprintln!("note: {what} was created by someone else meanwhile; this file replaced it");
        written(&what, "replaced", &answer, write, output)
    }
}

pub async fn delete(
    session: &Session,
    kind: Kind,
    id: &str,
    at: &InstanceArgs,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    check_write(kind, write)?;
    let (path, query) = kind.collection(at)?;
    let answer = session
        .client
        .send(
            Method::DELETE,
            &format!("{path}/{}", seg(id)),
            &query,
            Body::None,
            write.options(),
        )
        .await?;
    written(&kind.what(id, at), "deleted", &answer, write, output)
}

/// Clusters, namespaces, users and namespace plugin templates have no revisions: no
/// message, no dry run.
fn check_write(kind: Kind, write: &WriteArgs) -> Result<()> {
    if !kind.per_instance() && (write.dry_run || write.message.is_some()) {
        return Err(CtlError::Usage(format!(
            "{} have no revisions: --message and --dry-run are for an instance's config",
            kind.name()
        )));
    }
    Ok(())
}

/// Prints what a write did to `what` (`route r1`), or for a dry run would do.
fn written(
    what: &str,
    done: &str,
    answer: &Answer,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    if output::print_raw(output.format, &answer.body)? {
        return Ok(());
    }
    if write.dry_run {
        print!("{}", changes::dry_run(what, &answer.body));
        return Ok(());
    }
    match (
        answer.header("x-portico-revision"),
        answer.header("x-portico-sync"),
    ) {
        (Some(revision), Some(sync)) => {
            println!("{what} {done} (revision {revision}, {sync})");
            if sync == "pending" {
                eprintln!("note: the cluster's agent has not got it yet; the admin keeps trying");
            }
        }
        _ => println!("{what} {done}"),
    }
    Ok(())
}

/// The columns of a plugin template: its id, whether it is on, its priority and its
/// defaults.
fn template_columns(id: Column, enabled: fn(&Value) -> String) -> Vec<Column> {
    vec![
        id,
        Column {
            header: "ENABLED",
            cell: enabled,
        },
        Column {
            header: "PRIORITY",
            cell: |v| text(&v["priority"]),
        },
        Column {
            header: "DEFAULTS",
            cell: |v| text(&v["defaults"]),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;
    use serde_json::json;

    #[test]
    fn kinds_read_as_the_api_spells_them_and_loosely() {
        for (given, kind) in [
            ("routes", Kind::Routes),
            ("route", Kind::Routes),
            ("consumer_groups", Kind::ConsumerGroups),
            ("consumer-group", Kind::ConsumerGroups),
            ("global-rules", Kind::GlobalRules),
            ("plugin_template", Kind::PluginTemplates),
            ("ns", Kind::Namespaces),
            ("cert", Kind::Certificates),
            ("ns-templates", Kind::NamespacePluginTemplates),
            ("namespace-plugin-templates", Kind::NamespacePluginTemplates),
            ("namespace_plugin_template", Kind::NamespacePluginTemplates),
        ] {
            assert_eq!(Kind::from_str(given, false), Ok(kind), "{given}");
        }
        // Every instance kind is one the model knows by the same name.
        for kind in Kind::value_variants() {
            if kind.per_instance() {
                let parsed: model::resource::ResourceKind = kind.plural().parse().unwrap();
                assert_eq!(parsed.as_str(), kind.plural());
            }
        }
    }

    #[test]
    fn route_rows_name_where_traffic_goes() {
        let items = [
            json!({"id": "r1", "name": "api", "paths": ["/api/*"], "hosts": ["a.example"], "upstream_id": "u1"}),
            json!({"id": "r2", "paths": ["/s"], "service_id": "s1"}),
            json!({"id": "r3", "paths": ["/i"], "upstream": {"nodes": []}}),
        ];
        assert_eq!(
            output::table(&Kind::Routes.columns(), &items),
            "ID  NAME  PATHS   HOSTS      UPSTREAM\n\
             r1  api   /api/*  a.example  u1\n\
             r2  -     /s      -          service:s1\n\
             r3  -     /i      -          (inline)\n"
        );
        assert_eq!(roles(&json!({"default": "viewer"})), "default=viewer");
    }

    #[test]
    fn namespace_templates_live_under_the_namespace() {
        let at = |namespace: Option<&str>| InstanceArgs {
            cluster: Some("c1".into()),
            instance: Some("a".into()),
            namespace: namespace.map(str::to_owned),
        };
        let kind = Kind::NamespacePluginTemplates;
        assert_eq!(
            kind.collection(&at(None)).unwrap(),
            (
                "/namespaces/default/plugin_templates".to_owned(),
                Vec::new()
            )
        );
        assert_eq!(
            kind.collection(&at(Some("ns-1"))).unwrap().0,
            "/namespaces/ns-1/plugin_templates"
        );
        assert_eq!(
            kind.what("cors", &at(None)),
            "plugin template cors of namespace default"
        );
        assert_eq!(kind.name(), "namespace_plugin_templates");
        // What an override leaves out shows as `-`: the instance's template applies.
        let items = [
            json!({"id": "cors", "enabled": false}),
            json!({"id": "request-id", "priority": 12000, "defaults": {"header_name": "x-id"}}),
        ];
        assert_eq!(
            output::table(&kind.columns(), &items),
            "ID          ENABLED  PRIORITY  DEFAULTS\n\
             cors        no       -         -\n\
             request-id  -        12000     header_name\n"
        );
    }
}
