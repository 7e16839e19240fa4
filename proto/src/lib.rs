//! containerd v1 API (wire-compatible with upstream containerd), berth
//! extensions and Kubernetes' CRI (`runtime.v1`), generated from the `.proto`
//! files under `proto/`.
//!
//! Module paths mirror protobuf packages, e.g. `containerd.services.tasks.v1`
//! is [`containerd::services::tasks::v1`]. Every message implements
//! [`prost::Name`]; use [`type_url`] / [`pack_any`] / [`unpack_any`] to build
//! and read `google.protobuf.Any` values the way containerd does (type URL is
//! the bare full name, without a leading `/`).

pub use prost_types;

/// Declares a module that includes one generated file from `OUT_DIR`.
macro_rules! generated {
    ($(#[$meta:meta])* $name:ident => $file:literal) => {
        generated!($(#[$meta])* $name => $file {});
    };
    // A package with subpackages: prost refers to the parent's messages as `super::`.
    ($(#[$meta:meta])* $name:ident => $file:literal { $($inner:tt)* }) => {
        $(#[$meta])*
        #[allow(
            clippy::all,
            clippy::pedantic,
            missing_docs,
            rustdoc::all,
            unused_qualifications
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
            $($inner)*
        }
    };
}

/// The gRPC metadata header that names the namespace every namespaced call acts in.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC metadata header naming the lease a call's new resources join.
pub const LEASE_HEADER: &str = "containerd-lease";
/// berth's own header on Tasks.Create: with the value `true` the task is started too, by one
/// runtime command (`runc run --detach`) instead of Create's `runc create` and Start's `runc
/// start`; /tasks/create and /tasks/start are published as for the two calls. containerd
/// ignores the header (its task is only created), so a client sends it only to berthd.
pub const START_ON_CREATE_HEADER: &str = "berth-start-on-create";

/// Encoded `google.protobuf.FileDescriptorSet` for every file in this crate
/// (including imported well-known types), e.g. for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// Packages `containerd.*`.
pub mod containerd {
    generated!(
        /// `containerd.types`: Descriptor, Mount, Platform, Metric.
        types => "containerd.types.rs" {
            generated!(
                /// `containerd.types.transfer`: the Transfer service's sources,
                /// destinations, progress and stream payloads.
                transfer => "containerd.types.transfer.rs"
            );
        }
    );

    /// `containerd.v1.*`.
    pub mod v1 {
        generated!(
            /// `containerd.v1.types`: task Process, Status, ProcessInfo.
            types => "containerd.v1.types.rs"
        );
    }

    generated!(
        /// `containerd.events`: container, content, namespace, snapshot and
        /// task events.
        ///
        /// Image events are NOT here: upstream declares them in package
        /// `containerd.services.images.v1` (see
        /// [`crate::containerd::services::images::v1::ImageCreate`]).
        events => "containerd.events.rs"
    );

    /// Packages `containerd.runc.*`.
    pub mod runc {
        generated!(
            /// `containerd.runc.v1`: runc shim Options, CheckpointOptions,
            /// ProcessDetails.
            v1 => "containerd.runc.v1.rs"
        );
    }

    /// Packages `containerd.services.*`: gRPC services.
    pub mod services {
        /// `containerd.services.containers.*`.
        pub mod containers {
            generated!(v1 => "containerd.services.containers.v1.rs");
        }
        /// `containerd.services.content.*`.
        pub mod content {
            generated!(v1 => "containerd.services.content.v1.rs");
        }
        /// `containerd.services.diff.*`.
        pub mod diff {
            generated!(v1 => "containerd.services.diff.v1.rs");
        }
        /// `containerd.services.events.*`.
        pub mod events {
            generated!(v1 => "containerd.services.events.v1.rs");
            /// `containerd.services.events.ttrpc.*` (shim -> daemon forwarding).
            pub mod ttrpc {
                generated!(v1 => "containerd.services.events.ttrpc.v1.rs");
            }
        }
        /// `containerd.services.images.*`.
        pub mod images {
            generated!(
                /// Images service plus the ImageCreate/ImageUpdate/ImageDelete
                /// events, which upstream declares in this package.
                v1 => "containerd.services.images.v1.rs"
            );
        }
        /// `containerd.services.introspection.*`.
        pub mod introspection {
            generated!(v1 => "containerd.services.introspection.v1.rs");
        }
        /// `containerd.services.leases.*`.
        pub mod leases {
            generated!(v1 => "containerd.services.leases.v1.rs");
        }
        /// `containerd.services.namespaces.*`.
        pub mod namespaces {
            generated!(v1 => "containerd.services.namespaces.v1.rs");
        }
        /// `containerd.services.snapshots.*`.
        pub mod snapshots {
            generated!(v1 => "containerd.services.snapshots.v1.rs");
        }
        /// `containerd.services.tasks.*`.
        pub mod tasks {
            generated!(v1 => "containerd.services.tasks.v1.rs");
        }
        /// `containerd.services.streaming.*`.
        pub mod streaming {
            generated!(v1 => "containerd.services.streaming.v1.rs");
        }
        /// `containerd.services.transfer.*`.
        pub mod transfer {
            generated!(v1 => "containerd.services.transfer.v1.rs");
        }
        /// `containerd.services.version.*`.
        pub mod version {
            generated!(v1 => "containerd.services.version.v1.rs");
        }
    }
}

/// Packages `io.containerd.*`: payloads containerd's runtimes put in `Any`s.
pub mod io {
    /// Packages `io.containerd.*` (nesting mirrors the protobuf package).
    pub mod containerd {
        /// Packages `io.containerd.cgroups.*`: task metrics.
        pub mod cgroups {
            generated!(
                /// `io.containerd.cgroups.v1`: metrics of a task whose
                /// controllers are in cgroup v1 (pure v1 or hybrid hosts).
                v1 => "io.containerd.cgroups.v1.rs"
            );
            generated!(
                /// `io.containerd.cgroups.v2`: metrics of a task in the
                /// unified hierarchy.
                v2 => "io.containerd.cgroups.v2.rs"
            );
        }
    }
}

/// Packages `google.*` not covered by `prost_types`.
pub mod google {
    generated!(
        /// `google.rpc`: the `Status` error model.
        rpc => "google.rpc.rs"
    );
}

/// Package `runtime.*`: Kubernetes' Container Runtime Interface (k8s.io/cri-api).
pub mod runtime {
    generated!(
        /// `runtime.v1`: the CRI's RuntimeService and ImageService, the API the
        /// kubelet, crictl and critest speak to a node's runtime.
        v1 => "runtime.v1.rs"
    );
}

/// Packages `berth.*`: berth-specific extensions.
pub mod berth {
    generated!(
        /// `berth.v1`.
        v1 => "berth.v1.rs"
    );

    /// Packages `berth.services.*`: berth's own gRPC services.
    pub mod services {
        /// `berth.services.networks.*`.
        pub mod networks {
            generated!(
                /// `berth.services.networks.v1`: named container networks (CNI).
                v1 => "berth.services.networks.v1.rs"
            );
        }

        /// `berth.services.volumes.*`.
        pub mod volumes {
            generated!(
                /// `berth.services.volumes.v1`: named volumes.
                v1 => "berth.services.volumes.v1.rs"
            );
        }
    }
}

/// Type URL containerd uses in `google.protobuf.Any` for `T`: the message's
/// full protobuf name with no leading `/` (e.g. `containerd.events.TaskExit`).
///
/// Do not use `T::type_url()` / `prost_types::Any::from_msg` for containerd
/// events: those prepend `/`.
pub fn type_url<T: prost::Name>() -> String {
    T::full_name()
}

/// Encodes `msg` into an `Any` with a containerd-style type URL.
pub fn pack_any<T: prost::Name>(msg: &T) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url::<T>(),
        value: msg.encode_to_vec(),
    }
}

/// Error returned by [`unpack_any`].
#[derive(Debug)]
pub enum UnpackError {
    /// The `Any` holds a different message type.
    TypeMismatch {
        /// Full name of the requested type.
        expected: String,
        /// Type URL found in the `Any`.
        actual: String,
    },
    /// The payload failed to decode.
    Decode(prost::DecodeError),
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TypeMismatch { expected, actual } => {
                write!(f, "Any type URL {actual:?} does not match {expected}")
            }
            Self::Decode(e) => write!(f, "decoding Any payload: {e}"),
        }
    }
}

impl std::error::Error for UnpackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Decode(e) => Some(e),
            Self::TypeMismatch { .. } => None,
        }
    }
}

/// Decodes an `Any` into `T` if its type URL names `T`. Accepts the bare
/// full name (containerd style) as well as `/name` and `domain/name` forms.
pub fn unpack_any<T: prost::Name + Default>(any: &prost_types::Any) -> Result<T, UnpackError> {
    let name = any
        .type_url
        .rsplit_once('/')
        .map_or(any.type_url.as_str(), |(_, n)| n);
    let expected = T::full_name();
    if name != expected {
        return Err(UnpackError::TypeMismatch {
            expected,
            actual: any.type_url.clone(),
        });
    }
    T::decode(any.value.as_slice()).map_err(UnpackError::Decode)
}

#[cfg(test)]
mod tests {
    use super::containerd::events::ContainerCreate;
    use prost::{Message, Name};

    #[test]
    fn container_create_full_name_and_roundtrip() {
        let ev = ContainerCreate {
            id: "c1".into(),
            image: "docker.io/library/alpine:latest".into(),
            runtime: Some(super::containerd::events::container_create::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
        };
        let buf = ev.encode_to_vec();
        assert!(!buf.is_empty());
        assert_eq!(ContainerCreate::decode(buf.as_slice()).unwrap(), ev);
        assert_eq!(
            ContainerCreate::full_name(),
            "containerd.events.ContainerCreate"
        );

        let any = super::pack_any(&ev);
        assert_eq!(any.type_url, "containerd.events.ContainerCreate");
        assert_eq!(super::unpack_any::<ContainerCreate>(&any).unwrap(), ev);
    }

    #[test]
    fn file_descriptor_set_decodes() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        assert!(fds
            .file
            .iter()
            .any(|f| f.package() == "containerd.services.tasks.v1"));
    }
}
