//! Image archives through client streams: import (ImageImportStream → ImageStore) and export
//! (ImageStore → ImageExportStream). Not yet: they arrive with berth-archive, which owns this
//! file; the stream plumbing they need is `crate::streams::{receive_bytes, send_bytes}`.

use super::{Ctx, Transferrer};
use berth_api::containerd::types::transfer::{ImageExportStream, ImageImportStream, ImageStore};
use berth_errdefs::{Error, Result};

const NOT_YET: &str = "image archives arrive with berth-archive; until then use the \
                       client-side path (`ctr images import/export --local`)";

pub(super) async fn import(
    _t: &Transferrer,
    _ctx: &Ctx,
    _src: ImageImportStream,
    _dst: ImageStore,
) -> Result<()> {
    Err(Error::unimplemented(format!(
        "transfer from containerd.types.transfer.ImageImportStream to \
         containerd.types.transfer.ImageStore (import): {NOT_YET}"
    )))
}

pub(super) async fn export(
    _t: &Transferrer,
    _ctx: &Ctx,
    _src: ImageStore,
    _dst: ImageExportStream,
) -> Result<()> {
    Err(Error::unimplemented(format!(
        "transfer from containerd.types.transfer.ImageStore to \
         containerd.types.transfer.ImageExportStream (export): {NOT_YET}"
    )))
}
