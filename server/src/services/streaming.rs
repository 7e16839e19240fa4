//! Streaming service: a client opens a stream, names it in its first message (`StreamInit`),
//! and a later Transfer call refers to it by that id. The stream lives in `crate::streams`
//! until a transfer takes it; the client's messages are pumped in, the taker's pumped out, and
//! the RPC ends when the taker drops the stream (or, untaken, when the client goes away).

use crate::streams::{Streams, STREAM_BUFFER};
use berth_api::containerd::services::streaming::v1::{streaming_server::Streaming, StreamInit};
use berth_api::unpack_any;
use berth_errdefs::Error;
use prost_types::Any;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct StreamingService {
    pub streams: Streams,
}

/// What containerd answers a StreamInit with once the stream is registered.
const EMPTY_TYPE_URL: &str = "google.protobuf.Empty";

/// The response stream; dropping it (the client went away, or the stream ended) tells the
/// pump to stop and forget the registration.
pub struct Outbound {
    inner: ReceiverStream<Any>,
    _gone: oneshot::Sender<()>,
}

impl Stream for Outbound {
    type Item = Result<Any, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|m| m.map(Ok))
    }
}

#[tonic::async_trait]
impl Streaming for StreamingService {
    type StreamStream = Outbound;

    async fn stream(
        &self,
        req: Request<tonic::Streaming<Any>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Error::invalid("a stream must start with a StreamInit"))?;
        let init: StreamInit = unpack_any(&first)
            .map_err(|e| Error::invalid(format!("a stream must start with a StreamInit: {e}")))?;
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let (in_tx, in_rx) = mpsc::channel(STREAM_BUFFER);
        let ack = out_tx.clone();
        let registration = self.streams.register(&init.id, out_tx, in_rx)?;
        tracing::debug!(stream = %init.id, "stream registered");
        // Queued before the taker can send anything: the client waits for it.
        let _ = ack
            .send(Any {
                type_url: EMPTY_TYPE_URL.into(),
                value: Vec::new(),
            })
            .await;
        drop(ack);
        let (gone_tx, mut gone_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _registration = registration;
            let mut in_tx = Some(in_tx);
            loop {
                tokio::select! {
                    _ = &mut gone_rx => break,
                    msg = inbound.message(), if in_tx.is_some() => match msg {
                        Ok(Some(m)) => {
                            if let Some(tx) = &in_tx {
                                // A taker that stopped reading drops what follows.
                                let _ = tx.send(m).await;
                            }
                        }
                        // The client ended its side: the taker sees the end after the rest.
                        Ok(None) => in_tx = None,
                        Err(_) => break,
                    },
                }
            }
        });
        Ok(Response::new(Outbound {
            inner: ReceiverStream::new(out_rx),
            _gone: gone_tx,
        }))
    }
}
