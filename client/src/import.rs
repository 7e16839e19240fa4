//! `berth import`: docker's import of a filesystem tarball (plain or gzip) as an image of one
//! layer. The tarball is the layer as given (its diff ID the digest of the uncompressed
//! stream), applied onto a new snapshot committed under its chain ID so `run` needs no unpack;
//! the config (this host's platform, `-c` changes, a history entry with `-m`) and a manifest
//! are written under a lease until the image record holds them.

use crate::commit::apply_change;
use crate::{Client, Error, Result};
use berth_build::image::{HistoryEntry, ImageDocument};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;

const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// docker's `import` options.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The image's name; None names it by its manifest digest only (docker's untagged
    /// `<none>:<none>`, which `image prune` takes).
    pub reference: Option<String>,
    /// `-m`: the history entry's comment.
    pub message: Option<String>,
    /// `-c`: Dockerfile instructions for the config (as `commit -c`).
    pub changes: Vec<String>,
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub name: String,
    /// docker's image id: the config's digest.
    pub config_digest: String,
    pub manifest_digest: String,
}

/// The digest of the uncompressed tar stream in `layer` (gzip or not) and the media type the
/// blob is stored under.
fn diff_id_of(layer: &[u8]) -> Result<(String, &'static str)> {
    let gzip = layer.starts_with(&[0x1f, 0x8b]);
    let mut hasher = Sha256::new();
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else {
        Box::new(layer)
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = Vec::new();
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::invalid(format!("read the tarball: {e}")))?;
        if n == 0 {
            break;
        }
        if first.len() < 512 {
            first.extend_from_slice(&buf[..n.min(512 - first.len())]);
        }
        hasher.update(&buf[..n]);
    }
    // A tar header carries "ustar" at offset 257; an empty or foreign file is refused here
    // rather than by the Diff service half-way through.
    if first.len() < 512 || &first[257..262] != b"ustar" {
        return Err(Error::invalid(
            "the input is not a tar archive (plain or gzip-compressed)",
        ));
    }
    let media = if gzip {
        crate::layers::GZIP_LAYER
    } else {
        TAR_LAYER
    };
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), media))
}

impl Client {
    /// Import `layer` (a root filesystem as a tar, possibly gzip-compressed) as a one-layer
    /// image for this host's platform.
    pub async fn import_rootfs(&self, layer: Vec<u8>, opts: &ImportOptions) -> Result<Imported> {
        let (diff_id, media_type) = diff_id_of(&layer)?;
        let mut doc = ImageDocument::scratch(crate::images::oci_arch());
        for c in &opts.changes {
            apply_change(&mut doc.config, c)?;
        }
        let now = crate::clock::rfc3339(std::time::SystemTime::now());
        doc.created = Some(now.clone());
        doc.rootfs.diff_ids.push(diff_id.clone());
        doc.history.push(HistoryEntry {
            created: Some(now),
            created_by: Some("berth import".to_string()),
            comment: opts.message.clone(),
            ..HistoryEntry::default()
        });
        let snapshotter = crate::containers::DEFAULT_SNAPSHOTTER;
        // The chain ID of a first layer is its diff ID.
        let chain = diff_id.clone();
        let lease = self
            .leases()
            .create(std::time::Duration::from_secs(3600))
            .await?;
        let result = async {
            let blob = crate::layers::write_blob(
                self,
                lease.id(),
                "berth-import-",
                media_type,
                layer,
                HashMap::new(),
            )
            .await?;
            self.unpack_layer(&lease, snapshotter, None, &blob, &chain)
                .await?;
            let (config, m) = crate::layers::write_image(
                self,
                lease.id(),
                "berth-import-",
                &doc,
                &[blob],
                Some((snapshotter, &chain)),
            )
            .await?;
            let name = match &opts.reference {
                Some(r) => crate::images::normalize(r),
                None => format!("import@{}", m.digest),
            };
            self.name_image(&name, &m).await?;
            Ok::<_, Error>(Imported {
                name,
                config_digest: config.digest,
                manifest_digest: m.digest,
            })
        }
        .await;
        let released = lease.release().await;
        let imported = result?;
        released?;
        Ok(imported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hi.txt", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn diff_id_is_of_the_uncompressed_stream() {
        let tar = tarball();
        let (plain, media) = diff_id_of(&tar).unwrap();
        assert_eq!(media, TAR_LAYER);
        assert_eq!(
            plain,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let (zipped, media) = diff_id_of(&gz.finish().unwrap()).unwrap();
        assert_eq!(media, crate::layers::GZIP_LAYER);
        assert_eq!(zipped, plain);
        assert!(diff_id_of(b"not a tarball").is_err());
    }
}
