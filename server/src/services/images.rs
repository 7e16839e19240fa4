use super::{mask_paths, namespace, reply, RpcResult, State};
use berth_api::containerd::services::images::v1::{images_server::Images, *};
use berth_errdefs::Error;
use berth_metadata::filters::Filter;
use std::sync::Arc;
use tonic::Request;

pub struct ImagesService(pub Arc<State>);

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(&self, req: Request<GetImageRequest>) -> RpcResult<GetImageResponse> {
        let ns = namespace(&req)?;
        let image = self.0.meta.get_image(&ns, &req.get_ref().name)?;
        reply(GetImageResponse { image: Some(image) })
    }

    async fn list(&self, req: Request<ListImagesRequest>) -> RpcResult<ListImagesResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        reply(ListImagesResponse {
            images: self.0.meta.list_images(&ns, &filter)?,
        })
    }

    async fn create(&self, req: Request<CreateImageRequest>) -> RpcResult<CreateImageResponse> {
        let ns = namespace(&req)?;
        let image = req
            .into_inner()
            .image
            .ok_or_else(|| Error::invalid("image must be set"))?;
        let image = self.0.meta.create_image(&ns, image).await?;
        self.0.events.publish(
            &ns,
            "/images/create",
            &ImageCreate {
                name: image.name.clone(),
                labels: image.labels.clone(),
            },
        );
        reply(CreateImageResponse { image: Some(image) })
    }

    async fn update(&self, req: Request<UpdateImageRequest>) -> RpcResult<UpdateImageResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let image = req
            .image
            .ok_or_else(|| Error::invalid("image must be set"))?;
        let image = self
            .0
            .meta
            .update_image(&ns, image, &mask_paths(req.update_mask))
            .await?;
        self.0.events.publish(
            &ns,
            "/images/update",
            &ImageUpdate {
                name: image.name.clone(),
                labels: image.labels.clone(),
            },
        );
        reply(UpdateImageResponse { image: Some(image) })
    }

    async fn delete(&self, req: Request<DeleteImageRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let name = req.name;
        let target = req
            .target
            .as_ref()
            .map(|t| t.digest.as_str())
            .filter(|d| !d.is_empty());
        self.0.meta.delete_image(&ns, &name, target).await?;
        self.0
            .events
            .publish(&ns, "/images/delete", &ImageDelete { name });
        super::collect_garbage(&self.0, req.sync).await?;
        reply(())
    }
}
