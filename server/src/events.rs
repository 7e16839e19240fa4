//! The event exchange: every mutation publishes containerd's topic and event message here, and
//! Events/Subscribe streams them out. In memory only, as in containerd: events are notifications,
//! not a log.

use berth_api::containerd::events::ContainerUpdate;
use berth_api::containerd::services::containers::v1::Container;
use berth_api::containerd::types::Envelope;
use berth_errdefs::{Error, Result};
use berth_metadata::filters::{Adaptor, Filter};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What one client may make the exchange hold (`[events]`): an event larger than
/// `max_event_bytes` is refused at Publish/Forward, and a subscriber that falls behind by more
/// than `backlog_events` events or `backlog_bytes` bytes is dropped with an error (as
/// containerd's exchange drops a sink that cannot keep up) rather than pin memory.
/// This is the `[events]` config section itself.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest event (encoded envelope) Events.Publish and Events.Forward accept.
    pub max_event_bytes: usize,
    /// A subscriber further behind than this many events, or bytes, is dropped with
    /// ResourceExhausted (it may subscribe again).
    pub backlog_events: usize,
    pub backlog_bytes: usize,
}

impl Limits {
    /// Every limit is needed: a zero one would refuse every event or drop every subscriber.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("events.max_event_bytes", self.max_event_bytes),
            ("events.backlog_events", self.backlog_events),
            ("events.backlog_bytes", self.backlog_bytes),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{key} must be greater than 0")));
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 1 << 20,
            backlog_events: 4096,
            backlog_bytes: 32 << 20,
        }
    }
}

#[derive(Clone)]
pub struct Exchange {
    inner: Arc<Inner>,
    /// Set at shutdown: subscriber streams end so the server can drain.
    closed: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    limits: Limits,
    sinks: Mutex<Vec<Sink>>,
}

/// The exchange's end of one subscription.
struct Sink {
    tx: mpsc::UnboundedSender<(Arc<Envelope>, usize)>,
    queued: Arc<Queued>,
}

/// What a subscription holds and has not yet taken, shared by both ends.
#[derive(Default)]
struct Queued {
    events: AtomicUsize,
    bytes: AtomicUsize,
    /// Set when the exchange dropped the subscription for falling behind.
    overrun: AtomicBool,
}

/// One subscriber's queue of events, in publication order.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<(Arc<Envelope>, usize)>,
    queued: Arc<Queued>,
    limits: Limits,
}

impl Subscription {
    /// The next event; Ready(None) once the exchange has dropped this subscription.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Arc<Envelope>>> {
        if self.overrun() {
            return std::task::Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|next| {
            next.map(|(envelope, size)| {
                self.queued.events.fetch_sub(1, Ordering::Relaxed);
                self.queued.bytes.fetch_sub(size, Ordering::Relaxed);
                envelope
            })
        })
    }

    /// Whether the exchange dropped this subscriber for falling behind (see [`Limits`]).
    pub fn overrun(&self) -> bool {
        self.queued.overrun.load(Ordering::Relaxed)
    }

    /// Why the subscription ended, for the subscriber.
    pub fn overrun_error(&self) -> Error {
        Error::resource_exhausted(format!(
            "event subscriber fell behind by more than {} events or {} bytes and was dropped; subscribe again",
            self.limits.backlog_events, self.limits.backlog_bytes
        ))
    }
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new(Limits::default())
    }
}

impl Exchange {
    pub fn new(limits: Limits) -> Self {
        Exchange {
            inner: Arc::new(Inner {
                limits,
                sinks: Mutex::new(Vec::new()),
            }),
            closed: tokio::sync::watch::channel(false).0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Refuse an event a client sent that is larger than `max_event_bytes` (nothing published).
    pub fn check_size(&self, envelope: &Envelope) -> Result<()> {
        let size = envelope.encoded_len();
        let max = self.inner.limits.max_event_bytes;
        if size > max {
            return Err(Error::resource_exhausted(format!(
                "event on {:?} is {size} bytes, more than the {max} bytes an event may carry",
                envelope.topic
            )));
        }
        Ok(())
    }

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
        let size = envelope.encoded_len();
        let envelope = Arc::new(envelope);
        let limits = self.inner.limits;
        // No subscribers is not an error: nobody is listening.
        self.sinks().retain(|sink| {
            let q = &sink.queued;
            let behind = q.events.load(Ordering::Relaxed) >= limits.backlog_events
                || q.bytes.load(Ordering::Relaxed) + size > limits.backlog_bytes;
            if behind {
                q.overrun.store(true, Ordering::Relaxed);
                tracing::warn!(
                    events = q.events.load(Ordering::Relaxed),
                    bytes = q.bytes.load(Ordering::Relaxed),
                    "event subscriber too slow: dropped"
                );
                return false; // dropping the sender wakes the subscriber, who sees `overrun`
            }
            q.events.fetch_add(1, Ordering::Relaxed);
            q.bytes.fetch_add(size, Ordering::Relaxed);
            // A closed receiver: the subscriber went away.
            sink.tx.send((envelope.clone(), size)).is_ok()
        });
    }

    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(Queued::default());
        self.sinks().push(Sink {
            tx,
            queued: queued.clone(),
        });
        Subscription {
            rx,
            queued,
            limits: self.inner.limits,
        }
    }

    fn sinks(&self) -> std::sync::MutexGuard<'_, Vec<Sink>> {
        // A poisoned lock only means a panic mid-update of a plain list.
        self.inner.sinks.lock().unwrap_or_else(|p| p.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll, Waker};

    fn envelope(topic: &str, payload: usize) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: "ns".into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: "example.com/E".into(),
                value: vec![7; payload],
            }),
        }
    }

    fn next(sub: &mut Subscription) -> Poll<Option<Arc<Envelope>>> {
        sub.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_subscriber_that_keeps_up_gets_everything_in_order() {
        let x = Exchange::new(Limits {
            max_event_bytes: 1 << 10,
            backlog_events: 2,
            backlog_bytes: 1 << 20,
        });
        let mut sub = x.subscribe();
        for i in 0..10 {
            x.forward(envelope(&format!("/t/{i}"), 10));
            let Poll::Ready(Some(e)) = next(&mut sub) else {
                panic!("event {i} missing");
            };
            assert_eq!(e.topic, format!("/t/{i}"));
        }
        assert!(next(&mut sub).is_pending());
        assert!(!sub.overrun());
    }

    #[test]
    fn a_subscriber_behind_by_more_bytes_than_allowed_is_dropped() {
        let x = Exchange::new(Limits {
            max_event_bytes: 1 << 20,
            backlog_events: 1000,
            backlog_bytes: 10_000,
        });
        let mut slow = x.subscribe();
        let mut fast = x.subscribe();
        for i in 0..5 {
            x.forward(envelope(&format!("/t/{i}"), 3000));
            assert!(matches!(next(&mut fast), Poll::Ready(Some(_))));
        }
        // The fourth event would have made 12 kB queued: the slow one went at that point.
        assert!(slow.overrun());
        assert!(matches!(next(&mut slow), Poll::Ready(None)));
        assert!(slow.overrun_error().kind() == berth_errdefs::Kind::ResourceExhausted);
        assert_eq!(x.sinks().len(), 1, "the dropped subscriber's queue is gone");
        assert!(!fast.overrun());
    }

    #[test]
    fn a_subscriber_behind_by_more_events_than_allowed_is_dropped() {
        let x = Exchange::new(Limits {
            max_event_bytes: 1 << 20,
            backlog_events: 3,
            backlog_bytes: 1 << 30,
        });
        let mut slow = x.subscribe();
        for i in 0..3 {
            x.forward(envelope(&format!("/t/{i}"), 1));
        }
        assert!(!slow.overrun());
        x.forward(envelope("/t/3", 1));
        assert!(slow.overrun());
        assert!(matches!(next(&mut slow), Poll::Ready(None)));
    }

    #[test]
    fn a_subscriber_that_went_away_is_forgotten() {
        let x = Exchange::default();
        drop(x.subscribe());
        x.forward(envelope("/t", 1));
        assert!(x.sinks().is_empty());
    }

    #[test]
    fn events_larger_than_the_limit_are_refused() {
        let x = Exchange::new(Limits {
            max_event_bytes: 100,
            ..Limits::default()
        });
        assert!(x.check_size(&envelope("/t", 10)).is_ok());
        let err = x.check_size(&envelope("/t", 200)).unwrap_err();
        assert!(
            err.kind() == berth_errdefs::Kind::ResourceExhausted,
            "{err}"
        );
        assert!(err.to_string().contains("more than the 100 bytes"), "{err}");
    }
}
