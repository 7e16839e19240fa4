//! Namespaces: the tenancy boundary. Every other record lives under one.

use super::{keys, Metadata};
use crate::validate;
use berth_api::containerd::services::namespaces::v1::Namespace;
use berth_errdefs::{Error, Result};

impl Metadata {
    /// containerd never answers NotFound here: an unknown namespace is an empty one, and clients
    /// (snapshotter resolution on every unpack) rely on that.
    pub fn get_namespace(&self, name: &str) -> Result<Namespace> {
        validate::identifier("namespace", name)?;
        Ok(self.get(&keys::namespace(name))?.unwrap_or(Namespace {
            name: name.to_string(),
            labels: Default::default(),
        }))
    }

    /// Writes outside the metadata store (snapshots) create their namespace too; free when it exists.
    pub async fn touch_namespace(&self, ns: &str) -> Result<()> {
        self.update(|tx| tx.ensure_namespace(ns)).await
    }

    pub fn list_namespaces(&self) -> Result<Vec<Namespace>> {
        Ok(self
            .scan::<Namespace>(keys::NAMESPACES)?
            .into_iter()
            .map(|(_, ns)| ns)
            .collect())
    }

    pub async fn create_namespace(&self, ns: Namespace) -> Result<Namespace> {
        validate::identifier("namespace", &ns.name)?;
        validate::labels(&ns.labels)?;
        self.update(|tx| {
            let key = keys::namespace(&ns.name);
            if tx.exists(&key)? {
                return Err(Error::exists(format!(
                    "namespace {:?} already exists",
                    ns.name
                )));
            }
            tx.put(key, &ns);
            Ok(ns)
        })
        .await
    }

    /// Update labels by field mask (`labels`, `labels.KEY`); no mask replaces all labels.
    /// Like containerd, an update of an unknown namespace creates it.
    pub async fn update_namespace(&self, ns: Namespace, paths: &[String]) -> Result<Namespace> {
        validate::identifier("namespace", &ns.name)?;
        validate::labels(&ns.labels)?;
        self.update(|tx| {
            let key = keys::namespace(&ns.name);
            let mut current: Namespace = tx.get(&key)?.unwrap_or(Namespace {
                name: ns.name.clone(),
                labels: Default::default(),
            });
            if paths.is_empty() {
                current.labels = ns.labels.clone();
                current.labels.retain(|_, v| !v.is_empty());
            }
            for path in paths {
                if !validate::apply_label_path(path, &mut current.labels, &ns.labels) {
                    return Err(Error::invalid(format!(
                        "cannot update {path:?} field on namespace {:?}",
                        ns.name
                    )));
                }
            }
            tx.put(key, &current);
            Ok(current)
        })
        .await
    }

    /// Delete an empty namespace. Leases do not keep a namespace alive; they go with it.
    pub async fn delete_namespace(&self, name: &str) -> Result<()> {
        validate::identifier("namespace", name)?;
        self.update(|tx| {
            let key = keys::namespace(name);
            if !tx.exists(&key)? {
                return Err(Error::not_found(format!("namespace {name:?} not found")));
            }
            for (kind, what) in [
                (keys::IMAGES, "images"),
                (keys::CONTENT, "blobs"),
                (keys::CONTAINERS, "containers"),
            ] {
                if tx.any_with_prefix(&keys::objects(name, kind))? {
                    return Err(Error::precondition(format!(
                        "namespace {name:?} must be empty, but it still has {what}"
                    )));
                }
            }
            for k in tx.scan_keys(&keys::namespace_objects(name))? {
                tx.delete(k);
            }
            tx.delete(key);
            Ok(())
        })
        .await
    }
}
