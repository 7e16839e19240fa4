//! Key layout of the metadata store.
//!
//! `meta/…` daemon records; `n/<ns>` namespace records; `o/<ns>/<kind>/<id>` objects of a namespace.
//! Namespace names are identifiers (no `/`), so `o/<ns>/` never prefixes another namespace's keys; ids
//! after the kind may contain anything.

pub const SCHEMA: &[u8] = b"meta/schema";
pub const SERVER_UUID: &[u8] = b"meta/uuid";
pub const NAMESPACES: &[u8] = b"n/";

pub const IMAGES: &str = "images";
pub const CONTAINERS: &str = "containers";
pub const LEASES: &str = "leases";
pub const LEASE_RESOURCES: &str = "lease-resources";
pub const CONTENT: &str = "content";
/// Per container, what background loops read of it (`ContainerSummary`): written with the record.
pub const CONTAINER_ROOTS: &str = "container-roots";
/// Present once every container has its `CONTAINER_ROOTS` entry (stores older than the index get
/// them built at open).
pub const CONTAINER_ROOTS_BUILT: &[u8] = b"meta/container-roots-built";

pub fn namespace(ns: &str) -> Vec<u8> {
    format!("n/{ns}").into_bytes()
}

pub fn namespace_objects(ns: &str) -> Vec<u8> {
    format!("o/{ns}/").into_bytes()
}

pub fn objects(ns: &str, kind: &str) -> Vec<u8> {
    format!("o/{ns}/{kind}/").into_bytes()
}

pub fn object(ns: &str, kind: &str, id: &str) -> Vec<u8> {
    format!("o/{ns}/{kind}/{id}").into_bytes()
}

/// Lease resources: `o/<ns>/lease-resources/<lease>\0<type>\0<id>`; lease ids never contain NUL.
pub fn lease_resources(ns: &str, lease: &str) -> Vec<u8> {
    format!("o/{ns}/{LEASE_RESOURCES}/{lease}\0").into_bytes()
}

pub fn lease_resource(ns: &str, lease: &str, kind: &str, id: &str) -> Vec<u8> {
    format!("o/{ns}/{LEASE_RESOURCES}/{lease}\0{kind}\0{id}").into_bytes()
}
