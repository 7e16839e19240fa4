//! berth.services.networks.v1.Networks (berth's own extension) over `network::Networking`.
//! Networks are host-wide: no namespace header is needed or read.

use super::{reply, RpcResult};
use crate::network::Networking;
use berth_api::berth::services::networks::v1::{networks_server::Networks, *};
use berth_errdefs::Error;
use std::sync::Arc;

pub struct NetworksService {
    pub network: Arc<Networking>,
}

fn api_network(n: berth_net::Network) -> Network {
    Network {
        name: n.name,
        id: n.id,
        subnets: n.subnets.iter().map(ToString::to_string).collect(),
        gateway: n.gateway.unwrap_or_default(),
        bridge: n.bridge.unwrap_or_default(),
        labels: n.labels.into_iter().collect(),
        is_default: n.is_default,
        managed: n.managed,
        config: serde_json::to_string_pretty(&n.config.raw).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Networks for NetworksService {
    async fn create(
        &self,
        req: tonic::Request<CreateNetworkRequest>,
    ) -> RpcResult<CreateNetworkResponse> {
        let r = req.into_inner();
        let subnet = if r.subnet.is_empty() {
            None
        } else {
            Some(r.subnet.parse::<berth_net::Subnet>().map_err(Error::from)?)
        };
        let n = self
            .network
            .create_network(r.name, subnet, r.labels.into_iter().collect())
            .await?;
        reply(CreateNetworkResponse {
            network: Some(api_network(n)),
        })
    }

    async fn list(
        &self,
        _req: tonic::Request<ListNetworksRequest>,
    ) -> RpcResult<ListNetworksResponse> {
        let networks = self.network.list_networks().await?;
        reply(ListNetworksResponse {
            networks: networks.into_iter().map(api_network).collect(),
        })
    }

    async fn get(&self, req: tonic::Request<GetNetworkRequest>) -> RpcResult<GetNetworkResponse> {
        let n = self.network.get_network(req.into_inner().name).await?;
        reply(GetNetworkResponse {
            network: Some(api_network(n)),
        })
    }

    async fn delete(&self, req: tonic::Request<DeleteNetworkRequest>) -> RpcResult<()> {
        self.network.delete_network(req.into_inner().name).await?;
        reply(())
    }
}
