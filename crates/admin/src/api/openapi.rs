//! The admin API's OpenAPI 3.1 document, generated from the handlers and the types they
//! take and answer (`utoipa`), served at `GET /gateway/apiserver/v1/openapi.json`.
//!
//! Handlers carry their own `#[utoipa::path]`; three things are added here rather
//! than on every handler: the bearer-token security scheme (every operation needs it
//! but `POST /login`), the error answers every operation may give (one
//! [`ErrorBody`] shape, see `docs/api.md`), and the operations of the instance-scoped
//! resource kinds, which one set of handlers serves for every kind
//! (`…/{kind}[/{id}]`): each kind gets its own paths with its own schema.

use std::sync::{Arc, LazyLock};

use axum::response::{IntoResponse, Response};
use model::resource::ResourceKind;
use model::validate::ErrorBody;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, Parameter, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{audit, clusters, config, namespaces, plugins, registry, revisions, tester, users};
use super::{DryRunAnswer, InstancePath, InstanceWriteQuery, NamespaceQuery};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portico admin API",
        description = "The management plane of Portico: clusters, namespaces, users, and every \
            instance's config with its history. Errors are one JSON shape (`ErrorBody`); \
            see docs/api.md.",
    ),
    servers((url = "/gateway/apiserver/v1")),
    paths(
        users::login,
        users::logout,
        users::me,
        users::list,
        users::create,
        users::get_one,
        users::put,
        users::delete,
        users::list_tokens,
        users::create_token,
        users::delete_token,
        audit::list,
        clusters::status,
        clusters::list_clusters,
        clusters::create_cluster,
        clusters::get_cluster,
        clusters::update_cluster,
        clusters::delete_cluster,
        clusters::get_kubeconfig,
        clusters::put_kubernetes_status,
        clusters::list_instances,
        clusters::get_instance,
        clusters::set_instance_namespace,
        clusters::list_nodes,
        clusters::convergence,
        clusters::convergence_history,
        clusters::list_changes,
        namespaces::list,
        namespaces::create,
        namespaces::get_one,
        namespaces::put,
        namespaces::delete,
        namespaces::instances,
        registry::list,
        registry::register,
        registry::heartbeat,
        registry::deregister,
        namespaces::list_templates,
        namespaces::get_template,
        namespaces::put_template,
        namespaces::delete_template,
        config::export_namespace,
        config::apply_namespace,
        config::export,
        config::apply,
        plugins::list_plugins,
        plugins::get_plugin,
        plugins::effective_plugins,
        revisions::list,
        revisions::get_one,
        revisions::diff,
        revisions::rollback,
        tester::route_test,
        openapi_json,
    ),
    components(schemas(ErrorBody, DryRunAnswer)),
    modifiers(&Security, &ResourceOperations, &ErrorAnswers),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// The document, built once.
static DOCUMENT: LazyLock<Arc<String>> = LazyLock::new(|| {
    Arc::new(
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises"),
    )
});

/// `GET /openapi.json`: this document (needs a token, like every call).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub(super) async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str().to_owned(),
    )
        .into_response()
}

/// The bearer-token scheme; `POST /login` is the one operation without it.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a user's API token, or a console session from POST /login",
                    ))
                    .build(),
            ),
        );
        if let Some(login) = doc
            .paths
            .paths
            .get_mut("/login")
            .and_then(|item| item.post.as_mut())
        {
            login.security = Some(Vec::new());
        }
    }
}

/// Statuses every operation may answer with the error body, and why.
const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "malformed request: bad JSON, an unknown field, a wrong type or a bad query string",
    ),
    ("401", "no token, or not a valid one"),
    (
        "403",
        "the caller's role does not allow this (or not in this namespace)",
    ),
    (
        "404",
        "no such cluster, instance, namespace, user, kind or object",
    ),
    (
        "409",
        "it exists already, is in use, or the revision moved meanwhile",
    ),
    ("413", "the body is larger than the admin takes"),
    ("422", "well-formed, but breaks rules: each one is listed"),
    (
        "503",
        "the database or the cluster's agent is unavailable now",
    ),
];

/// Adds the error answers to every operation (those it does not describe itself).
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (status, why) in ERRORS {
            components.responses.insert(
                format!("Error{status}"),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(*why)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                                .build(),
                        )
                        .build(),
                ),
            );
        }
        for item in doc.paths.paths.values_mut() {
            for operation in operations(item) {
                for (status, _) in ERRORS {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| {
                            RefOr::Ref(Ref::new(format!("#/components/responses/Error{status}")))
                        });
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The operations of every instance-scoped resource kind: list and create at
/// `…/{kind}`, show, replace and delete at `…/{kind}/{id}`, each with the kind's
/// schema (objects as answered: secrets and keys left out).
struct ResourceOperations;

impl Modify for ResourceOperations {
    fn modify(&self, doc: &mut Document) {
        let instance = "/clusters/{cluster}/instances/{instance}";
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, schema) in kind_schemas() {
            components.schemas.insert(name.to_owned(), schema);
        }
        for kind in ResourceKind::ALL {
            let schema = kind_schema_name(kind);
            let plural = kind.as_str();
            let singular = kind.singular();
            let object = || RefOr::Ref(Ref::from_schema_name(schema));
            let list = ObjectBuilder::new()
                .property("items", ArrayBuilder::new().items(object()))
                .required("items")
                .property(
                    "revision",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .required("revision");
            let path_params = |with_id: bool| {
                let mut params = <InstancePath as utoipa::IntoParams>::into_params(|| {
                    Some(utoipa::openapi::path::ParameterIn::Path)
                });
                if with_id {
                    params.push(path_param("id"));
                }
                params
            };
            let read = <NamespaceQuery as utoipa::IntoParams>::into_params(|| {
                Some(utoipa::openapi::path::ParameterIn::Query)
            });
            let write = <InstanceWriteQuery as utoipa::IntoParams>::into_params(|| {
                Some(utoipa::openapi::path::ParameterIn::Query)
            });
            let body = || {
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(object())).build(),
                    )
                    .required(Some(utoipa::openapi::Required::True))
                    .build()
            };
            let json = |description: &str, schema: RefOr<Schema>| {
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(schema)).build(),
                    )
                    .build()
            };
            let dry_run = || {
                json(
                    "with dry_run=true: what the write would change (nothing stored)",
                    RefOr::Ref(Ref::from_schema_name(DryRunAnswer::name())),
                )
            };
            let op = |id: String, summary: String, params: Vec<Parameter>| {
                OperationBuilder::new()
                    .operation_id(Some(id))
                    .summary(Some(summary))
                    .tag(plural)
                    .parameters(Some(params))
            };
            let collection = PathItem::builder()
                .operation(
                    HttpMethod::Get,
                    op(
                        format!("list_{plural}"),
                        format!("list the instance's {plural}"),
                        [path_params(false), read.clone()].concat(),
                    )
                    .responses(
                        ResponsesBuilder::new()
                            .response("200", json(&format!("the {plural}"), list.into()))
                            .build(),
                    )
                    .build(),
                )
                .operation(
                    HttpMethod::Post,
                    op(
                        format!("create_{singular}"),
                        format!("create a {singular}"),
                        [path_params(false), write.clone()].concat(),
                    )
                    .request_body(Some(body()))
                    .responses(
                        ResponsesBuilder::new()
                            .response("201", json(&format!("the {singular} as stored"), object()))
                            .response("200", dry_run())
                            .build(),
                    )
                    .build(),
                )
                .build();
            let item = PathItem::builder()
                .operation(
                    HttpMethod::Get,
                    op(
                        format!("get_{singular}"),
                        format!("show a {singular}"),
                        [path_params(true), read.clone()].concat(),
                    )
                    .responses(
                        ResponsesBuilder::new()
                            .response("200", json(&format!("the {singular}"), object()))
                            .build(),
                    )
                    .build(),
                )
                .operation(
                    HttpMethod::Put,
                    op(
                        format!("put_{singular}"),
                        format!("replace a {singular} (or create it)"),
                        [path_params(true), write.clone()].concat(),
                    )
                    .request_body(Some(body()))
                    .responses(
                        ResponsesBuilder::new()
                            .response(
                                "200",
                                json(
                                    &format!(
                                        "the {singular} as stored (with dry_run=true: what the \
                                         write would change, see DryRunAnswer)"
                                    ),
                                    RefOr::T(Schema::OneOf(
                                        utoipa::openapi::schema::OneOfBuilder::new()
                                            .item(object())
                                            .item(Ref::from_schema_name(DryRunAnswer::name()))
                                            .build(),
                                    )),
                                ),
                            )
                            .response("201", json(&format!("the {singular}, created"), object()))
                            .build(),
                    )
                    .build(),
                )
                .operation(
                    HttpMethod::Delete,
                    op(
                        format!("delete_{singular}"),
                        format!("delete a {singular}"),
                        [path_params(true), write].concat(),
                    )
                    .responses(
                        ResponsesBuilder::new()
                            .response("204", ResponseBuilder::new().description("deleted").build())
                            .response("200", dry_run())
                            .build(),
                    )
                    .build(),
                )
                .build();
            doc.paths
                .paths
                .insert(format!("{instance}/{plural}"), collection);
            doc.paths
                .paths
                .insert(format!("{instance}/{plural}/{{id}}"), item);
        }
    }
}

/// The schema component naming the type of a kind's objects.
fn kind_schema_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Routes => "Route",
        ResourceKind::Upstreams => "Upstream",
        ResourceKind::Certificates => "Certificate",
        ResourceKind::Services => "Service",
        ResourceKind::Consumers => "Consumer",
        ResourceKind::ConsumerGroups => "ConsumerGroup",
        ResourceKind::GlobalRules => "GlobalRule",
        ResourceKind::PluginTemplates => "PluginTemplate",
    }
}

/// Every kind's type with the types it refers to, as schema components.
fn kind_schemas() -> Vec<(String, RefOr<Schema>)> {
    let mut all = Vec::new();
    fn add<T: ToSchema>(all: &mut Vec<(String, RefOr<Schema>)>) {
        all.push((T::name().into_owned(), T::schema()));
        T::schemas(all);
    }
    add::<model::route::Route>(&mut all);
    add::<model::upstream::Upstream>(&mut all);
    add::<model::certificate::Certificate>(&mut all);
    add::<model::service::Service>(&mut all);
    add::<model::consumer::Consumer>(&mut all);
    add::<model::consumer::ConsumerGroup>(&mut all);
    add::<model::service::GlobalRule>(&mut all);
    add::<model::plugin::PluginTemplate>(&mut all);
    all
}

fn path_param(name: &str) -> Parameter {
    utoipa::openapi::path::ParameterBuilder::new()
        .name(name)
        .parameter_in(utoipa::openapi::path::ParameterIn::Path)
        .required(utoipa::openapi::Required::True)
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}
