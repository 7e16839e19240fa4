//! Credentials for a transfer's registry hosts: first the client's auth stream (an
//! `AuthRequest` out, an `AuthResponse` back, as containerd's transfer client answers), then
//! docker's config.json and `berth login`'s store where configured. Secrets are never logged.

use crate::streams::Stream;
use berth_api::containerd::types::transfer::{AuthRequest, AuthResponse, AuthType};
use berth_api::{pack_any, unpack_any};
use berth_registry::credentials::{Chain, CredentialFuture};
use berth_registry::{CredentialProvider, Credentials, DockerConfig, LoginStore};
use std::sync::Arc;
use tokio::sync::Mutex;

use super::Settings;

/// Asks the client over its auth stream, one question at a time.
struct StreamCredentials {
    stream: Mutex<Stream>,
    reference: String,
}

impl CredentialProvider for StreamCredentials {
    fn credentials<'a>(&'a self, host: &'a str) -> CredentialFuture<'a> {
        Box::pin(async move {
            let mut stream = self.stream.lock().await;
            let ask = AuthRequest {
                host: host.to_string(),
                reference: self.reference.clone(),
                wwwauthenticate: Vec::new(),
            };
            let unanswered = |why: &str| {
                berth_registry::Error::Credentials(format!(
                    "the client's auth stream {why} before answering for {host}"
                ))
            };
            stream
                .send(pack_any(&ask))
                .await
                .map_err(|_| unanswered("closed"))?;
            let answer = stream.recv().await.ok_or_else(|| unanswered("ended"))?;
            let answer: AuthResponse = unpack_any(&answer).map_err(|e| {
                berth_registry::Error::Credentials(format!("auth stream answer: {e}"))
            })?;
            Ok(match AuthType::try_from(answer.auth_type) {
                Ok(AuthType::Credentials) if !answer.username.is_empty() => {
                    Some(Credentials::Basic {
                        username: answer.username,
                        password: answer.secret,
                    })
                }
                Ok(AuthType::Refresh) if !answer.secret.is_empty() => {
                    Some(Credentials::IdentityToken {
                        username: answer.username,
                        token: answer.secret,
                    })
                }
                Ok(AuthType::Header) => {
                    tracing::warn!(%host, "the client answered with a raw Authorization header, which berthd does not send; trying other credentials");
                    None
                }
                _ => None,
            })
        })
    }
}

/// The providers for one transfer, in order.
pub fn provider(
    settings: &Settings,
    auth_stream: Option<Stream>,
    reference: &str,
) -> Arc<dyn CredentialProvider> {
    let mut chain: Vec<Box<dyn CredentialProvider>> = Vec::new();
    if let Some(stream) = auth_stream {
        chain.push(Box::new(StreamCredentials {
            stream: Mutex::new(stream),
            reference: reference.to_string(),
        }));
    }
    if let Some(path) = &settings.docker_config {
        chain.push(Box::new(DockerConfig::new(path.clone())));
    }
    if let Some(path) = &settings.login_store {
        chain.push(Box::new(LoginStore::new(path.clone())));
    }
    Arc::new(Chain(chain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::{Streams, STREAM_BUFFER};
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn the_auth_stream_is_asked_per_host_and_its_answer_used() {
        let streams = Streams::default();
        let (out_tx, mut to_client) = mpsc::channel(STREAM_BUFFER);
        let (from_client, in_rx) = mpsc::channel(STREAM_BUFFER);
        let _reg = streams.register("creds", out_tx, in_rx).unwrap();
        let settings = Settings {
            config_path: None,
            max_concurrent_downloads: 1,
            max_concurrent_uploads: 1,
            progress_timeout: std::time::Duration::from_secs(1),
            max_manifest_bytes: 1,
            max_layers: 1,
            allow_foreign_urls: false,
            parallel_unpack: true,
            docker_config: None,
            login_store: None,
            default_snapshotter: "native".into(),
        };
        let p = provider(
            &settings,
            Some(streams.take("creds").unwrap()),
            "r.test/x:1",
        );
        // The client side, as containerd's transfer client answers.
        let client = tokio::spawn(async move {
            let ask: AuthRequest = unpack_any(&to_client.recv().await.unwrap()).unwrap();
            assert_eq!(
                (ask.host.as_str(), ask.reference.as_str()),
                ("r.test", "r.test/x:1")
            );
            from_client
                .send(pack_any(&AuthResponse {
                    auth_type: AuthType::Credentials as i32,
                    username: "u".into(),
                    secret: "p".into(),
                    expire_at: None,
                }))
                .await
                .unwrap();
            let _ask: AuthRequest = unpack_any(&to_client.recv().await.unwrap()).unwrap();
            // An empty answer: no credentials for that host.
            from_client
                .send(pack_any(&AuthResponse::default()))
                .await
                .unwrap();
        });
        assert_eq!(
            p.credentials("r.test").await.unwrap(),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(p.credentials("other.test").await.unwrap(), None);
        client.await.unwrap();
    }
}
