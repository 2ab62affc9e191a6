//! The JSON API under `/api/`: the same shapes as the command line's `--json`.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use baton_core::board::{Cancel, ConductorInfo, Job, JobQuery};
use baton_core::model::AtomKind;
use baton_core::recovery;
use baton_core::store::{FlowQuery, RunView};
use baton_core::{AtomState, ConductorId, FlowId, FlowState, JobId, JobState};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::Console;

/// How many rows a listing answers unless told otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// The most rows a listing answers.
pub const MAX_LIMIT: usize = 1000;

/// The API's routes (without the protective layers, which the console's router adds).
pub(crate) fn router() -> Router<Console> {
    Router::new()
        .route("/api/flows", get(list_flows))
        .route("/api/flows/{id}", get(show_flow))
        .route("/api/flows/{id}/cancel", post(cancel_flow))
        .route("/api/flows/{id}/revert", post(revert_flow))
        .route("/api/flows/{id}/resume", post(resume_flow))
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(show_job))
        .route("/api/jobs/{id}/retry", post(retry_job))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/jobs/{id}/abandon", post(abandon_job))
        .route("/api/jobs/{id}/trash", post(trash_job))
        .route("/api/conductors", get(list_conductors))
        .route("/api/events", get(crate::live::events))
        .route("/api/{*rest}", any(unknown))
        .route("/api", any(unknown))
        .method_not_allowed_fallback(method_not_allowed)
}

/// `GET /healthz`: `ok` when the database answers.
pub(crate) async fn healthz(State(console): State<Console>) -> ApiResult<&'static str> {
    console.store.list_flows(&FlowQuery::all().limit(1)).await?;
    Ok("ok")
}

async fn unknown() -> ApiError {
    ApiError::not_found("no such API endpoint: docs/console.md lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Parses one query parameter, naming it and what it takes when it does not parse.
fn param<T: FromStr>(name: &str, text: &str, takes: &str) -> ApiResult<T>
where
    T::Err: std::fmt::Display,
{
    T::from_str(text).map_err(|e| ApiError::bad_request(format!("{name}={text:?}: {e} ({takes})")))
}

/// A listing's `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
fn limit(text: Option<&str>) -> ApiResult<usize> {
    let Some(text) = text else {
        return Ok(DEFAULT_LIMIT);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit={text:?}: takes a whole number from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// A yes-or-no parameter: `true`/`false` (or `1`/`0`).
fn flag(name: &str, text: Option<&str>) -> ApiResult<bool> {
    match text {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}={other:?}: takes true or false"
        ))),
    }
}

/// A time parameter, RFC 3339.
fn time(name: &str, text: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{name}={text:?}: {e} (takes an RFC 3339 time, e.g. 2026-12-06T17:00:00Z)"
            ))
        })
}

/// A state parameter, in any case.
fn state<T: FromStr>(text: &str, what: &str) -> ApiResult<T>
where
    T::Err: std::fmt::Display,
{
    param("state", &text.to_uppercase(), what)
}

/// The `Link` header of a full page: the same query, after the page's last row.
fn next_link(path: &str, raw: Option<&str>, last: impl std::fmt::Display) -> HeaderValue {
    let mut query: Vec<&str> = raw
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("after="))
        .collect();
    let after = format!("after={last}");
    query.push(&after);
    let link = format!("<{path}?{}>; rel=\"next\"", query.join("&"));
    // The query came in a request line, so it is header-safe; the id is hex and dashes.
    HeaderValue::from_str(&link).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A listing's answer: the rows, and a `Link` to the next page when this one is full.
fn page<T: Serialize>(
    rows: &[T],
    limit: usize,
    last: Option<String>,
    path: &str,
    raw: Option<&str>,
) -> Response {
    let mut response = Json(rows).into_response();
    if let (true, Some(last)) = (rows.len() >= limit, last) {
        let link = next_link(path, raw, last);
        if !link.is_empty() {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    response
}

/// The filters of `GET /api/flows`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFilters {
    state: Option<String>,
    factory: Option<String>,
    name: Option<String>,
    version: Option<String>,
    unfinished: Option<String>,
    stranded: Option<String>,
    key: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /api/flows`: runs, newest first (`baton flows list --json`); with `stranded=true`,
/// the stranded ones with their job and why (`baton flows list --stranded --json`).
async fn list_flows(
    State(console): State<Console>,
    query: Result<Query<FlowFilters>, QueryRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let Query(f) = query?;
    let limit = limit(f.limit.as_deref())?;
    let mut query = FlowQuery::all().limit(limit);
    if let Some(s) = &f.state {
        query = query.state(state::<FlowState>(s, "a flow state, e.g. RUNNING")?);
    }
    if let Some(name) = f.name {
        query = query.name(name);
    }
    if let Some(factory) = f.factory {
        query = query.factory(factory);
    }
    if let Some(v) = &f.version {
        query = query.version(param("version", v, "a factory version, 1 or more")?);
    }
    if flag("unfinished", f.unfinished.as_deref())? {
        query = query.unfinished();
    }
    if let Some(t) = &f.since {
        query = query.created_since(time("since", t)?);
    }
    if let Some(t) = &f.until {
        query = query.created_until(time("until", t)?);
    }
    if let Some(a) = &f.after {
        query = query.after(param("after", a, "the id of the last run of a page")?);
    }
    let stranded = flag("stranded", f.stranded.as_deref())?;
    let (store, board) = (&*console.store, &*console.board);
    let raw = raw.as_deref();
    match (f.key, stranded) {
        (Some(_), true) => Err(ApiError::bad_request(
            "key and stranded cannot be combined: list the key's runs, or the stranded ones",
        )),
        (Some(key), false) => {
            let flows = flows_of_key(&console, &key, &query).await?;
            let last = flows.last().map(|f| f.id.to_string());
            Ok(page(&flows, limit, last, "/api/flows", raw))
        }
        (None, true) => {
            let rows = recovery::stranded(store, board, &query).await?;
            let last = rows.last().map(|s| s.flow.id.to_string());
            Ok(page(&rows, limit, last, "/api/flows", raw))
        }
        (None, false) => {
            let flows = store.list_flows(&query).await?;
            let last = flows.last().map(|f| f.id.to_string());
            Ok(page(&flows, limit, last, "/api/flows", raw))
        }
    }
}

/// The runs of the jobs of `key` that `query` selects, newest first: a run's key is its job's.
/// Reads the key's jobs from the board (a key has few: one per change of what it names), then
/// each run by id.
async fn flows_of_key(
    console: &Console,
    key: &str,
    query: &FlowQuery,
) -> ApiResult<Vec<baton_core::model::FlowRecord>> {
    const CHUNK: usize = 1000;
    let mut jobs: Vec<JobId> = Vec::new();
    let mut q = JobQuery::all().key(key).limit(CHUNK);
    loop {
        let chunk = console.board.list(&q).await?;
        let full = chunk.len() >= CHUNK;
        let Some(last) = chunk.last().map(|j| j.id) else {
            break;
        };
        jobs.extend(chunk.iter().map(|j| j.id));
        if !full {
            break;
        }
        q = q.after(last);
    }
    // Newest first; a page after a run starts past it.
    jobs.reverse();
    let mut start = 0;
    if let Some(after) = query.after {
        start = jobs
            .iter()
            .position(|j| j.as_uuid() == after.as_uuid())
            .map(|i| i + 1)
            .ok_or(baton_core::store::Error::UnknownCursor(after))?;
    }
    let limit = query.limit.unwrap_or(usize::MAX);
    let mut flows = Vec::new();
    for job in &jobs[start..] {
        if flows.len() >= limit {
            break;
        }
        match console.store.load_flow(FlowId::for_job(*job)).await {
            Ok(snap) if query.matches(&snap.flow) => flows.push(snap.flow),
            Ok(_) | Err(baton_core::store::Error::FlowNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(flows)
}

/// An id from the path.
fn id<T: FromStr>(path: Result<Path<String>, PathRejection>, what: &str) -> ApiResult<T>
where
    T::Err: std::fmt::Display,
{
    let Path(text) = path?;
    T::from_str(&text).map_err(|e| ApiError::bad_request(format!("bad {what} {text:?}: {e}")))
}

/// A run's graph, for drawing: its atoms with their states, and its edges by atom name.
#[derive(Debug, Serialize)]
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
struct Node {
    name: String,
    kind: AtomKind,
    state: Option<AtomState>,
}

impl Graph {
    /// The run's recorded shape, with each atom's state; a run created without a recorded
    /// shape gets its atoms and no edges.
    fn of(view: &RunView) -> Self {
        let state_of = |name: &str| view.atoms.iter().find(|a| a.name == name).map(|a| a.state);
        match view.flow.shape() {
            Some(shape) => Graph {
                edges: shape
                    .named_edges()
                    .map(|(f, t)| (f.to_owned(), t.to_owned()))
                    .collect(),
                nodes: shape
                    .atoms
                    .into_iter()
                    .map(|a| Node {
                        state: state_of(&a.name),
                        name: a.name,
                        kind: a.kind,
                    })
                    .collect(),
            },
            None => Graph {
                nodes: view
                    .atoms
                    .iter()
                    .map(|a| Node {
                        name: a.name.clone(),
                        kind: a.kind,
                        state: Some(a.state),
                    })
                    .collect(),
                edges: Vec::new(),
            },
        }
    }
}

/// `GET /api/flows/{id}`'s answer.
#[derive(Debug, Serialize)]
struct FlowDetail {
    #[serde(flatten)]
    view: RunView,
    graph: Graph,
    job: Option<Job>,
}

/// `GET /api/flows/{id}`: the run, its atoms and history (`baton flows show --json`), its
/// graph, and its job (or null).
async fn show_flow(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<FlowDetail>> {
    let id: FlowId = id(path, "flow id")?;
    let view = RunView::load(&*console.store, id).await?;
    let job = match console.board.get(JobId::from_uuid(id.as_uuid())).await {
        Ok(job) => Some(job),
        Err(baton_core::board::Error::JobNotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(Json(FlowDetail {
        graph: Graph::of(&view),
        view,
        job,
    }))
}

/// The filters of `GET /api/jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFilters {
    state: Option<String>,
    key: Option<String>,
    owner: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /api/jobs`: jobs in posting order (`baton jobs list --json`).
async fn list_jobs(
    State(console): State<Console>,
    query: Result<Query<JobFilters>, QueryRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let Query(f) = query?;
    let limit = limit(f.limit.as_deref())?;
    let mut query = JobQuery::all().limit(limit);
    if let Some(s) = &f.state {
        query = query.state(state::<JobState>(s, "a job state, e.g. PARKED")?);
    }
    if let Some(key) = f.key {
        query = query.key(key);
    }
    if let Some(o) = &f.owner {
        query = query.owner(param::<ConductorId>("owner", o, "a conductor id")?);
    }
    if let Some(a) = &f.after {
        query = query.after(param("after", a, "the id of the last job of a page")?);
    }
    let jobs = console.board.list(&query).await?;
    let last = jobs.last().map(|j| j.id.to_string());
    Ok(page(&jobs, limit, last, "/api/jobs", raw.as_deref()))
}

/// `GET /api/jobs/{id}`: one job (`baton jobs show --json`).
async fn show_job(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Job>> {
    let id: JobId = id(path, "job id")?;
    Ok(Json(console.board.get(id).await?))
}

/// A conductor and what it runs.
#[derive(Debug, Serialize)]
struct Conductor {
    #[serde(flatten)]
    info: ConductorInfo,
    /// The jobs it holds (claimed by it), in posting order.
    runs: Vec<JobId>,
}

/// `GET /api/conductors`: the live fleet (`baton conductors list --json`), each with the
/// jobs it holds.
async fn list_conductors(State(console): State<Console>) -> ApiResult<Json<Vec<Conductor>>> {
    let fleet = console.board.conductors().await?;
    let mut out = Vec::with_capacity(fleet.len());
    for info in fleet {
        let held = console
            .board
            .list(
                &JobQuery::all()
                    .state(JobState::Claimed)
                    .owner(info.id)
                    .limit(MAX_LIMIT),
            )
            .await?;
        out.push(Conductor {
            runs: held.iter().map(|j| j.id).collect(),
            info,
        });
    }
    Ok(Json(out))
}

/// The body of an action, if any: JSON (415 otherwise) of the shape `T` (400 otherwise);
/// `T::default()` for an empty body.
fn body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::unsupported_media_type());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not what this action takes: {e}")))
}

/// The body of a cancel: `{"revert": true}` (the default) reverts the run; `false` suspends
/// it and parks the job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default = "yes")]
    revert: bool,
}

impl Default for CancelBody {
    fn default() -> Self {
        Self { revert: true }
    }
}

fn yes() -> bool {
    true
}

/// The body of a trash.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrashBody {
    reason: Option<String>,
    #[serde(default)]
    force: bool,
}

/// The body of an action that takes none: empty, or `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoBody {}

/// An action's answer: the job as it now is.
fn acted(job: Job) -> (StatusCode, Json<Job>) {
    (StatusCode::OK, Json(job))
}

/// Authorizes an action, then reads its id and body.
fn action<I: FromStr, B: DeserializeOwned + Default>(
    console: &Console,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
    what: &str,
) -> ApiResult<(I, B)>
where
    I::Err: std::fmt::Display,
{
    crate::security::authorize(console.token.as_ref(), headers)?;
    let id = id(path, what)?;
    let body = body(headers, bytes)?;
    Ok((id, body))
}

/// Asks for the run of job `job` to be cancelled (`flows cancel`, `jobs cancel`).
async fn cancel(console: &Console, job: JobId, body: &CancelBody, by_flow: bool) -> ApiResult<Job> {
    let how = if body.revert {
        Cancel::Revert
    } else {
        Cancel::Suspend
    };
    match console.board.request_cancel(job, how).await {
        Err(baton_core::board::Error::JobNotFound(_)) if by_flow => {
            Err(ApiError::not_found(format!(
                "no job drives flow {job}: a run a process drives itself is cancelled there, and \
                 a stranded one is reverted (POST /api/flows/{job}/revert)"
            )))
        }
        other => Ok(other?),
    }
}

/// `POST /api/flows/{id}/cancel` (`baton flows cancel`).
async fn cancel_flow(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let (flow, body): (FlowId, CancelBody) = action(&console, path, &headers, bytes, "flow id")?;
    let job = JobId::from_uuid(flow.as_uuid());
    Ok(acted(cancel(&console, job, &body, true).await?))
}

/// `POST /api/flows/{id}/revert` (`baton flows revert`).
async fn revert_flow(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let (flow, NoBody {}) = action(&console, path, &headers, bytes, "flow id")?;
    let job = recovery::revert(&*console.store, &*console.board, flow).await?;
    Ok(acted(job))
}

/// `POST /api/flows/{id}/resume` (`baton flows resume`).
async fn resume_flow(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let (flow, NoBody {}) = action(&console, path, &headers, bytes, "flow id")?;
    let job = recovery::resume(&*console.store, &*console.board, flow).await?;
    Ok(acted(job))
}

/// `POST /api/jobs/{id}/retry` (`baton jobs retry`).
async fn retry_job(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let (job, NoBody {}) = action(&console, path, &headers, bytes, "job id")?;
    Ok(acted(recovery::retry(&*console.board, job).await?))
}

/// `POST /api/jobs/{id}/cancel` (`baton jobs cancel`).
async fn cancel_job(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let (job, body): (JobId, CancelBody) = action(&console, path, &headers, bytes, "job id")?;
    Ok(acted(cancel(&console, job, &body, false).await?))
}

/// `POST /api/jobs/{id}/abandon` (`baton jobs abandon`): takes the job back from its owner.
async fn abandon_job(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let (job, NoBody {}) = action(&console, path, &headers, bytes, "job id")?;
    console.board.release(job).await?;
    Ok(acted(console.board.get(job).await?))
}

/// `POST /api/jobs/{id}/trash` (`baton jobs trash`).
async fn trash_job(
    State(console): State<Console>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let (job, body): (JobId, TrashBody) = action(&console, path, &headers, bytes, "job id")?;
    let reason = body
        .reason
        .unwrap_or_else(|| "trashed by an operator from the console".to_owned());
    let job = recovery::trash(&*console.store, &*console.board, job, &reason, body.force).await?;
    Ok(acted(job))
}
