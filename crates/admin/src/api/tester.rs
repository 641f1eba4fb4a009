//! `POST …/instances/{i}/route-test`: which route of the instance takes a request, with
//! which plugins in which order, and why each other route does not (issue 11). The
//! gateway's own code answers (`gateway::tester`): the admin compiles the instance's
//! config as a node would, once per revision, and asks its router.
//!
//! Node settings the admin does not know (trusted proxies, the escaped-slash policy)
//! are the gateway's defaults.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use gateway::tester::TestTable;
use gateway::HttpSettings;
use model::cluster::InstanceBinding;
use model::tester::{RouteTest, RouteTestResult};

use super::{parse_json, ApiPath, ReadScope};
use crate::error::ApiError;
use crate::state::AppState;

/// Which route of the instance takes the request, and why the others do not.
#[utoipa::path(post, path = "/clusters/{cluster}/instances/{instance}/route-test", tag = "instances",
    params(
        super::InstancePath,
        super::NamespaceQuery,
    ),
    request_body = RouteTest,
    responses((status = 200, description = "the router's answer", body = RouteTestResult)))]
pub(super) async fn route_test(
    State(state): State<Arc<AppState>>,
    ReadScope(scope): ReadScope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RouteTestResult>, ApiError> {
    let test: RouteTest = parse_json("route test", &body?)?;
    let found = scope.instance(&state, &cluster, &instance).await?;
    let binding = state.db.binding(&found).await?;
    let table = table(&state, &cluster, &instance, found.revision, binding).await?;
    let answer = table
        .test(&HttpSettings::default(), &test)
        .map_err(|errors| ApiError::Invalid {
            what: "route test".into(),
            errors,
        })?;
    Ok(Json(answer))
}

/// The instance's compiled config at `revision` under its binding (its namespace and
/// that namespace's plugin templates): the cached one, or built off the async workers
/// (it compiles every route and plugin).
async fn table(
    state: &AppState,
    cluster: &str,
    instance: &str,
    revision: model::snapshot::Revision,
    binding: InstanceBinding,
) -> Result<Arc<TestTable>, ApiError> {
    if let Some(table) = state.test_table(cluster, instance, revision, &binding) {
        return Ok(table);
    }
    let snapshot = state
        .db
        .snapshot(cluster, instance)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("instance {instance:?} does not exist")))?;
    let table = tokio::task::spawn_blocking(move || TestTable::bound(&snapshot, Some(&binding)))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let table = Arc::new(table);
    state.keep_test_table(cluster, instance, table.clone());
    Ok(table)
}
