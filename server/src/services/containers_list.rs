//! Unary Containers.List without re-encoding. Container records are stored as the API's own
//! protobuf encoding, and a `ListContainersResponse` is nothing but those encodings, each behind
//! field 1's tag and length. So an unfiltered List copies the stored bytes into the response
//! instead of decoding 10,000 records only to encode them again; a filtered one takes the
//! ordinary path. The generated server fixes List's response type, so this sits in front of it
//! and answers that one method; every other method goes to the generated server.

use super::{namespace, State};
use berth_api::containerd::services::containers::v1::{
    ListContainersRequest, ListContainersResponse,
};
use berth_errdefs::Result;
use berth_metadata::filters::Filter;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

const LIST_PATH: &str = "/containerd.services.containers.v1.Containers/List";

/// A message already in protobuf encoding: written as is.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PreEncoded(pub Vec<u8>);

impl prost::Message for PreEncoded {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        _tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> std::result::Result<(), prost::DecodeError> {
        // Only ever encoded; a decode skips everything.
        prost::encoding::skip_field(wire_type, _tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The List response for `ns` as bytes: stored records verbatim when nothing is filtered.
fn list_response(state: &State, ns: &str, filter: &Filter) -> Result<PreEncoded> {
    if filter.matches_all() {
        return Ok(PreEncoded(state.meta.containers_response_bytes(ns)?));
    }
    let containers = state.meta.list_containers(ns, filter)?;
    Ok(PreEncoded(prost::Message::encode_to_vec(
        &ListContainersResponse { containers },
    )))
}

#[derive(Clone)]
struct RawList(Arc<State>);

impl tonic::server::UnaryService<ListContainersRequest> for RawList {
    type Response = PreEncoded;
    type Future = Pin<
        Box<
            dyn Future<Output = std::result::Result<tonic::Response<PreEncoded>, tonic::Status>>
                + Send,
        >,
    >;

    fn call(&mut self, req: tonic::Request<ListContainersRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let ns = namespace(&req)?;
            let filter = Filter::parse_all(&req.get_ref().filters)?;
            let body =
                crate::blocking::blocking(move || list_response(&state, &ns, &filter)).await?;
            Ok(tonic::Response::new(body))
        })
    }
}

/// The Containers service with List answered from stored bytes.
#[derive(Clone)]
pub struct WithRawList<S> {
    pub inner: S,
    pub state: Arc<State>,
    pub max_decoding: usize,
    pub max_encoding: usize,
}

impl<S> NamedService for WithRawList<S> {
    const NAME: &'static str = "containerd.services.containers.v1.Containers";
}

impl<S> tower::Service<http::Request<Body>> for WithRawList<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != LIST_PATH {
            return Box::pin(self.inner.call(req));
        }
        let svc = RawList(self.state.clone());
        let (max_decoding, max_encoding) = (self.max_decoding, self.max_encoding);
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<PreEncoded, ListContainersRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(max_decoding), Some(max_encoding));
            Ok(grpc.unary(svc, req).await)
        })
    }
}
