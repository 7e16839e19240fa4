//! reqwest clients, built once per TLS setup and shared by every registry [`Client`] made with
//! the same [`HttpClients`]. berthd makes a `Client` per pull; a reqwest client built per pull
//! loaded the host's root certificates each time (2-3 ms here) and began with no idle
//! connection, so every pull also paid a new TCP (and TLS) handshake. The key holds the bytes
//! of the CA and client-certificate files, read at each pull, beside their paths: a certificate
//! rotated on disk gets a client of its own, as hosts.toml itself is read afresh.
//!
//! [`Client`]: crate::Client

use crate::error::Error;
use crate::hosts::TlsSettings;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// More distinct TLS setups than any daemon sees, unless certificates keep changing: then the
/// cache starts over rather than growing.
const MAX_CLIENTS: usize = 32;

/// A cache of reqwest clients; cheap to clone, clones share it.
#[derive(Clone, Default)]
pub struct HttpClients {
    clients: Arc<Mutex<HashMap<Key, reqwest::Client>>>,
}

/// Everything a built client depends on.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    tls: TlsSettings,
    ca_pems: Vec<Vec<u8>>,
    /// The first client certificate with its key, as one PEM.
    identity_pem: Option<Vec<u8>>,
    connect_timeout: Duration,
    user_agent: String,
}

impl HttpClients {
    /// The client for `tls`, built on first use.
    pub(crate) fn get(
        &self,
        tls: &TlsSettings,
        connect_timeout: Duration,
        user_agent: &str,
    ) -> Result<reqwest::Client, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::io(format!("read {}", p.display()), e))
        };
        let ca_pems = tls
            .ca
            .iter()
            .map(|p| read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let identity_pem = match tls.client.first() {
            None => None,
            Some((cert, key)) => {
                let mut pem = read(cert)?;
                if let Some(k) = key {
                    pem.push(b'\n');
                    pem.extend(read(k)?);
                }
                Some(pem)
            }
        };
        let key = Key {
            tls: tls.clone(),
            ca_pems,
            identity_pem,
            connect_timeout,
            user_agent: user_agent.to_string(),
        };
        if let Some(c) = self.lock().get(&key) {
            return Ok(c.clone());
        }
        let client = build(&key)?;
        let mut clients = self.lock();
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, reqwest::Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

fn build(key: &Key) -> Result<reqwest::Client, Error> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(key.connect_timeout)
        .user_agent(key.user_agent.clone())
        .danger_accept_invalid_certs(key.tls.skip_verify);
    for (path, pem) in key.tls.ca.iter().zip(&key.ca_pems) {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::HostsConfig {
            path: path.display().to_string(),
            message: format!("CA certificates: {e}"),
        })?;
        if certs.is_empty() {
            return Err(Error::HostsConfig {
                path: path.display().to_string(),
                message: "no PEM certificate in the CA file".into(),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let (Some(pem), Some((cert, _))) = (&key.identity_pem, key.tls.client.first()) {
        let id = reqwest::Identity::from_pem(pem).map_err(|e| Error::HostsConfig {
            path: cert.display().to_string(),
            message: format!("client certificate: {e}"),
        })?;
        b = b.identity(id);
    }
    b.build().map_err(|e| Error::Http {
        url: "(client setup)".into(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// The `n`th certificate of the host's bundle (Debian's ca-certificates), as one PEM.
    fn system_certificate(n: usize) -> String {
        let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
            .expect("the host's CA bundle (ca-certificates)");
        let end = "-----END CERTIFICATE-----";
        let pem = bundle
            .split_inclusive(end)
            .nth(n)
            .expect("a certificate")
            .trim();
        format!("{pem}\n")
    }

    #[test]
    fn one_client_per_tls_setup_and_a_new_one_when_a_certificate_changes() {
        let dir = tempfile::tempdir().unwrap();
        let http = HttpClients::default();
        let plain = TlsSettings::default();
        http.get(&plain, TIMEOUT, "berth").unwrap();
        http.get(&plain, TIMEOUT, "berth").unwrap();
        assert_eq!(http.len(), 1, "the same setup built twice");

        let ca = dir.path().join("ca.pem");
        let with_ca = TlsSettings {
            ca: vec![ca.clone()],
            ..TlsSettings::default()
        };
        std::fs::write(&ca, system_certificate(0)).unwrap();
        http.get(&with_ca, TIMEOUT, "berth").unwrap();
        http.get(&with_ca, TIMEOUT, "berth").unwrap();
        assert_eq!(http.len(), 2);
        // Rotated on disk under the same path: built again with the new certificate.
        std::fs::write(&ca, system_certificate(1)).unwrap();
        http.get(&with_ca, TIMEOUT, "berth").unwrap();
        assert_eq!(http.len(), 3, "a rotated CA file kept its old client");

        std::fs::write(&ca, "not a certificate").unwrap();
        let err = http.get(&with_ca, TIMEOUT, "berth").unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert_eq!(http.len(), 3, "a failed build is cached");

        let missing = TlsSettings {
            ca: vec![dir.path().join("gone.pem")],
            ..TlsSettings::default()
        };
        let err = http.get(&missing, TIMEOUT, "berth").unwrap_err();
        assert!(err.to_string().contains("gone.pem"), "{err}");

        let skip = TlsSettings {
            skip_verify: true,
            ..TlsSettings::default()
        };
        http.get(&skip, TIMEOUT, "berth").unwrap();
        http.get(&plain, TIMEOUT, "another agent").unwrap();
        assert_eq!(http.len(), 5);
    }
}
