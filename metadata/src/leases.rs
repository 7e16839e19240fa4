//! Leases: client-held references that keep content, ingests and snapshots alive while they work.
//! The garbage collector (a later issue) treats them as roots; `containerd.io/gc.expire` ends them.

use super::{keys, now, Metadata, Pending};
use crate::filters::{label_field, Adaptor, Filter};
use crate::validate;
use berth_api::containerd::services::leases::v1::{Lease, Resource};
use berth_errdefs::{Error, Result};
use std::collections::HashSet;
use std::time::SystemTime;

/// The label that gives a lease its end of life, an RFC 3339 time.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

impl Metadata {
    pub fn list_leases(&self, ns: &str, filter: &Filter) -> Result<Vec<Lease>> {
        let all = filter.matches_all();
        self.list::<Lease>(&keys::objects(ns, keys::LEASES), |r| {
            all || filter.matches(&LeaseFields(r))
        })
    }

    pub async fn create_lease(&self, ns: &str, lease: Lease) -> Result<Lease> {
        let (lease, pending) = self.stage_lease(ns, lease)?;
        pending.durable().await?;
        Ok(lease)
    }

    /// [`Metadata::create_lease`], visible at once, durable when the returned [`Pending`] says so.
    pub fn stage_lease(&self, ns: &str, mut lease: Lease) -> Result<(Lease, Pending<'_>)> {
        validate_lease_id(&lease.id)?;
        validate::labels(&lease.labels)?;
        if let Some(expire) = lease.labels.get(EXPIRE_LABEL) {
            parse_expiry(expire)?;
        }
        self.apply(|tx| {
            let key = keys::object(ns, keys::LEASES, &lease.id);
            if tx.exists(&key)? {
                return Err(Error::exists(format!(
                    "lease {:?}: already exists",
                    lease.id
                )));
            }
            tx.ensure_namespace(ns)?;
            lease.created_at = Some(now());
            tx.put(key, &lease);
            Ok(lease)
        })
    }

    pub async fn delete_lease(&self, ns: &str, id: &str) -> Result<()> {
        self.stage_lease_delete(ns, id)?.durable().await
    }

    /// [`Metadata::delete_lease`], visible at once, durable when the returned [`Pending`] says so.
    pub fn stage_lease_delete(&self, ns: &str, id: &str) -> Result<Pending<'_>> {
        let ((), pending) = self.apply(|tx| {
            let key = keys::object(ns, keys::LEASES, id);
            if !tx.exists(&key)? {
                return Err(Error::not_found(format!("lease {id:?}: not found")));
            }
            for k in tx.scan_keys(&keys::lease_resources(ns, id))? {
                tx.delete(k);
            }
            tx.delete(key);
            Ok(())
        })?;
        Ok(pending)
    }

    pub async fn add_lease_resource(&self, ns: &str, lease: &str, r: &Resource) -> Result<()> {
        self.stage_lease_resource(ns, lease, r)?.durable().await
    }

    /// Adds a resource to a lease, visible (to the collector) at once, durable when the returned
    /// [`Pending`] says so.
    pub fn stage_lease_resource(&self, ns: &str, lease: &str, r: &Resource) -> Result<Pending<'_>> {
        validate_resource(r)?;
        let ((), pending) = self.apply(|tx| {
            if !tx.exists(&keys::object(ns, keys::LEASES, lease))? {
                return Err(Error::not_found(format!("lease {lease:?}: not found")));
            }
            tx.put(keys::lease_resource(ns, lease, &r.r#type, &r.id), &());
            Ok(())
        })?;
        Ok(pending)
    }

    pub async fn delete_lease_resource(&self, ns: &str, lease: &str, r: &Resource) -> Result<()> {
        validate_resource(r)?;
        self.update(|tx| {
            if !tx.exists(&keys::object(ns, keys::LEASES, lease))? {
                return Err(Error::not_found(format!("lease {lease:?}: not found")));
            }
            tx.delete(keys::lease_resource(ns, lease, &r.r#type, &r.id));
            Ok(())
        })
        .await
    }

    /// Held shared by whoever finds a committed snapshot and relies on it (an unpack that keeps
    /// an existing chain): from before it leases the snapshot until it has looked that it is
    /// there. The collector removes snapshots only under `snapshot_sweep_lock`, after reading the
    /// leases once more (`leased_snapshots`), so a snapshot found and leased after marking is
    /// never removed under its finder.
    pub async fn snapshot_use_lock(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.snapshot_lock.clone().read_owned().await
    }

    /// The collector's side of `snapshot_use_lock`, held while it removes snapshots.
    pub async fn snapshot_sweep_lock(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.snapshot_lock.clone().write_owned().await
    }

    /// Every snapshot a lease of `ns` holds now, as (snapshotter, key).
    pub fn leased_snapshots(&self, ns: &str) -> Result<HashSet<(String, String)>> {
        let mut held = HashSet::new();
        for lease in self.list_leases(ns, &Filter::parse_all::<&str>(&[])?)? {
            let resources = match self.list_lease_resources(ns, &lease.id) {
                Ok(r) => r,
                Err(e) if e.is_not_found() => continue, // ended meanwhile
                Err(e) => return Err(e),
            };
            for r in resources {
                if let Some(snapshotter) = r.r#type.strip_prefix("snapshots/") {
                    held.insert((snapshotter.to_string(), r.id));
                }
            }
        }
        Ok(held)
    }

    pub fn list_lease_resources(&self, ns: &str, lease: &str) -> Result<Vec<Resource>> {
        if self
            .get::<Lease>(&keys::object(ns, keys::LEASES, lease))?
            .is_none()
        {
            return Err(Error::not_found(format!("lease {lease:?}: not found")));
        }
        let prefix = keys::lease_resources(ns, lease);
        Ok(self
            .scan::<()>(&prefix)?
            .into_iter()
            .filter_map(|(k, _)| {
                let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let (kind, id) = rest.split_once('\0')?;
                Some(Resource {
                    id: id.to_string(),
                    r#type: kind.to_string(),
                })
            })
            .collect())
    }

    /// Delete every lease whose expiry has passed, in all namespaces. Returns how many went.
    pub async fn expire_leases(&self, at: SystemTime) -> Result<usize> {
        let mut expired = Vec::new();
        for ns in self.list_namespaces()? {
            for lease in self.list_leases(&ns.name, &Filter::parse_all::<&str>(&[])?)? {
                let due = lease
                    .labels
                    .get(EXPIRE_LABEL)
                    .and_then(|v| parse_expiry(v).ok())
                    .is_some_and(|t| t <= at);
                if due {
                    expired.push((ns.name.clone(), lease.id));
                }
            }
        }
        for (ns, id) in &expired {
            match self.delete_lease(ns, id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired.len())
    }
}

/// Lease ids are not identifiers in containerd (clients make ids like `123-AbC-`), but must be
/// non-empty and must not contain NUL, which separates parts of our keys.
fn validate_lease_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("lease id must not be empty"));
    }
    if id.contains('\0') || id.len() > 1024 {
        return Err(Error::invalid(format!("lease id {id:?} is invalid")));
    }
    Ok(())
}

/// containerd accepts these resource types: content, ingests and snapshots/<snapshotter>.
fn validate_resource(r: &Resource) -> Result<()> {
    let kind_ok = match r.r#type.as_str() {
        "content" | "ingests" => true,
        t => t
            .strip_prefix("snapshots/")
            .is_some_and(|s| !s.is_empty() && !s.contains('\0')),
    };
    if !kind_ok {
        return Err(Error::invalid(format!(
            "unsupported lease resource type {:?} (want content, ingests or snapshots/<snapshotter>)",
            r.r#type
        )));
    }
    if r.id.is_empty() || r.id.contains('\0') {
        return Err(Error::invalid(format!(
            "lease resource id {:?} is invalid",
            r.id
        )));
    }
    if r.r#type == "content" {
        berth_oci::Digest::parse(&r.id)?;
    }
    Ok(())
}

fn parse_expiry(v: &str) -> Result<SystemTime> {
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Error::invalid(format!(
                "label {EXPIRE_LABEL}={v:?} is not an RFC 3339 time: {e}"
            ))
        })?;
    Ok(t.into())
}

struct LeaseFields<'a>(&'a Lease);

impl Adaptor for LeaseFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] => Some(self.0.id.clone()),
            ["labels", ..] => label_field(&self.0.labels, path),
            _ => None,
        }
    }
}
