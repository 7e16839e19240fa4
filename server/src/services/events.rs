use super::{namespace, reply, RpcResult, State};
use crate::events::{matches, validate_topic};
use berth_api::containerd::services::events::v1::{events_server::Events, *};
use berth_errdefs::Error;
use berth_metadata::filters::Filter;
use berth_metadata::now;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
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
        self.0.events.forward(Envelope {
            timestamp: Some(now()),
            namespace: ns,
            topic: req.topic,
            event: Some(event),
        });
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
        let mut rx = self.0.events.subscribe();
        let closed = self.0.events.closed();
        let stream = async_stream(move |tx| async move {
            tokio::pin!(closed);
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = tx.closed() => return, // the subscriber went away
                    _ = &mut closed => return, // the daemon is shutting down
                };
                match next {
                    Ok(env) if matches(&filter, &env) => {
                        if tx.send(Ok(Envelope::clone(&env))).await.is_err() {
                            return; // the subscriber went away
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event subscriber too slow, events dropped");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A response stream fed by a task that ends when the client disconnects.
fn async_stream<F, Fut>(f: F) -> EnvelopeStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Envelope, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
