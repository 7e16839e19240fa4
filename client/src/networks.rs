//! berthd's named container networks (`berth.services.networks.v1`): create, list, get and
//! delete. Host-wide: the daemon takes no namespace for them.

use crate::{Client, Error, Result};
use berth_api::berth::services::networks::v1::networks_client::NetworksClient;
pub use berth_api::berth::services::networks::v1::Network;
use berth_api::berth::services::networks::v1::{
    CreateNetworkRequest, DeleteNetworkRequest, GetNetworkRequest, ListNetworksRequest,
};
use std::collections::HashMap;

pub struct Networks {
    client: Client,
}

impl Networks {
    pub(crate) fn new(client: Client) -> Networks {
        Networks { client }
    }

    fn api(&self) -> NetworksClient<tonic::transport::Channel> {
        NetworksClient::new(self.client.channel.clone())
    }

    /// Create `name`; `subnet` (CIDR) or one the daemon picks that collides with nothing.
    pub async fn create(
        &self,
        name: &str,
        subnet: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<Network> {
        self.api()
            .create(CreateNetworkRequest {
                name: name.to_string(),
                subnet: subnet.unwrap_or_default().to_string(),
                labels,
            })
            .await?
            .into_inner()
            .network
            .ok_or_else(|| Error::local(tonic::Code::Internal, "create answered no network"))
    }

    /// Every network, the default one included, sorted by name.
    pub async fn list(&self) -> Result<Vec<Network>> {
        let mut all = self
            .api()
            .list(ListNetworksRequest {})
            .await?
            .into_inner()
            .networks;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    pub async fn get(&self, name: &str) -> Result<Network> {
        self.api()
            .get(GetNetworkRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner()
            .network
            .ok_or_else(|| Error::not_found(format!("network {name:?}: not found")))
    }

    /// Delete `name`; the daemon refuses one that containers still use.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.api()
            .delete(DeleteNetworkRequest {
                name: name.to_string(),
            })
            .await?;
        Ok(())
    }
}
