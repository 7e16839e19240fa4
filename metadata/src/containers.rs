//! Container records: the spec, runtime, image and snapshot a task will later be made from.

use super::{keys, now, Metadata};
use crate::filters::{label_field, Adaptor, Filter};
use crate::validate;
use berth_api::containerd::services::containers::v1::Container;
use berth_errdefs::{Error, Result};

/// A container as background loops need it (the collector's roots, the restart monitor's
/// labels): the stored record read with only these fields of `Container` (same numbers), so the
/// spec and extensions are skipped, not decoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerSummary {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(map = "string, string", tag = "2")]
    pub labels: std::collections::HashMap<String, String>,
    #[prost(string, tag = "6")]
    pub snapshotter: String,
    #[prost(string, tag = "7")]
    pub snapshot_key: String,
}

impl ContainerSummary {
    fn of(c: &Container) -> ContainerSummary {
        ContainerSummary {
            id: c.id.clone(),
            labels: c.labels.clone(),
            snapshotter: c.snapshotter.clone(),
            snapshot_key: c.snapshot_key.clone(),
        }
    }
}

/// Keep `c`'s summary beside its record, in the same transaction.
fn put_summary(tx: &mut super::Tx<'_>, ns: &str, c: &Container) {
    tx.put(
        keys::object(ns, keys::CONTAINER_ROOTS, &c.id),
        &ContainerSummary::of(c),
    );
}

/// Build the summaries of a store written before they existed: every container's record read
/// once, at open.
pub(crate) fn build_summaries(
    backend: &dyn crate::backend::Backend,
    batch: &mut crate::backend::Batch,
) -> Result<()> {
    for (ns_key, _) in backend.scan(keys::NAMESPACES)? {
        let ns = String::from_utf8_lossy(&ns_key[keys::NAMESPACES.len()..]).into_owned();
        let mut found = Vec::new();
        backend.for_each(&keys::objects(&ns, keys::CONTAINERS), &mut |_, v| {
            // The record decoded as its summary: only those fields are read.
            let s = <ContainerSummary as prost::Message>::decode(v)
                .map_err(|e| Error::internal(format!("container record: {e}")))?;
            found.push(s);
            Ok(())
        })?;
        for s in found {
            batch.put(
                keys::object(&ns, keys::CONTAINER_ROOTS, &s.id),
                prost::Message::encode_to_vec(&s),
            );
        }
    }
    batch.put(keys::CONTAINER_ROOTS_BUILT.to_vec(), Vec::new());
    Ok(())
}

impl Metadata {
    /// Every container of `ns`, summarized: read from the summaries kept beside the records, so
    /// the collector and the restart monitor never read a spec.
    pub fn container_summaries(&self, ns: &str) -> Result<Vec<ContainerSummary>> {
        self.list::<ContainerSummary>(&keys::objects(ns, keys::CONTAINER_ROOTS), |_| true)
    }

    pub fn get_container(&self, ns: &str, id: &str) -> Result<Container> {
        self.get(&keys::object(ns, keys::CONTAINERS, id))?
            .ok_or_else(|| {
                Error::not_found(format!("container {id:?} in namespace {ns:?}: not found"))
            })
    }

    pub fn list_containers(&self, ns: &str, filter: &Filter) -> Result<Vec<Container>> {
        let all = filter.matches_all();
        self.list::<Container>(&keys::objects(ns, keys::CONTAINERS), |r| {
            all || filter.matches(&ContainerFields(r))
        })
    }

    /// Every container of `ns` as an encoded `ListContainersResponse`: each stored record (the
    /// API's own encoding) behind the tag and length of the response's field 1.
    pub fn containers_response_bytes(&self, ns: &str) -> Result<Vec<u8>> {
        const CONTAINERS_FIELD: u32 = 1;
        let mut out = Vec::new();
        self.backend
            .for_each(&keys::objects(ns, keys::CONTAINERS), &mut |_, v| {
                prost::encoding::encode_key(
                    CONTAINERS_FIELD,
                    prost::encoding::WireType::LengthDelimited,
                    &mut out,
                );
                prost::encoding::encode_varint(v.len() as u64, &mut out);
                out.extend_from_slice(v);
                Ok(())
            })?;
        Ok(out)
    }

    /// Containers page by page, for streaming: up to `limit` records after the key `after`,
    /// filtered; returns the last key read (None when done).
    pub fn list_containers_page(
        &self,
        ns: &str,
        filter: &Filter,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Container>, Option<Vec<u8>>)> {
        let page =
            self.scan_page::<Container>(&keys::objects(ns, keys::CONTAINERS), after, limit)?;
        let last = if page.len() == limit {
            page.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        let matching = page
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| filter.matches(&ContainerFields(c)))
            .collect();
        Ok((matching, last))
    }

    pub async fn create_container(&self, ns: &str, mut c: Container) -> Result<Container> {
        validate_container(&c)?;
        self.update(|tx| {
            let key = keys::object(ns, keys::CONTAINERS, &c.id);
            if tx.exists(&key)? {
                return Err(Error::exists(format!(
                    "container {:?}: already exists",
                    c.id
                )));
            }
            tx.ensure_namespace(ns)?;
            let t = now();
            c.created_at = Some(t);
            c.updated_at = Some(t);
            tx.put(key, &c);
            put_summary(tx, ns, &c);
            Ok(c)
        })
        .await
    }

    /// containerd's update rules: `labels[.KEY]`, `extensions[.KEY]`, `spec`, `image`, `snapshotkey`;
    /// without a mask those five are replaced and the immutable fields must not change.
    pub async fn update_container(
        &self,
        ns: &str,
        c: Container,
        paths: &[String],
    ) -> Result<Container> {
        if c.id.is_empty() {
            return Err(Error::invalid("must specify a container id"));
        }
        self.update(|tx| {
            let key = keys::object(ns, keys::CONTAINERS, &c.id);
            let mut updated: Container = tx
                .get(&key)?
                .ok_or_else(|| Error::not_found(format!("container {:?}: not found", c.id)))?;
            let default_paths;
            let paths = if paths.is_empty() {
                if updated.snapshotter != c.snapshotter {
                    return Err(Error::invalid("container.Snapshotter field is immutable"));
                }
                let runtime_name = |c: &Container| c.runtime.as_ref().map(|r| r.name.clone());
                if runtime_name(&updated) != runtime_name(&c) {
                    return Err(Error::invalid("container.Runtime.Name field is immutable"));
                }
                default_paths =
                    ["labels", "spec", "extensions", "image", "snapshotkey"].map(String::from);
                &default_paths[..]
            } else {
                paths
            };
            for path in paths {
                if validate::apply_label_path(path, &mut updated.labels, &c.labels) {
                    continue;
                }
                if let Some(k) = path.strip_prefix("extensions.") {
                    match c.extensions.get(k) {
                        Some(v) => updated.extensions.insert(k.to_string(), v.clone()),
                        None => updated.extensions.remove(k),
                    };
                    continue;
                }
                match path.as_str() {
                    "spec" => updated.spec = c.spec.clone(),
                    "extensions" => updated.extensions = c.extensions.clone(),
                    "image" => updated.image = c.image.clone(),
                    "snapshotkey" => updated.snapshot_key = c.snapshot_key.clone(),
                    _ => {
                        return Err(Error::invalid(format!(
                            "cannot update {path:?} field on {:?}",
                            c.id
                        )))
                    }
                }
            }
            validate_container(&updated)
                .map_err(|e| Error::invalid(format!("update failed validation: {e}")))?;
            updated.updated_at = Some(now());
            tx.put(key, &updated);
            put_summary(tx, ns, &updated);
            Ok(updated)
        })
        .await
    }

    pub async fn delete_container(&self, ns: &str, id: &str) -> Result<()> {
        self.update(|tx| {
            let key = keys::object(ns, keys::CONTAINERS, id);
            if !tx.exists(&key)? {
                return Err(Error::not_found(format!("container {id:?}: not found")));
            }
            tx.delete(key);
            tx.delete(keys::object(ns, keys::CONTAINER_ROOTS, id));
            Ok(())
        })
        .await
    }
}

fn validate_container(c: &Container) -> Result<()> {
    validate::identifier("container.ID", &c.id)?;
    if c.extensions.keys().any(|k| k.is_empty()) {
        return Err(Error::invalid(
            "container.Extension keys must not be zero-length",
        ));
    }
    validate::labels(&c.labels)?;
    if c.runtime.as_ref().is_none_or(|r| r.name.is_empty()) {
        return Err(Error::invalid("container.Runtime.Name must be set"));
    }
    if c.spec.is_none() {
        return Err(Error::invalid("container.Spec must be set"));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(Error::invalid(
            "container.Snapshotter must be set if container.SnapshotKey is set",
        ));
    }
    Ok(())
}

/// Filter fields of a container, as containerd's adaptor names them.
struct ContainerFields<'a>(&'a Container);

impl Adaptor for ContainerFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        let c = self.0;
        match path {
            ["id"] => Some(c.id.clone()),
            ["image"] => Some(c.image.clone()),
            ["runtime", "name"] => c.runtime.as_ref().map(|r| r.name.clone()),
            ["snapshotter"] => Some(c.snapshotter.clone()),
            ["labels", ..] => label_field(&c.labels, path),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::sync::Arc;

    #[test]
    fn summaries_read_a_stored_container() {
        let c = Container {
            id: "c1".into(),
            labels: [("containerd.io/gc.ref.content.l".into(), "sha256:ab".into())].into(),
            image: "img".into(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: vec![7; 4096],
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: "c1-snap".into(),
            ..Default::default()
        };
        let summary = ContainerSummary::decode(c.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(summary.id, "c1");
        assert_eq!(summary.labels, c.labels);
        assert_eq!(summary.snapshotter, "overlayfs");
        assert_eq!(summary.snapshot_key, "c1-snap");
    }

    fn container(id: &str, key: &str) -> Container {
        Container {
            id: id.into(),
            labels: [("containerd.io/gc.root".into(), "x".into())].into(),
            image: "img".into(),
            runtime: Some(
                berth_api::containerd::services::containers::v1::container::Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                },
            ),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: key.into(),
            ..Default::default()
        }
    }

    fn keys_of(m: &Metadata, ns: &str) -> Vec<(String, String)> {
        let mut v: Vec<_> = m
            .container_summaries(ns)
            .expect("summaries")
            .into_iter()
            .map(|s| (s.id, s.snapshot_key))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn summaries_follow_create_update_delete_and_are_built_for_older_stores() {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(summaries_follow());
    }

    async fn summaries_follow() {
        let dir = std::env::temp_dir().join(format!("berth-meta-summaries-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend: Arc<dyn crate::backend::Backend> =
            Arc::new(crate::backend::SledBackend::open(&dir).expect("open"));
        let m = Metadata::with_backend(backend.clone()).expect("metadata");
        m.create_container("ns", container("a", "snap-a"))
            .await
            .expect("create a");
        m.create_container("ns", container("b", "snap-b"))
            .await
            .expect("create b");
        m.update_container("ns", container("a", "snap-a2"), &["snapshotkey".into()])
            .await
            .expect("update a");
        m.delete_container("ns", "b").await.expect("delete b");
        assert_eq!(keys_of(&m, "ns"), [("a".into(), "snap-a2".into())]);

        // A store from before the summaries: the record only, no summary, no marker.
        let mut old = crate::backend::Batch::default();
        old.delete(keys::object("ns", keys::CONTAINER_ROOTS, "a"));
        old.delete(keys::CONTAINER_ROOTS_BUILT.to_vec());
        backend.apply(old).expect("apply");
        drop(m);
        let m = Metadata::with_backend(backend).expect("reopen");
        assert_eq!(keys_of(&m, "ns"), [("a".into(), "snap-a2".into())]);
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
