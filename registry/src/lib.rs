//! berth's OCI distribution client: references, resolve, verified fetch, push, registry auth
//! and containerd's hosts.toml. It speaks HTTP to registries and hands the caller verified byte
//! streams and parsed manifests; storing them is the caller's business.
//!
//! **Invariant:** no gRPC, no berthd types (metadata, content store): the Transfer service
//! drives this crate, never the other way round.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod hosts;
pub mod http;
pub mod manifest;
pub mod reference;
pub mod verify;

pub use client::{
    BlobSource, Catalog, Client, ClientConfig, Limits, PulledManifest, PushOptions, PushOutcome,
};
pub use credentials::{
    Anonymous, Chain, CredentialProvider, Credentials, DockerConfig, LoginStore, StaticCredentials,
};
pub use error::Error;
pub use hosts::{Capabilities, HostsConfig, RegistryHost, TlsSettings};
pub use http::HttpClients;
pub use manifest::{Descriptor, Document, Index, Manifest, Platform};
pub use reference::Reference;
pub use verify::{sha256_digest, BlobReader, Digester, Resume};

#[cfg(test)]
mod parser_smoke {
    //! Until the fuzz targets exist: the parsers a registry or a caller feeds, run over many
    //! pseudo-random inputs made of the characters that matter to them, must never panic.

    fn inputs(alphabet: &[&str], count: usize) -> Vec<String> {
        // A fixed xorshift, so a failure reproduces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..count)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 40) as usize;
                (0..len)
                    .map(|i| {
                        let k = (x.rotate_left(i as u32 * 5) % alphabet.len() as u64) as usize;
                        alphabet[k]
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn challenges_never_panic() {
        let alphabet = [
            "Bearer", "Basic", " ", ",", "=", "\"", "\\", "realm", "a", "é", "\t", "==",
        ];
        for s in inputs(&alphabet, 20_000) {
            let _ = crate::auth::parse_challenges(&s);
        }
    }

    #[test]
    fn references_never_panic() {
        let alphabet = [
            "a", "/", ":", "@", "sha256:", ".", "_", "-", "[", "]", "::1", "5000", "A", "é", "0",
        ];
        for s in inputs(&alphabet, 20_000) {
            if let Ok(r) = crate::Reference::parse(&s) {
                // What parses prints back to something that parses to the same.
                let again = crate::Reference::parse(&r.to_string()).expect(&s);
                assert_eq!(again, r, "{s}");
            }
        }
    }

    #[test]
    fn documents_never_panic() {
        let alphabet = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"schemaVersion\"",
            "2",
            "1",
            "\"manifests\"",
            "\"layers\"",
            "\"config\"",
            "\"mediaType\"",
            "\"digest\"",
            "\"size\"",
            "null",
        ];
        for s in inputs(&alphabet, 20_000) {
            for mt in [
                "",
                crate::manifest::OCI_INDEX,
                crate::manifest::DOCKER_MANIFEST,
            ] {
                let _ = crate::manifest::parse_document("x", mt, s.as_bytes(), 8);
            }
        }
    }
}
