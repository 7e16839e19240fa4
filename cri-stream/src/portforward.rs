//! Kubernetes' portforward.k8s.io protocol over SPDY: for each forwarded connection the
//! client opens an error stream and a data stream sharing a `requestID` and `port`; bytes
//! flow on the data stream and a failure is reported as text on the error stream.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinSet;

use crate::spdy::Session;
use crate::{Backend, PortForwardRequest};

pub(crate) async fn serve_spdy(
    mut session: Session,
    req: PortForwardRequest,
    backend: Arc<dyn Backend>,
) {
    let req = Arc::new(req);
    // Error streams wait here for their data stream; client-go opens the error one first.
    let mut errors: HashMap<String, DuplexStream> = HashMap::new();
    let mut tasks = JoinSet::new();
    while let Some(stream) = session.incoming.recv().await {
        let request_id = stream.header("requestid").to_string();
        let port = stream.header("port").parse::<u16>();
        match stream.header("streamtype") {
            "error" => {
                errors.insert(request_id, stream.io);
            }
            "data" => {
                let mut error = errors.remove(&request_id);
                let (backend, req) = (backend.clone(), req.clone());
                let sent = stream.sent;
                let io = stream.io;
                tasks.spawn(async move {
                    let result = match port {
                        Ok(port) if port > 0 => {
                            backend.port_forward(&req, port, Box::new(io)).await
                        }
                        _ => Err(crate::StreamError::Internal(
                            "port header is not a valid port".into(),
                        )),
                    };
                    if let (Err(e), Some(error)) = (result, error.as_mut()) {
                        let msg =
                            format!("error forwarding port to pod {}: {e}", req.pod_sandbox_id);
                        let _ = error.write_all(msg.as_bytes()).await;
                    }
                    drop(error);
                    let _ = sent.await;
                });
            }
            other => tracing::debug!("port-forward stream of unknown type {other:?} ignored"),
        }
        // Forget finished connections as we go so a long session does not accumulate them.
        while tasks.try_join_next().is_some() {}
    }
    // The client is gone: whatever still forwards has no one to talk to.
    tasks.abort_all();
    session.close().await;
}
