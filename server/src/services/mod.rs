//! The gRPC layer: one thin module per containerd service. A handler reads the namespace, validates,
//! calls the domain (metadata, content, events) and lets `Error -> Status` map the failure.

pub mod containers;
pub mod containers_list;
pub mod content;
pub mod diff;
pub mod events;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod networks;
pub mod not_served;
pub mod snapshots;
pub mod streaming;
pub mod tasks;
pub mod transfer;
pub mod version;
pub mod volumes;

use crate::events::Exchange;
use crate::snapshots::Snapshotters;
use berth_content::ContentStore;
use berth_errdefs::{Error, Result};
use berth_metadata::Metadata;
use std::sync::Arc;
use tonic::Request;

use berth_api::{LEASE_HEADER, NAMESPACE_HEADER};

/// What every service shares.
pub struct State {
    pub meta: Arc<Metadata>,
    pub content: Arc<ContentStore>,
    pub events: Exchange,
    pub snapshotters: Snapshotters,
    pub gc: Arc<crate::controllers::gc::Collector>,
}

/// The namespace a call acts in, from the `containerd-namespace` header; required like in containerd.
pub fn namespace<T>(req: &Request<T>) -> Result<String> {
    let ns = match req.metadata().get(NAMESPACE_HEADER) {
        // containerd treats an empty header like a missing one.
        None => "",
        Some(v) => v
            .to_str()
            .map_err(|_| Error::invalid("containerd-namespace header is not valid ASCII"))?,
    };
    if ns.is_empty() {
        return Err(Error::precondition(
            "namespace is required: set the containerd-namespace gRPC metadata header (ctr -n NAME)",
        ));
    }
    berth_metadata::validate::identifier("namespace", ns)?;
    Ok(ns.to_string())
}

/// The lease the client holds for this call, if any (`containerd-lease` header).
pub fn lease<T>(req: &Request<T>) -> Result<Option<String>> {
    match req.metadata().get(LEASE_HEADER) {
        None => Ok(None),
        Some(v) => Ok(Some(
            v.to_str()
                .map_err(|_| Error::invalid("containerd-lease header is not valid ASCII"))?
                .to_string(),
        )),
    }
}

/// Field-mask paths of an optional mask.
pub fn mask_paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.map(|m| m.paths).unwrap_or_default()
}

pub type RpcResult<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

/// After a deletion: collect now when the client asked to wait (`sync`), else soon.
pub async fn collect_garbage(state: &State, sync: bool) -> Result<()> {
    if sync {
        state.gc.collect().await?;
    } else {
        state.gc.schedule();
    }
    Ok(())
}

pub fn reply<T>(t: T) -> RpcResult<T> {
    Ok(tonic::Response::new(t))
}
