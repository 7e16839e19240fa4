//! What `build`, `commit` and `import` all do to make an image out of snapshots: a snapshot's
//! changes as a layer through the Diff service, small blobs written whole, and an image's config
//! and manifest with the labels that keep them and their layers from the collector.

use crate::api::services::content::v1::content_client::ContentClient;
use crate::api::services::content::v1::{InfoRequest, WriteAction, WriteContentRequest};
use crate::api::services::diff::v1::diff_client::DiffClient;
use crate::api::services::diff::v1::DiffRequest;
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{
    MountsRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use crate::{with_lease, Client, Error, Result};
use berth_build::image::{manifest, Blob, ImageDocument};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tonic::Code;

/// The most bytes one Content.Write message carries.
const WRITE_CHUNK: usize = 4 << 20;
pub(crate) const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The label Diff puts on a layer it writes: the layer's diff ID.
const UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// Writes `doc` as an image config and a manifest over `layers`, under `lease` (blob refs
/// `<ref_prefix><digest>`): the config keeps the unpacked snapshot `chain` of `snapshotter` when
/// there is one, the manifest keeps the config and every layer. Returns (config, manifest).
pub(crate) async fn write_image(
    client: &Client,
    lease: &str,
    ref_prefix: &str,
    doc: &ImageDocument,
    layers: &[Blob],
    snapshot: Option<(&str, &str)>,
) -> Result<(Blob, Blob)> {
    let config_bytes = serde_json::to_vec(doc)
        .map_err(|e| Error::invalid(format!("encode the image config: {e}")))?;
    let config_labels = snapshot
        .map(|(snapshotter, chain)| {
            HashMap::from([(
                format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                chain.to_string(),
            )])
        })
        .unwrap_or_default();
    let config = write_blob(
        client,
        lease,
        ref_prefix,
        CONFIG_TYPE,
        config_bytes,
        config_labels,
    )
    .await?;
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config.digest.clone(),
    )]);
    for (i, l) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    let m = write_blob(
        client,
        lease,
        ref_prefix,
        MANIFEST_TYPE,
        manifest(&config, layers),
        manifest_labels,
    )
    .await?;
    Ok((config, m))
}

/// The changes of the snapshot `key` against `parent` (none: against nothing) as a layer of
/// `media_type` in the content store, under `lease`; returns the layer and its diff ID. The
/// parent is seen through a view named `<view_prefix><random>`, removed afterwards.
pub(crate) async fn diff_snapshot(
    client: &Client,
    lease: &str,
    snapshotter: &str,
    key: &str,
    parent: Option<&str>,
    media_type: &str,
    view_prefix: &str,
) -> Result<(Blob, String)> {
    let ns = client.namespace();
    let mut snapshots = SnapshotsClient::new(client.channel().clone());
    let lower = match parent {
        Some(p) => {
            let view_key = format!("{view_prefix}{}", crate::names::new_id());
            let req = ViewSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: view_key.clone(),
                parent: p.to_string(),
                labels: HashMap::new(),
            };
            let mounts = snapshots
                .view(with_lease(ns, lease, req))
                .await?
                .into_inner()
                .mounts;
            Some((view_key, mounts))
        }
        None => None,
    };
    let upper = snapshots
        .mounts(client.request(MountsRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        }))
        .await?
        .into_inner()
        .mounts;
    let req = DiffRequest {
        left: lower.as_ref().map(|(_, m)| m.clone()).unwrap_or_default(),
        right: upper,
        media_type: media_type.to_string(),
        r#ref: String::new(),
        labels: HashMap::new(),
        source_date_epoch: None,
    };
    let diffed = DiffClient::new(client.channel().clone())
        .diff(with_lease(ns, lease, req))
        .await;
    if let Some((view_key, _)) = lower {
        let req = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: view_key,
        };
        let _ = snapshots.remove(client.request(req)).await;
    }
    let desc = diffed?
        .into_inner()
        .diff
        .ok_or_else(|| Error::local(Code::Internal, "Diff answered no descriptor"))?;
    let info = ContentClient::new(client.channel().clone())
        .info(client.request(InfoRequest {
            digest: desc.digest.clone(),
        }))
        .await?
        .into_inner()
        .info
        .ok_or_else(|| Error::local(Code::Internal, "Content.Info answered nothing"))?;
    let diff_id = info.labels.get(UNCOMPRESSED).cloned().ok_or_else(|| {
        Error::local(
            Code::Internal,
            format!("layer {} has no diff ID label", desc.digest),
        )
    })?;
    Ok((
        Blob {
            media_type: desc.media_type,
            digest: desc.digest,
            size: desc.size,
        },
        diff_id,
    ))
}

/// Writes `bytes` as one committed blob under `lease` (ingest ref `<ref_prefix><digest>`). The
/// same bytes stored already are not an error: the blob is there either way.
pub(crate) async fn write_blob(
    client: &Client,
    lease: &str,
    ref_prefix: &str,
    media_type: &str,
    bytes: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<Blob> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let size = bytes.len() as i64;
    // One message while it fits well within the 16 MiB message limit; a larger blob (an
    // imported tarball) goes as writes at increasing offsets, the last one committing.
    let r#ref = format!("{ref_prefix}{digest}");
    let mut reqs = Vec::new();
    let mut offset = 0usize;
    let mut rest = bytes;
    while rest.len() > WRITE_CHUNK {
        let tail = rest.split_off(WRITE_CHUNK);
        let chunk = std::mem::replace(&mut rest, tail);
        let len = chunk.len();
        reqs.push(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.clone(),
            total: size,
            expected: String::new(),
            offset: offset as i64,
            data: chunk,
            labels: HashMap::new(),
        });
        offset += len;
    }
    reqs.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref,
        total: size,
        expected: digest.clone(),
        offset: offset as i64,
        data: rest,
        labels,
    });
    let request = with_lease(client.namespace(), lease, tokio_stream::iter(reqs));
    match ContentClient::new(client.channel().clone())
        .write(request)
        .await
    {
        Ok(resp) => {
            let mut resp = resp.into_inner();
            loop {
                match resp.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) if e.code() == Code::AlreadyExists => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(e) if e.code() == Code::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Blob {
        media_type: media_type.to_string(),
        digest,
        size,
    })
}
