//! Services of containerd's API that later issues bring. Until then every method answers
//! Unimplemented with a message that says where the capability is coming, rather than tonic's bare
//! "unknown service".

use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

macro_rules! not_yet {
    ($ty:ident, $name:literal, $why:literal) => {
        #[derive(Clone, Default)]
        pub struct $ty;

        impl NamedService for $ty {
            const NAME: &'static str = $name;
        }

        impl tower::Service<http::Request<Body>> for $ty {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: http::Request<Body>) -> Self::Future {
                let status =
                    tonic::Status::unimplemented(format!("{}: {}", req.uri().path(), $why));
                std::future::ready(Ok(status.into_http()))
            }
        }
    };
}

not_yet!(
    TasksNotYet,
    "containerd.services.tasks.v1.Tasks",
    "berthd does not run tasks yet; the shim and runc support come with the tasks issue"
);
