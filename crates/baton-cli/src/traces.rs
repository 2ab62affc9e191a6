//! Traces to an OpenTelemetry collector, when the environment names one (feature `otlp`):
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (see `baton::otlp`). Without it, nothing is exported and
//! nothing goes on the network.
//!
//! Traces never stop a command: an exporter that cannot be set up, or a collector that cannot
//! be reached, is a warning on stderr, and the command does its work all the same.

use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The trace exporter, while traces are exported: [`Exporting::finish`] sends what is queued.
#[derive(Debug, Default)]
pub(crate) struct Exporting {
    #[cfg(feature = "otlp")]
    traces: Option<baton::otlp::Traces>,
}

impl Exporting {
    /// Sends the spans still queued and stops the exporter; says so on stderr if they could
    /// not be sent.
    pub(crate) fn finish(self) {
        #[cfg(feature = "otlp")]
        if let Some(traces) = self.traces {
            if let Err(e) = traces.shutdown() {
                warn("the last traces were not exported", &e);
            }
        }
    }
}

/// Installs `subscriber` as the process's, with the trace exporter's layer on top when the
/// environment asks for traces.
pub(crate) fn install<S>(subscriber: S) -> Exporting
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync + 'static,
{
    #[cfg(feature = "otlp")]
    if baton::otlp::configured() {
        use tracing_subscriber::layer::SubscriberExt as _;
        match baton::otlp::layer("baton") {
            Ok((layer, traces)) => {
                let _ = subscriber.with(layer).try_init();
                return Exporting {
                    traces: Some(traces),
                };
            }
            Err(e) => warn("traces are not exported", &e),
        }
    }
    let _ = subscriber.try_init();
    Exporting::default()
}

/// Prints a warning and its causes, as one line each.
#[cfg(feature = "otlp")]
fn warn(what: &str, e: &(dyn std::error::Error + 'static)) {
    let e = crate::CliError::new(crate::exit::OK, what).caused_by(e);
    match e.cause {
        Some(cause) => eprintln!("warning: {}\n  caused by: {cause}", e.message),
        None => eprintln!("warning: {}", e.message),
    }
}
