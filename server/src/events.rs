//! The event exchange: every mutation publishes containerd's topic and event message here, and
//! Events/Subscribe streams them out. In memory only, as in containerd: events are notifications,
//! not a log.

use berth_api::containerd::events::ContainerUpdate;
use berth_api::containerd::services::containers::v1::Container;
use berth_api::containerd::services::events::v1::Envelope;
use berth_errdefs::{Error, Result};
use berth_metadata::filters::{Adaptor, Filter};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it starts missing some.
const BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Exchange {
    tx: broadcast::Sender<Arc<Envelope>>,
    /// Set at shutdown: subscriber streams end so the server can drain.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            tx: broadcast::channel(BACKLOG).0,
            closed: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Exchange {
    pub fn publish<M: prost::Name>(&self, namespace: &str, topic: &str, event: &M) {
        self.forward(Envelope {
            timestamp: Some(berth_metadata::now()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(berth_api::pack_any(event)),
        });
    }

    /// Deliver an envelope as is (Events/Forward keeps the sender's timestamp and namespace).
    /// `/containers/update` for a container as stored after an update (by a client through the
    /// Containers service, or by the restart monitor).
    pub fn publish_container_update(&self, namespace: &str, c: &Container) {
        let event = ContainerUpdate {
            id: c.id.clone(),
            image: c.image.clone(),
            labels: c.labels.clone(),
            snapshot_key: c.snapshot_key.clone(),
        };
        self.publish(namespace, "/containers/update", &event);
    }

    pub fn forward(&self, envelope: Envelope) {
        tracing::debug!(topic = %envelope.topic, namespace = %envelope.namespace, "event");
        // No subscribers is not an error: nobody is listening.
        let _ = self.tx.send(Arc::new(envelope));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.tx.subscribe()
    }

    /// End every subscription (daemon shutdown): long-lived streams would otherwise hold the
    /// graceful drain open forever.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once `close` has been called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|closed| *closed).await;
        }
    }
}

/// containerd's topic rule: `/`-separated, non-empty components, each an identifier.
pub fn validate_topic(topic: &str) -> Result<()> {
    let rest = topic
        .strip_prefix('/')
        .ok_or_else(|| Error::invalid(format!("event topic {topic:?} must start with '/'")))?;
    for part in rest.split('/') {
        berth_metadata::validate::identifier("event topic component", part)
            .map_err(|e| Error::invalid(format!("event topic {topic:?}: {e}")))?;
    }
    Ok(())
}

pub struct EnvelopeFields<'a>(pub &'a Envelope);

impl Adaptor for EnvelopeFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["namespace"] => Some(self.0.namespace.clone()),
            ["topic"] => Some(self.0.topic.clone()),
            _ => None,
        }
    }
}

pub fn matches(filter: &Filter, envelope: &Envelope) -> bool {
    filter.matches(&EnvelopeFields(envelope))
}
