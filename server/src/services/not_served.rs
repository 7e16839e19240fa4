//! The services containerd 2 added that berthd does not serve yet. Each answers every call with
//! Unimplemented and a message naming what is missing and what to do instead, where tonic would
//! answer an unknown service with an empty message. One entry per service in `NOT_SERVED`.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

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
                type Future = Ready<Result<Self::Response, Infallible>>;

                fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                    Poll::Ready(Ok(()))
                }

                fn call(&mut self, req: http::Request<Body>) -> Self::Future {
                    ready(Ok(unimplemented(req.uri().path(), $name, $msg)))
                }
            }
        )*

        /// The names of the services answered here (for the tests and the docs).
        pub const NOT_SERVED: &[&str] = &[$($name),*];
    };
}

not_served! {
    Transfer => "containerd.services.transfer.v1.Transfer",
        "pull/push/import/export through the daemon come with the transfer work; \
         use the client-side path (`ctr --local`, or containerd's client Pull/Push)";
    Streaming => "containerd.services.streaming.v1.Streaming",
        "the streams of the transfer service (ctr 2.x opens one for `images pull` progress) \
         come with the transfer work; use `ctr images pull --local`";
    SandboxStore => "containerd.services.sandbox.v1.Store",
        "sandbox records come with the sandbox work; containers carry their `sandbox` field already";
    SandboxController => "containerd.services.sandbox.v1.Controller",
        "pod sandboxes come with the sandbox work; run containers as tasks";
    Mounts => "containerd.services.mounts.v1.Mounts",
        "the mount manager comes with its own work; snapshotters return mounts as in containerd 1.x";
}

fn unimplemented(path: &str, service: &str, why: &str) -> http::Response<Body> {
    tonic::Status::unimplemented(format!(
        "{service} is not served yet by berthd ({path}): {why}"
    ))
    .into_http()
}
