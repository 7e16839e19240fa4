//! Tag: ImageStore → ImageStore. The source record's target under the destination's name(s),
//! created or updated as containerd's image store does.

use super::pull::image_records;
use super::{Ctx, Transferrer};
use berth_api::containerd::types::transfer::ImageStore;
use berth_errdefs::{Error, Result};

pub(super) async fn tag(
    t: &Transferrer,
    ctx: &Ctx,
    src: ImageStore,
    dst: ImageStore,
) -> Result<()> {
    if src.name.is_empty() {
        return Err(Error::invalid("the source image store names no image"));
    }
    let image = t.meta.get_image(&ctx.ns, &src.name)?;
    let target = image
        .target
        .ok_or_else(|| Error::precondition(format!("image {:?} has no target", src.name)))?;
    for record in image_records(&dst, &target)? {
        let saved = t.put_image(&ctx.ns, record).await?;
        ctx.progress
            .named("saved", &saved.name, saved.target.clone())
            .await;
    }
    Ok(())
}
