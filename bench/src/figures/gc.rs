//! Garbage collection under load (issue 3: "collection must not block API writes for long;
//! measure it with 1,000 images"): 1,000 images, each with its own small target blob, are deleted;
//! the last deletion asks for a synchronous collection (both daemons then wait for their
//! collector), while a second client keeps creating containers. Reported: the synchronous
//! delete (≈ one collection of 1,000 images' content) and the p99 latency of the concurrent writes.

use super::content;
use super::{slot, Better, Figure, Samples};
use crate::daemon::{order, Kind, Lab};
use crate::{Opts, Result};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{container, Container, CreateContainerRequest};
use berth::api::services::content::v1::content_client::ContentClient;
use berth::api::services::images::v1::images_client::ImagesClient;
use berth::api::services::images::v1::{CreateImageRequest, DeleteImageRequest, Image};
use berth::api::types::Descriptor;
use berth::with_namespace;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const G: &str = "images";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub async fn run(lab: &Lab, opts: &Opts) -> Result<Vec<Figure>> {
    let images = if opts.quick { 200 } else { 1_000 };
    let rounds = if opts.quick { 1 } else { 3 };
    let mut collect = Samples::default();
    let mut writes = Samples::default();
    for round in 0..rounds {
        let mut per_collect: [Vec<f64>; 2] = Default::default();
        let mut per_write: [Vec<f64>; 2] = Default::default();
        for kind in order(round) {
            let (c, w) = one(lab, kind, &format!("gc-{round}"), images).await?;
            per_collect[slot(kind)].push(c);
            per_write[slot(kind)].extend(w);
        }
        collect.round_by_kind(&per_collect);
        writes.round_by_kind(&per_write);
    }
    let n = super::metadata::thousands(images);
    Ok(vec![
        Figure::new(
            G,
            format!("gc.collect.{images}"),
            format!("GC: Images.Delete(sync) collecting {n} images' content"),
            "ms",
            Better::Lower,
        )
        .with(collect.outcome())
        .note("the last of the deletions asks for a synchronous collection of the whole namespace"),
        Figure::new(
            G,
            format!("gc.write_latency.{images}"),
            format!("GC: containers Create latency while {n} images are collected"),
            "ms",
            Better::Lower,
        )
        .with(writes.outcome())
        .note("a second client creating containers during the deletions and the collection"),
    ])
}

/// One daemon: fill, delete all but one, then delete the last with sync while writes run.
async fn one(lab: &Lab, kind: Kind, ns: &str, images: usize) -> Result<(f64, Vec<f64>)> {
    let d = lab.daemon(kind);
    let channel = d.connect().await?;
    let err = |what: &'static str| {
        move |s: tonic::Status| format!("{}: {what}: {}", kind.name(), s.message())
    };
    let mut content_client = ContentClient::new(channel.clone());
    let mut images_client = ImagesClient::new(channel.clone());
    for i in 0..images {
        let blob = format!("{{\"schemaVersion\":2,\"bench\":\"{ns}-{i}\"}}").into_bytes();
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob))
        );
        content::write(&mut content_client, &format!("gc-{i}"), &blob, &digest).await?;
        let image = Image {
            name: format!("bench/gc:{i}"),
            labels: Default::default(),
            target: Some(Descriptor {
                media_type: MANIFEST.into(),
                digest,
                size: blob.len() as i64,
                annotations: Default::default(),
            }),
            created_at: None,
            updated_at: None,
        };
        images_client
            .create(with_namespace(
                ns,
                CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                },
            ))
            .await
            .map_err(err("image create"))?;
    }
    // The writer runs on its own connection for the whole deletion phase.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut client) = (stop.clone(), ContainersClient::new(d.connect().await?));
        let ns = ns.to_string();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let c = Container {
                    id: format!("gc-writer-{i}"),
                    runtime: Some(container::Runtime {
                        name: "io.containerd.runc.v2".into(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                        value: b"{}".to_vec(),
                    }),
                    ..Default::default()
                };
                let t = Instant::now();
                if client
                    .create(with_namespace(
                        &ns,
                        CreateContainerRequest { container: Some(c) },
                    ))
                    .await
                    .is_err()
                {
                    break;
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                i += 1;
            }
            lat
        })
    };
    for i in 0..images - 1 {
        images_client
            .delete(with_namespace(
                ns,
                DeleteImageRequest {
                    name: format!("bench/gc:{i}"),
                    sync: false,
                    target: None,
                },
            ))
            .await
            .map_err(err("image delete"))?;
    }
    let t = Instant::now();
    images_client
        .delete(with_namespace(
            ns,
            DeleteImageRequest {
                name: format!("bench/gc:{}", images - 1),
                sync: true,
                target: None,
            },
        ))
        .await
        .map_err(err("image delete (sync)"))?;
    let collect_ms = t.elapsed().as_secs_f64() * 1e3;
    stop.store(true, Ordering::Relaxed);
    let lat = writer.await.map_err(|e| format!("writer task: {e}"))?;
    Ok((collect_ms, lat))
}
