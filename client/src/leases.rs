//! Leases: what a client creates under one (content, snapshots) is safe from garbage collection
//! until the lease goes. Held for the life of a [`LeaseGuard`] or of a closure ([`Leases::with`]).

use crate::api::services::leases::v1::leases_client::LeasesClient;
use crate::api::services::leases::v1::{CreateRequest, DeleteRequest};
use crate::{Client, Result};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

/// The leases of the client's namespace.
pub struct Leases {
    client: Client,
}

/// A lease that expires on its own after `expire` (so a client that dies leaks nothing for
/// long); [`LeaseGuard::release`] deletes it now. Dropping the guard without releasing it
/// leaves the expiry to do the work.
#[derive(Debug)]
pub struct LeaseGuard {
    client: Client,
    id: String,
}

impl Leases {
    pub(crate) fn new(client: Client) -> Leases {
        Leases { client }
    }

    /// Create a lease that the daemon expires after `expire`.
    pub async fn create(&self, expire: Duration) -> Result<LeaseGuard> {
        let id = format!(
            "berth-{}",
            crate::names::new_id().get(..16).unwrap_or("lease")
        );
        let until = std::time::SystemTime::now() + expire;
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            crate::events::rfc3339(until),
        )]);
        let req = CreateRequest {
            id: id.clone(),
            labels,
        };
        LeasesClient::new(self.client.channel.clone())
            .create(self.client.request(req))
            .await?;
        Ok(LeaseGuard {
            client: self.client.clone(),
            id,
        })
    }

    /// Run `f` with a client whose calls carry a new lease, and delete the lease afterwards
    /// whatever `f` returned.
    pub async fn with<F, Fut, T>(&self, expire: Duration, f: F) -> Result<T>
    where
        F: FnOnce(LeasedClient) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let guard = self.create(expire).await?;
        let result = f(LeasedClient {
            client: self.client.clone(),
            lease: guard.id.clone(),
        })
        .await;
        let released = guard.release().await;
        let value = result?;
        released?;
        Ok(value)
    }
}

impl LeaseGuard {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A request in the guard's namespace that carries the lease.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        crate::with_lease(&self.client.namespace, &self.id, message)
    }

    /// Delete the lease now; what only it held becomes collectable.
    pub async fn release(self) -> Result<()> {
        let req = DeleteRequest {
            id: self.id.clone(),
            sync: false,
        };
        LeasesClient::new(self.client.channel.clone())
            .delete(self.client.request(req))
            .await?;
        Ok(())
    }
}

/// A client and a lease its requests carry.
#[derive(Debug, Clone)]
pub struct LeasedClient {
    pub client: Client,
    pub lease: String,
}

impl LeasedClient {
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        crate::with_lease(&self.client.namespace, &self.lease, message)
    }
}
