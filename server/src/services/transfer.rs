//! Transfer service: reads the namespace, the lease and the request, and hands them to
//! `crate::transfer`, which does the work; errors map to statuses through berth-errdefs.

use super::{lease, namespace, reply, RpcResult};
use crate::transfer::{Request as TransferRequestDomain, Transferrer};
use berth_api::containerd::services::transfer::v1::{transfer_server::Transfer, TransferRequest};
use berth_errdefs::Error;
use std::sync::Arc;
use tonic::Request;

pub struct TransferService(pub Arc<Transferrer>);

#[tonic::async_trait]
impl Transfer for TransferService {
    async fn transfer(&self, req: Request<TransferRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let lease = lease(&req)?;
        let req = req.into_inner();
        let source = req
            .source
            .ok_or_else(|| Error::invalid("transfer source must be set"))?;
        let destination = req
            .destination
            .ok_or_else(|| Error::invalid("transfer destination must be set"))?;
        let progress_stream = req
            .options
            .map(|o| o.progress_stream)
            .filter(|s| !s.is_empty());
        self.0
            .transfer(TransferRequestDomain {
                namespace: ns,
                lease,
                source,
                destination,
                progress_stream,
            })
            .await?;
        reply(())
    }
}
