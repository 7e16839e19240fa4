//! The services containerd 2 added that berthd does not serve yet (sandbox store and
//! controller, mounts). Each answers every call with
//! Unimplemented and a message naming what is missing and what to do instead, where tonic would
//! answer an unknown service with an empty message. One entry per service in `NOT_SERVED`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture};
use tonic::server::NamedService;

/// How long an answer waits for the client's first message (see `answer`).
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(1);

/// Declares one unit service per (type, gRPC service name, message).
macro_rules! not_served {
    ($($ty:ident => $name:literal, $msg:literal;)*) => {
        $(
            #[derive(Clone, Copy, Default)]
            pub struct $ty;

            impl NamedService for $ty {
                const NAME: &'static str = $name;
            }

            impl tower::Service<http::Request<Body>> for $ty {
                type Response = http::Response<Body>;
                type Error = Infallible;
                type Future = BoxFuture<Self::Response, Infallible>;

                fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                    Poll::Ready(Ok(()))
                }

                fn call(&mut self, req: http::Request<Body>) -> Self::Future {
                    Box::pin(answer(req, $name, $msg))
                }
            }
        )*

        /// The names of the services answered here (for the tests and the docs).
        pub const NOT_SERVED: &[&str] = &[$($name),*];
    };
}

not_served! {
    SandboxStore => "containerd.services.sandbox.v1.Store",
        "sandbox records come with the sandbox work; containers carry their `sandbox` field already";
    SandboxController => "containerd.services.sandbox.v1.Controller",
        "pod sandboxes come with the sandbox work; run containers as tasks";
    Mounts => "containerd.services.mounts.v1.Mounts",
        "the mount manager comes with its own work; snapshotters return mounts as in containerd 1.x";
}

/// Answers once the client's first message (or the end of its request) has arrived, within a
/// bound. A streaming client such as ctr 2.x's `images pull` sends on the Streaming service before
/// it reads: answered sooner, the stream is already closed when it sends, and grpc-go reports a
/// bare `EOF` instead of the status and its reason.
async fn answer(
    req: http::Request<Body>,
    service: &'static str,
    why: &'static str,
) -> Result<http::Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut body = req.into_body();
    let first =
        std::future::poll_fn(|cx| tonic::codegen::Body::poll_frame(Pin::new(&mut body), cx));
    let _ = tokio::time::timeout(FIRST_MESSAGE_WAIT, first).await;
    Ok(unimplemented(&path, service, why))
}

fn unimplemented(path: &str, service: &str, why: &str) -> http::Response<Body> {
    tonic::Status::unimplemented(format!(
        "{service} is not served yet by berthd ({path}): {why}"
    ))
    .into_http()
}
