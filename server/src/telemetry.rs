//! OpenTelemetry traces: the `[tracing]` config section, the OTLP exporter behind the `tracing`
//! subscriber, and the W3C trace context a client sends in its gRPC metadata.
//!
//! The spans exported are the ones berthd already makes (one per RPC, `daemon::router`); this
//! module only ships them. With no endpoint configured nothing here is installed, so the cost of
//! tracing is what it was before: a span that only the log layer looks at.

use berth_errdefs::{Error, Result};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// `[tracing]`: off unless `otlp_endpoint` is set (containerd's tracing plugin is off by default too).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// An OTLP collector reached over HTTP with protobuf bodies, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added when the URL has no path); empty: no traces are exported.
    pub otlp_endpoint: String,
}

impl TracingConfig {
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }

    pub fn validate(&self) -> Result<()> {
        if self.enabled() && self.traces_url().is_none() {
            return Err(Error::invalid(format!(
                "tracing.otlp_endpoint {:?} is not an http:// or https:// URL",
                self.otlp_endpoint
            )));
        }
        Ok(())
    }

    /// Where spans are POSTed: the endpoint as given when it names a path, as the OTLP
    /// exporters' own `..._TRACES_ENDPOINT` settings do, else its `/v1/traces`.
    fn traces_url(&self) -> Option<String> {
        let rest = self
            .otlp_endpoint
            .strip_prefix("http://")
            .or_else(|| self.otlp_endpoint.strip_prefix("https://"))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || host.contains(char::is_whitespace) {
            return None;
        }
        Some(if path.is_empty() {
            format!("{}/v1/traces", self.otlp_endpoint.trim_end_matches('/'))
        } else {
            self.otlp_endpoint.clone()
        })
    }
}

/// The exporter's pipeline; `shutdown` sends what is still batched (a clean stop loses no span).
pub struct Exporter(SdkTracerProvider);

impl Exporter {
    pub fn shutdown(self) {
        if let Err(e) = self.0.shutdown() {
            tracing::warn!(error = %e, "flushing the last spans to the OTLP endpoint");
        }
    }
}

/// The layer that exports berthd's spans, or `None` when `[tracing]` is off. Only the daemon's
/// own crates' spans at info and above go out: the transport crates' debug spans would be most
/// of the traffic and none of the meaning.
#[allow(clippy::type_complexity)]
pub fn layer<S>(
    config: &TracingConfig,
) -> Result<Option<(Box<dyn Layer<S> + Send + Sync>, Exporter)>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let Some(url) = config.traces_url().filter(|_| config.enabled()) else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| Error::invalid(format!("tracing.otlp_endpoint: {e}")))?;
    let provider = SdkTracerProvider::builder()
        // Batched on the SDK's own thread: an RPC never waits for the collector.
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("berthd")
                .build(),
        )
        .build();
    let tracer = provider.tracer("berthd");
    let only_ours = Targets::new()
        .with_target("berthd", LevelFilter::INFO)
        .with_target("berth_cri", LevelFilter::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(only_ours)
        .boxed();
    Ok(Some((layer, Exporter(provider))))
}

/// Reads W3C `traceparent` / `tracestate` from gRPC metadata (HTTP/2 headers).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Make `span` a child of the client's span when the request carries a valid `traceparent`, so
/// the client's trace continues through berthd; without one (or with a malformed one) the span
/// starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.get("traceparent").is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only when the span is disabled (nothing to parent); then there is nothing to export.
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(endpoint: &str) -> Option<String> {
        TracingConfig {
            otlp_endpoint: endpoint.into(),
        }
        .traces_url()
    }

    #[test]
    fn endpoints_get_the_traces_path_only_when_they_name_none() {
        assert_eq!(
            url("http://127.0.0.1:4318").as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            url("http://collector:4318/").as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            url("https://c.example/otlp/v1/traces").as_deref(),
            Some("https://c.example/otlp/v1/traces")
        );
        assert_eq!(url("127.0.0.1:4318"), None);
        assert_eq!(url("http:///v1/traces"), None);
        assert!(TracingConfig::default().validate().is_ok());
        assert!(TracingConfig {
            otlp_endpoint: "grpc://x".into()
        }
        .validate()
        .is_err());
    }
}
