//! Image records: a name pointing at a target descriptor (an index or a manifest in the content store).

use super::{keys, now, Metadata};
use crate::filters::{label_field, Adaptor, Filter};
use crate::validate;
use berth_api::containerd::services::images::v1::Image;
use berth_errdefs::{Error, Result};
use berth_oci::Digest;

impl Metadata {
    pub fn get_image(&self, ns: &str, name: &str) -> Result<Image> {
        self.get(&keys::object(ns, keys::IMAGES, name))?
            .ok_or_else(|| Error::not_found(format!("image {name:?}: not found")))
    }

    pub fn list_images(&self, ns: &str, filter: &Filter) -> Result<Vec<Image>> {
        let all = filter.matches_all();
        self.list::<Image>(&keys::objects(ns, keys::IMAGES), |r| {
            all || filter.matches(&ImageFields(r))
        })
    }

    pub async fn create_image(&self, ns: &str, mut image: Image) -> Result<Image> {
        validate_image(&image)?;
        self.update(|tx| {
            let key = keys::object(ns, keys::IMAGES, &image.name);
            if tx.exists(&key)? {
                return Err(Error::exists(format!(
                    "image {:?}: already exists",
                    image.name
                )));
            }
            tx.ensure_namespace(ns)?;
            let t = now();
            image.created_at = Some(t);
            image.updated_at = Some(t);
            tx.put(key, &image);
            Ok(image)
        })
        .await
    }

    /// Field masks: `labels[.KEY]`, `target`, `annotations[.KEY]`; no mask replaces the whole image
    /// (what `ctr pull` does when the image already exists).
    pub async fn update_image(&self, ns: &str, image: Image, paths: &[String]) -> Result<Image> {
        if image.name.is_empty() {
            return Err(Error::invalid("image name is required for update"));
        }
        self.update(|tx| {
            let key = keys::object(ns, keys::IMAGES, &image.name);
            let current: Image = tx
                .get(&key)?
                .ok_or_else(|| Error::not_found(format!("image {:?}: not found", image.name)))?;
            let mut updated = if paths.is_empty() {
                image.clone()
            } else {
                let mut updated = current.clone();
                for path in paths {
                    if validate::apply_label_path(path, &mut updated.labels, &image.labels) {
                        continue;
                    }
                    let target = updated.target.get_or_insert_with(Default::default);
                    let from = image.target.clone().unwrap_or_default();
                    if let Some(k) = path.strip_prefix("annotations.") {
                        match from.annotations.get(k) {
                            Some(v) => target.annotations.insert(k.to_string(), v.clone()),
                            None => target.annotations.remove(k),
                        };
                        continue;
                    }
                    match path.as_str() {
                        "target" => updated.target = image.target.clone(),
                        "annotations" => target.annotations = from.annotations,
                        _ => {
                            return Err(Error::invalid(format!(
                                "cannot update {path:?} field on image {:?}",
                                image.name
                            )))
                        }
                    }
                }
                updated
            };
            validate_image(&updated)?;
            updated.created_at = current.created_at;
            updated.updated_at = Some(now());
            tx.put(key, &updated);
            Ok(updated)
        })
        .await
    }

    /// Deletes the image; with `target` (a digest), only while the image still points at it,
    /// else NotFound as containerd answers, so a client never removes a name someone re-tagged.
    pub async fn delete_image(&self, ns: &str, name: &str, target: Option<&str>) -> Result<()> {
        self.update(|tx| {
            let key = keys::object(ns, keys::IMAGES, name);
            let Some(image) = tx.get::<Image>(&key)? else {
                return Err(Error::not_found(format!("image {name:?}: not found")));
            };
            if let Some(want) = target {
                let has = image.target.as_ref().map_or("", |t| t.digest.as_str());
                if has != want {
                    return Err(Error::not_found(format!(
                        "image {name:?} has target {has}, not {want}: not found"
                    )));
                }
            }
            tx.delete(key);
            Ok(())
        })
        .await
    }
}

fn validate_image(image: &Image) -> Result<()> {
    if image.name.is_empty() {
        return Err(Error::invalid("image name must not be empty"));
    }
    validate::labels(&image.labels)?;
    let target = image
        .target
        .as_ref()
        .ok_or_else(|| Error::invalid("image target must be set"))?;
    Digest::parse(&target.digest)
        .map_err(|e| Error::invalid(format!("Target.Digest {:?} invalid: {e}", target.digest)))?;
    if target.size <= 0 {
        return Err(Error::invalid("Target.Size must be greater than zero"));
    }
    if target.media_type.is_empty() {
        return Err(Error::invalid("Target.MediaType must be set"));
    }
    Ok(())
}

struct ImageFields<'a>(&'a Image);

impl Adaptor for ImageFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        let i = self.0;
        match path {
            ["name"] => Some(i.name.clone()),
            ["target", "digest"] => i.target.as_ref().map(|t| t.digest.clone()),
            ["target", "mediatype"] => i.target.as_ref().map(|t| t.media_type.clone()),
            ["labels", ..] => label_field(&i.labels, path),
            ["annotations", key @ ..] => i
                .target
                .as_ref()
                .and_then(|t| t.annotations.get(&key.join(".")).cloned()),
            _ => None,
        }
    }
}
