use super::{namespace, reply, RpcResult, State};
use crate::events::{matches, validate_topic, Subscription};
use berth_api::containerd::services::events::v1::{events_server::Events, *};
use berth_api::containerd::types::Envelope;
use berth_errdefs::Error;
use berth_metadata::filters::Filter;
use berth_metadata::now;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct EventsService(pub Arc<State>);

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, req: Request<PublishRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        validate_topic(&req.topic)?;
        let event = req
            .event
            .ok_or_else(|| Error::invalid("event must be set"))?;
        let envelope = Envelope {
            timestamp: Some(now()),
            namespace: ns,
            topic: req.topic,
            event: Some(event),
        };
        self.0.events.check_size(&envelope)?;
        self.0.events.forward(envelope);
        reply(())
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> RpcResult<()> {
        let envelope = req
            .into_inner()
            .envelope
            .ok_or_else(|| Error::invalid("envelope must be set"))?;
        validate_topic(&envelope.topic)?;
        berth_metadata::validate::identifier("envelope namespace", &envelope.namespace)?;
        if envelope.event.is_none() {
            return Err(Error::invalid("envelope event must be set").into());
        }
        self.0.events.check_size(&envelope)?;
        self.0.events.forward(envelope);
        reply(())
    }

    type SubscribeStream = EnvelopeStream;

    /// Streams events of all namespaces (as containerd does), narrowed by the filters.
    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<EnvelopeStream>, Status> {
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        Ok(Response::new(Box::pin(Subscribed {
            subscription: Some(self.0.events.subscribe()),
            filter,
            closed: Box::pin(self.0.events.closed()),
        })))
    }
}

/// The Subscribe stream, polled straight from the subscription: a client that stops reading
/// leaves its events in the exchange's bounded queue (nothing is copied ahead of it), and learns
/// with ResourceExhausted that it was dropped for falling behind.
struct Subscribed {
    /// None once the stream has ended.
    subscription: Option<Subscription>,
    filter: Filter,
    /// The daemon is shutting down: the stream ends so the server can drain.
    closed: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Stream for Subscribed {
    type Item = Result<Envelope, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.closed.as_mut().poll(cx).is_ready() {
            self.subscription = None;
        }
        let this = &mut *self;
        let Some(sub) = this.subscription.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match sub.poll_recv(cx) {
                Poll::Ready(Some(env)) if matches(&this.filter, &env) => {
                    return Poll::Ready(Some(Ok(Envelope::clone(&env))));
                }
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) => {
                    let end = sub
                        .overrun()
                        .then(|| Err(Status::from(sub.overrun_error())));
                    // Dropping the subscription frees whatever it still held.
                    this.subscription = None;
                    return Poll::Ready(end);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
