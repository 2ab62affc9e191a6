//! Exporting baton's tracing spans to an OpenTelemetry collector (feature `otlp`).
//!
//! baton instruments its work with [`tracing`] spans; this module turns them into
//! OpenTelemetry spans and sends them over OTLP/HTTP (protobuf) to a collector, Jaeger,
//! Tempo or any other OTLP receiver. Configuration comes from the standard environment
//! variables, read when [`Traces::from_env`] is called:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): where to send,
//!   e.g. `http://127.0.0.1:4318` (`/v1/traces` is appended to the first, not the second);
//! - `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`: the service the
//!   spans are from (the name given to [`Traces::from_env`] otherwise);
//! - `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER`,
//!   `OTEL_BSP_*` (batching), `OTEL_RESOURCE_ATTRIBUTES`, as the specification defines them.
//!
//! Only `http/protobuf` is spoken: `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` is refused with an
//! error (gRPC would bring tonic into every build). Spans are batched and sent from a thread
//! of the exporter's own, so a slow or unreachable collector never holds up a flow; spans
//! it cannot take in time are dropped, never queued without bound.
//!
//! # Spans and attributes
//! Each span's fields become its attributes, under the names the logs use:
//!
//! | span | attributes | parent |
//! |---|---|---|
//! | `conductor` | `conductor.id`, `conductor.name` | none |
//! | `job` | `job.id`, `job.name`, `flow.id`, `token`, `attempt` | none; linked to its `conductor` |
//! | `flow` | `flow.id`, `flow.name`, `job.id` (a conductor's run) | its `job`, or the caller's span |
//! | `atom` | `atom` (the atom's name), `attempt`, `action` (`execute` or `revert`) | its `flow` |
//!
//! A job is a trace of its own: its run's `flow` span and the `atom` spans under it. A
//! conductor that lives for weeks does not make one trace of everything it ran; each job's
//! span links to the conductor's instead.
//!
//! # Quick start
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//! use tracing_subscriber::Layer as _;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // With OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 in the environment:
//! let traces = baton::otlp::Traces::from_env("my-service")?;
//! tracing_subscriber::registry()
//!     .with(traces.layer().with_filter(baton::otlp::filter()))
//!     .init();
//! // ... run engines and conductors ...
//! traces.shutdown()?; // or let it drop: the spans still queued are sent either way
//! # Ok(())
//! # }
//! ```

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::layer::Filter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The variables that name where to send traces: [`configured`] looks for either.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The exporter could not be set up: a malformed endpoint or timeout, say.
    #[error("cannot set up the OTLP trace exporter")]
    Setup(#[source] opentelemetry_otlp::ExporterBuildError),
    /// A variable asks for an OTLP protocol other than `http/protobuf`.
    #[error(
        "{var}={value:?} asks for a protocol this exporter does not speak: it sends OTLP over \
         HTTP with protobuf bodies ({PROTOCOL})"
    )]
    Protocol {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The spans still queued at shutdown could not all be sent.
    #[error("sending the last traces to the OTLP endpoint failed")]
    Flush(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// The only OTLP protocol spoken.
const PROTOCOL: &str = "http/protobuf";

/// The variables that choose the protocol, the one for traces first: it wins.
const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

/// Refuses a protocol other than [`PROTOCOL`], with the environment read through `var`.
///
/// (The exporter itself would only log a warning for `grpc` and send HTTP to what is likely
/// a gRPC port.)
fn check_protocol(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<(), Error> {
    for name in PROTOCOL_VARS {
        let Some(value) = var(name) else { continue };
        let value = value.to_string_lossy();
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if value.eq_ignore_ascii_case(PROTOCOL) {
            return Ok(());
        }
        return Err(Error::Protocol {
            var: name,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Whether the environment asks for traces: one of [`ENDPOINT_VARS`] is set (and not empty),
/// and `OTEL_SDK_DISABLED` is not `true`.
///
/// A program that exports only when asked (as `baton` does) calls [`Traces::from_env`] only
/// then, so that nothing goes on the network by default: without an endpoint, the exporter
/// would send to `http://localhost:4318`.
#[must_use]
pub fn configured() -> bool {
    asks_for_traces(|var| std::env::var_os(var))
}

/// [`configured`], with the environment read through `var`.
fn asks_for_traces(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let disabled = var("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.to_string_lossy().trim().eq_ignore_ascii_case("true"));
    !disabled
        && ENDPOINT_VARS
            .iter()
            .any(|name| var(name).is_some_and(|v| !v.is_empty()))
}

/// What [`Traces::layer`] should see: spans and events at `INFO` and above, except the
/// exporter's own (its reports of failed exports would otherwise feed the spans it exports).
///
/// baton's `flow`, `atom`, `job` and `conductor` spans are at `INFO` (`conductor` at `ERROR`,
/// so it survives any filter); its per-step events are at `DEBUG` and stay out.
#[must_use]
pub fn filter<S>() -> impl Filter<S> + Send + Sync + 'static {
    FilterFn::new(exported).with_max_level_hint(LevelFilter::INFO)
}

fn exported(meta: &Metadata<'_>) -> bool {
    /// The exporter's crates, which report through `tracing` too.
    const EXPORTER: [&str; 9] = [
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
        "opentelemetry_http",
        "reqwest",
        "hyper",
        "hyper_util",
        "tower",
        "tower_http",
    ];
    let crate_name = meta.target().split("::").next().unwrap_or_default();
    meta.level() <= &tracing::Level::INFO && !EXPORTER.contains(&crate_name)
}

/// The exporter, and the guard that sends what is still queued when it goes.
///
/// Dropping it (or [`Traces::shutdown`]) sends the spans that ended but are not yet sent,
/// waiting for at most the exporter's timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default),
/// and stops the exporter's thread; spans that end later are not sent. Keep it until the
/// program's work is done (in `main`, past the runtime's `block_on`).
pub struct Traces {
    provider: SdkTracerProvider,
    /// Whether [`Traces::shutdown`] ran, so that dropping does not do it again.
    shut: bool,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traces").field("shut", &self.shut).finish()
    }
}

impl Traces {
    /// Sets up the exporter from the standard `OTEL_*` variables (see the
    /// [module documentation](self)); `service` is the service name when they name none.
    ///
    /// Sends nothing yet: spans are sent, in batches, once [`Traces::layer`] is installed and
    /// spans end.
    ///
    /// # Errors
    /// [`Error::Setup`] when the variables are malformed (an endpoint that is no URL, say),
    /// [`Error::Protocol`] when they ask for a protocol other than `http/protobuf`.
    pub fn from_env(service: &str) -> Result<Self, Error> {
        check_protocol(|var| std::env::var_os(var))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(Error::Setup)?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build();
        Ok(Self {
            provider,
            shut: false,
        })
    }

    /// The [`tracing_subscriber`] layer that turns spans into OpenTelemetry spans for this
    /// exporter. Give it a filter: [`filter`] is a good one.
    #[must_use]
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let scope = InstrumentationScope::builder("baton")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer_with_scope(scope))
    }

    /// Sends the spans still queued and stops the exporter: what dropping does, with the
    /// result.
    ///
    /// # Errors
    /// [`Error::Flush`] when the last batch could not be sent (the collector is unreachable
    /// or refused it) or the exporter did not answer in time; those spans are lost.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.shut = true;
        // A flush first: the SDK's shutdown sends the last batch too, but does not say whether
        // that worked.
        let flushed = self.provider.force_flush();
        let shut = self.provider.shutdown();
        flushed.and(shut).map_err(Error::Flush)
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if !self.shut {
            // Nobody to tell: `shutdown` is the way to hear about it.
            let _ = self.provider.shutdown();
        }
    }
}

/// The exporter and its layer in one call: [`Traces::from_env`], then [`Traces::layer`]
/// filtered with [`filter`].
///
/// # Errors
/// As [`Traces::from_env`].
pub fn layer<S>(service: &str) -> Result<(impl Layer<S>, Traces), Error>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let traces = Traces::from_env(service)?;
    let layer = traces.layer().with_filter(filter());
    Ok((layer, traces))
}

/// The resource the spans are from: what the environment says (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), with `service` as the name when it names none.
fn resource(service: &str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder()
            .with_service_name(service.to_owned())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    use super::*;

    /// Records the names of the spans it is shown.
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber + for<'span> LookupSpan<'span>> Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: Context<'_, S>,
        ) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(attrs.metadata().name().to_owned());
            }
        }
    }

    #[test]
    fn the_filter_keeps_info_and_above_but_not_the_exporters_own() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber =
            tracing_subscriber::registry().with(Seen(seen.clone()).with_filter(filter()));
        tracing::subscriber::with_default(subscriber, || {
            let _kept = tracing::info_span!(target: "baton_core::engine::run", "flow");
            let _kept = tracing::error_span!(target: "baton_core::conductor", "conductor");
            let _kept = tracing::warn_span!(target: "my_app", "mine");
            // A crate whose name merely starts with an exporter crate's is not one of them.
            let _kept = tracing::info_span!(target: "hyperion::x", "lookalike");
            let _dropped = tracing::debug_span!(target: "baton_core::engine::run", "debug");
            let _dropped = tracing::error_span!(target: "opentelemetry_sdk", "sdk");
            let _dropped = tracing::warn_span!(target: "opentelemetry_otlp::exporter", "otlp");
            let _dropped = tracing::info_span!(target: "hyper_util::client", "client");
            let _dropped = tracing::info_span!(target: "reqwest", "reqwest");
        });
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, ["flow", "conductor", "mine", "lookalike"]);
    }

    #[test]
    fn only_http_protobuf_is_accepted() {
        let check = |traces: Option<&str>, all: Option<&str>| {
            check_protocol(|var| {
                match var {
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => traces,
                    "OTEL_EXPORTER_OTLP_PROTOCOL" => all,
                    _ => None,
                }
                .map(std::ffi::OsString::from)
            })
        };
        assert!(check(None, None).is_ok());
        assert!(check(None, Some("http/protobuf")).is_ok());
        assert!(
            check(Some("HTTP/Protobuf"), Some("grpc")).is_ok(),
            "the traces' own wins"
        );
        assert!(check(Some(""), Some("http/protobuf")).is_ok());
        for (traces, all, var, value) in [
            (None, Some("grpc"), "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                Some("http/json"),
                None,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "http/json",
            ),
            (
                Some("grpc"),
                Some("http/protobuf"),
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "grpc",
            ),
        ] {
            match check(traces, all) {
                Err(Error::Protocol { var: v, value: got }) => {
                    assert_eq!((v, got.as_str()), (var, value));
                }
                other => panic!("{traces:?} {all:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn traces_are_asked_for_by_an_endpoint_unless_disabled() {
        let cases = [
            (None, None, None, false),
            (Some("http://127.0.0.1:4318"), None, None, true),
            (None, Some("http://127.0.0.1:4318/v1/traces"), None, true),
            (Some(""), None, None, false),
            (Some("http://127.0.0.1:4318"), None, Some("true"), false),
            (Some("http://127.0.0.1:4318"), None, Some(" TRUE "), false),
            (Some("http://127.0.0.1:4318"), None, Some("false"), true),
        ];
        for (endpoint, traces, disabled, expected) in cases {
            let env = |var: &str| {
                match var {
                    "OTEL_EXPORTER_OTLP_ENDPOINT" => endpoint,
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => traces,
                    "OTEL_SDK_DISABLED" => disabled,
                    _ => None,
                }
                .map(std::ffi::OsString::from)
            };
            assert_eq!(
                asks_for_traces(env),
                expected,
                "{endpoint:?} {traces:?} disabled={disabled:?}"
            );
        }
    }
}
