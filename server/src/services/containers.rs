use super::{mask_paths, namespace, reply, RpcResult, State};
use berth_api::containerd::events::{container_create, ContainerCreate, ContainerDelete};
use berth_api::containerd::services::containers::v1::{containers_server::Containers, *};
use berth_errdefs::Error;
use berth_metadata::filters::Filter;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct ContainersService(pub Arc<State>);

/// Records read from the store per step of a ListStream.
const LIST_PAGE: usize = 64;

type ContainerStream = Pin<Box<dyn Stream<Item = Result<ListContainerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(&self, req: Request<GetContainerRequest>) -> RpcResult<GetContainerResponse> {
        let ns = namespace(&req)?;
        let container = self.0.meta.get_container(&ns, &req.get_ref().id)?;
        reply(GetContainerResponse {
            container: Some(container),
        })
    }

    /// The reference implementation: berthd serves unary List through
    /// `containers_list::WithRawList`, which answers the same from stored bytes.
    async fn list(&self, req: Request<ListContainersRequest>) -> RpcResult<ListContainersResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        reply(ListContainersResponse {
            containers: self.0.meta.list_containers(&ns, &filter)?,
        })
    }

    type ListStreamStream = ContainerStream;

    async fn list_stream(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ContainerStream>, Status> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        // Page through the store while sending, so memory stays bounded by a page however many
        // containers the namespace holds.
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_PAGE);
        let state = self.0.clone();
        let filter = Arc::new(filter);
        tokio::spawn(async move {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let (state, ns, filter, from) =
                    (state.clone(), ns.clone(), filter.clone(), after.clone());
                let page = crate::blocking::blocking(move || {
                    state
                        .meta
                        .list_containers_page(&ns, &filter, from.as_deref(), LIST_PAGE)
                })
                .await;
                let (containers, last) = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                for c in containers {
                    let msg = ListContainerMessage { container: Some(c) };
                    if tx.send(Ok(msg)).await.is_err() {
                        return; // the client went away
                    }
                }
                match last {
                    Some(k) => after = Some(k),
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> RpcResult<CreateContainerResponse> {
        let ns = namespace(&req)?;
        let c = req
            .into_inner()
            .container
            .ok_or_else(|| Error::invalid("container must be set"))?;
        let c = self.0.meta.create_container(&ns, c).await?;
        self.0.events.publish(
            &ns,
            "/containers/create",
            &ContainerCreate {
                id: c.id.clone(),
                image: c.image.clone(),
                runtime: c.runtime.as_ref().map(|r| container_create::Runtime {
                    name: r.name.clone(),
                    options: r.options.clone(),
                }),
            },
        );
        reply(CreateContainerResponse { container: Some(c) })
    }

    async fn update(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> RpcResult<UpdateContainerResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let c = req
            .container
            .ok_or_else(|| Error::invalid("container must be set"))?;
        let c = self
            .0
            .meta
            .update_container(&ns, c, &mask_paths(req.update_mask))
            .await?;
        self.0.events.publish_container_update(&ns, &c);
        reply(UpdateContainerResponse { container: Some(c) })
    }

    async fn delete(&self, req: Request<DeleteContainerRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        self.0.meta.delete_container(&ns, &id).await?;
        self.0
            .events
            .publish(&ns, "/containers/delete", &ContainerDelete { id });
        self.0.gc.schedule();
        reply(())
    }
}
