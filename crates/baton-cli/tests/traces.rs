//! Traces exported over OTLP/HTTP by the real `baton` binary (feature `otlp`, on by default),
//! received by a small OTLP receiver in the test and decoded with the protocol's own types:
//! a demo run is one trace (its job, its flow, an atom span per atom run), with the ids that
//! `flows show --json` shows; and traces never stop a command, nor go anywhere unless asked.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};

use baton_cli::exit;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;
use support::{baton, command, run, sqlite_db, stderr, stdout};

/// What the receiver was sent.
#[derive(Debug, Default)]
struct Received {
    /// The export requests it took, decoded.
    exports: Vec<ExportTraceServiceRequest>,
    /// Requests it refused: method, path and content type, or why the body did not decode.
    refused: Vec<String>,
}

/// An OTLP/HTTP receiver on a free port of 127.0.0.1, answering `POST /v1/traces` with
/// protobuf bodies as a collector does.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    // Serves until the test drops it.
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| take(req, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            _runtime: runtime,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received, in the order received, with the service and scope it came with.
    fn spans(&self) -> Vec<(String, String, Span)> {
        let received = self.received.lock().unwrap();
        assert!(
            received.refused.is_empty(),
            "the exporter sent requests a collector refuses: {:?}",
            received.refused
        );
        let mut spans = Vec::new();
        for export in &received.exports {
            for resource in &export.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|r| attr(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope in &resource.scope_spans {
                    let scope_name = scope
                        .scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    for span in &scope.spans {
                        spans.push((service.clone(), scope_name.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }

    fn requests(&self) -> usize {
        let received = self.received.lock().unwrap();
        received.exports.len() + received.refused.len()
    }
}

/// Takes one request as a collector would: an export on `/v1/traces`, or a refusal.
async fn take(
    req: Request<Incoming>,
    received: Arc<Mutex<Received>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let content_type = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = if parts.method != hyper::Method::POST
        || parts.uri.path() != "/v1/traces"
        || content_type != "application/x-protobuf"
    {
        received
            .lock()
            .unwrap()
            .refused
            .push(format!("{} {} ({content_type})", parts.method, parts.uri));
        hyper::StatusCode::NOT_FOUND
    } else {
        match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                received.lock().unwrap().exports.push(export);
                hyper::StatusCode::OK
            }
            Err(e) => {
                received
                    .lock()
                    .unwrap()
                    .refused
                    .push(format!("undecodable body: {e}"));
                hyper::StatusCode::BAD_REQUEST
            }
        }
    };
    // An empty ExportTraceServiceResponse: everything accepted.
    Ok(Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::new()))
        .unwrap())
}

/// A span attribute's value, as text.
fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn span_attr(span: &Span, key: &str) -> Option<String> {
    attr(&span.attributes, key)
}

/// A span attribute that must be a number.
fn span_int(span: &Span, key: &str) -> Option<i64> {
    match span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        AnyValue::IntValue(i) => Some(*i),
        other => panic!("{key} is not a number: {other:?}"),
    }
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `baton demo` for `stack`, with `extra` arguments and `env` set.
fn demo(db: &str, stack: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["demo", "--step-ms", "1", "--stack", stack];
    args.extend_from_slice(extra);
    let mut cmd = command(Some(db), &args);
    for (var, value) in env {
        cmd.env(var, value);
    }
    run(cmd, None)
}

#[test]
fn a_demo_run_is_one_trace_of_its_job_its_flow_and_its_atoms() {
    let db = sqlite_db();
    let receiver = Receiver::start();
    let out = demo(
        &db.url,
        "traced",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    assert!(stdout(&out).contains("ended SUCCESS"), "{}", stdout(&out));
    assert!(
        !stderr(&out).contains("warning"),
        "exporting went wrong: {}",
        stderr(&out)
    );

    // What the store says the run was.
    let flows = json(&baton(&db.url, &["flows", "list", "--json"]));
    let flow_id = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "stack-create:traced")
        .expect("the demo's flow is listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = json(&baton(&db.url, &["flows", "show", &flow_id, "--json"]));
    let job_id = shown["flow"]["meta"]["job"].as_str().unwrap().to_owned();
    let mut atoms: Vec<String> = shown["atoms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["state"], "SUCCESS", "{a}");
            assert_eq!(a["attempt"], 1, "{a}");
            a["name"].as_str().unwrap().to_owned()
        })
        .collect();
    atoms.sort();
    assert_eq!(atoms.len(), 9, "{atoms:?}");

    // Everything came from the baton service's baton scope.
    let spans = receiver.spans();
    for (service, scope, span) in &spans {
        assert_eq!(service, "baton", "{span:?}");
        assert_eq!(scope, "baton", "{span:?}");
    }
    let spans: Vec<Span> = spans.into_iter().map(|(_, _, span)| span).collect();
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };

    // One flow span for the run, with the run's ids.
    let flow_spans = named("flow");
    assert_eq!(flow_spans.len(), 1, "{flow_spans:?}");
    let flow = flow_spans[0];
    assert_eq!(span_attr(flow, "flow.id").as_deref(), Some(&*flow_id));
    assert_eq!(span_attr(flow, "job.id").as_deref(), Some(&*job_id));
    assert_eq!(
        span_attr(flow, "flow.name").as_deref(),
        Some("stack-create:traced")
    );

    // Under the job's span, which is the root of the trace and links to its conductor's.
    let job_spans = named("job");
    assert_eq!(job_spans.len(), 1, "{job_spans:?}");
    let job = job_spans[0];
    assert_eq!(span_attr(job, "job.id").as_deref(), Some(&*job_id));
    assert_eq!(span_attr(job, "flow.id").as_deref(), Some(&*flow_id));
    assert_eq!(span_int(job, "attempt"), Some(1));
    assert!(job.parent_span_id.is_empty(), "{job:?}");
    assert_eq!(flow.parent_span_id, job.span_id);
    assert_eq!(flow.trace_id, job.trace_id);
    let conductors = named("conductor");
    assert_eq!(conductors.len(), 1, "{conductors:?}");
    let conductor = conductors[0];
    assert_eq!(
        span_attr(conductor, "conductor.name").as_deref(),
        Some("demo")
    );
    assert_eq!(job.links.len(), 1, "{job:?}");
    assert_eq!(job.links[0].span_id, conductor.span_id);
    assert_eq!(job.links[0].trace_id, conductor.trace_id);
    assert_ne!(
        conductor.trace_id, job.trace_id,
        "a job is a trace of its own"
    );

    // An atom span per atom run, each under the flow span, named as the store names it.
    let atom_spans = named("atom");
    let mut executed: Vec<String> = atom_spans
        .iter()
        .map(|s| {
            assert_eq!(s.parent_span_id, flow.span_id, "{s:?}");
            assert_eq!(s.trace_id, flow.trace_id, "{s:?}");
            assert_eq!(span_attr(s, "action").as_deref(), Some("execute"), "{s:?}");
            assert_eq!(span_int(s, "attempt"), Some(1), "{s:?}");
            span_attr(s, "atom").unwrap()
        })
        .collect();
    executed.sort();
    assert_eq!(executed, atoms);

    // Nothing else of the run's: the trace is the job, the flow and the atoms.
    let in_trace = spans.iter().filter(|s| s.trace_id == job.trace_id).count();
    assert_eq!(in_trace, 2 + atoms.len());
}

#[test]
fn a_failed_atom_is_in_the_trace_with_its_revert() {
    let db = sqlite_db();
    let receiver = Receiver::start();
    let out = demo(
        &db.url,
        "failing",
        &["--fail-at", "server-1"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    // The demo expects the run it was told to fail to be rolled back.
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    assert!(stdout(&out).contains("ended REVERTED"), "{}", stdout(&out));

    let spans: Vec<Span> = receiver.spans().into_iter().map(|(_, _, s)| s).collect();
    let flow = spans.iter().find(|s| s.name == "flow").unwrap();
    let mut runs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in spans.iter().filter(|s| s.name == "atom") {
        assert_eq!(s.parent_span_id, flow.span_id, "{s:?}");
        let key = (
            span_attr(s, "atom").unwrap(),
            span_attr(s, "action").unwrap(),
        );
        *runs.entry(key).or_default() += 1;
    }
    let server = |action: &str| {
        runs.get(&("server-1".to_owned(), action.to_owned()))
            .copied()
    };
    assert!(server("execute").is_some_and(|n| n >= 1), "{runs:?}");
    assert_eq!(server("revert"), Some(1), "{runs:?}");
    // The network was built, then undone.
    assert_eq!(
        runs.get(&("network".to_owned(), "revert".to_owned())),
        Some(&1),
        "{runs:?}"
    );

    // The failed call's span says so, with the failure; the others are not marked.
    for s in spans.iter().filter(|s| s.name == "atom") {
        let status = s.status.clone().unwrap_or_default();
        let failed = span_attr(s, "atom").as_deref() == Some("server-1")
            && span_attr(s, "action").as_deref() == Some("execute");
        if failed {
            assert_eq!(status.code, StatusCode::Error as i32, "{s:?}");
            assert!(status.message.contains("server-1"), "{s:?}");
        } else {
            assert_eq!(status.code, StatusCode::Unset as i32, "{s:?}");
        }
    }
}

#[test]
fn nothing_is_sent_when_the_sdk_is_disabled() {
    let db = sqlite_db();
    let receiver = Receiver::start();
    let out = demo(
        &db.url,
        "quiet",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    // The exporter sends at the latest as the process ends: it has ended.
    assert_eq!(receiver.requests(), 0);
}

#[test]
fn an_unreachable_collector_is_a_warning_not_a_failure() {
    // A port that nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let db = sqlite_db();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = demo(
        &db.url,
        "unheard",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    assert!(stdout(&out).contains("ended SUCCESS"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("warning: the last traces were not exported"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_malformed_setting_is_a_warning_and_the_command_runs() {
    let db = sqlite_db();
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ] {
        let mut cmd = command(Some(&db.url), &["flows", "list"]);
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
            .env(var, value);
        let out = run(cmd, None);
        assert_eq!(out.status.code(), Some(exit::OK), "{var}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with("warning: traces are not exported\n  caused by: "),
            "{var}: {err}"
        );
    }
}
