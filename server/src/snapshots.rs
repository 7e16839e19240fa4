//! Snapshotters by name, seen through namespaces.
//!
//! A snapshotter stores opaque keys; berthd prefixes every key and committed name with
//! `<namespace>/`, so two namespaces can hold the same chain ID or key without seeing each other.

use berth_errdefs::{Error, Result};
use berth_snapshotter::{Info, Mount, Snapshotter, Usage};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

/// Mounts as snapshotters describe them, in the API's type (both are foreign to berthd, so these
/// are functions rather than `From` impls).
pub fn to_api_mounts(mounts: Vec<Mount>) -> Vec<berth_api::containerd::types::Mount> {
    mounts
        .into_iter()
        .map(|m| berth_api::containerd::types::Mount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

/// Mounts a client (or a remote snapshotter) sent, in the snapshotter crate's type.
pub fn from_api_mounts(mounts: Vec<berth_api::containerd::types::Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

/// One namespace's snapshots: by snapshotter, then by key.
pub type NamespaceSnapshots = HashMap<String, HashMap<String, Info>>;

#[derive(Default, Clone)]
pub struct Snapshotters {
    by_name: BTreeMap<String, Arc<dyn Snapshotter>>,
    /// Per namespace: creating a snapshot holds it shared, deleting the namespace exclusive, so
    /// the "no snapshots" check and the deletion cannot straddle a Prepare or View.
    guards: Arc<std::sync::Mutex<HashMap<String, Weak<tokio::sync::RwLock<()>>>>>,
}

impl Snapshotters {
    pub fn insert(&mut self, s: Arc<dyn Snapshotter>) {
        self.by_name.insert(s.name().to_string(), s);
    }

    /// The guard of namespace `ns` (see `guards`); take it shared around creating a snapshot,
    /// exclusive around deleting the namespace.
    pub fn namespace_guard(&self, ns: &str) -> Arc<tokio::sync::RwLock<()>> {
        // A poisoned lock only means a panic mid-update of a plain map.
        let mut guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = guards.get(ns).and_then(Weak::upgrade) {
            return g;
        }
        // Entries live only while someone holds them.
        guards.retain(|_, g| g.strong_count() > 0);
        let g = Arc::new(tokio::sync::RwLock::new(()));
        guards.insert(ns.to_string(), Arc::downgrade(&g));
        g
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// One snapshotter, scoped to a namespace.
    pub fn scoped(&self, name: &str, ns: &str) -> Result<Scoped> {
        let inner = self.by_name.get(name).cloned().ok_or_else(|| {
            Error::invalid(format!(
                "snapshotter {name:?} is not loaded (available: {})",
                self.names().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(Scoped {
            inner,
            prefix: format!("{ns}/"),
        })
    }

    /// Every snapshot of every snapshotter, by namespace, snapshotter and key (names and parents
    /// as the namespace sees them): one walk of each snapshotter, however many namespaces.
    pub fn list_by_namespace(&self) -> Result<HashMap<String, NamespaceSnapshots>> {
        let mut out: HashMap<String, NamespaceSnapshots> = HashMap::new();
        for (name, s) in &self.by_name {
            s.walk(&mut |info| {
                // Every key berthd stores is `<ns>/<key>`; anything else is not a tenant's.
                let Some((ns, key)) = info.name.split_once('/') else {
                    return Ok(());
                };
                let prefix_len = ns.len() + 1;
                let mut info = info.clone();
                info.parent = info
                    .parent
                    .get(prefix_len..)
                    .unwrap_or_default()
                    .to_string();
                let key = key.to_string();
                info.name = key.clone();
                out.entry(ns.to_string())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .insert(key, info);
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Whether any snapshotter holds a snapshot of `ns` (a namespace must be empty to go).
    pub fn namespace_in_use(&self, ns: &str) -> Result<bool> {
        let prefix = format!("{ns}/");
        for s in self.by_name.values() {
            let mut found = false;
            s.walk(&mut |info| {
                found |= info.name.starts_with(&prefix);
                Ok(())
            })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A snapshotter as one namespace sees it. Blocking: call through `crate::blocking::blocking`.
pub struct Scoped {
    inner: Arc<dyn Snapshotter>,
    prefix: String,
}

impl Scoped {
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    fn key(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            return Err(Error::invalid("snapshot key must not be empty"));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// Parents are optional; an empty one stays empty.
    fn parent(&self, parent: &str) -> String {
        if parent.is_empty() {
            String::new()
        } else {
            format!("{}{parent}", self.prefix)
        }
    }

    fn unscope(&self, mut info: Info) -> Info {
        info.name = info
            .name
            .strip_prefix(&self.prefix)
            .unwrap_or(&info.name)
            .to_string();
        info.parent = info
            .parent
            .strip_prefix(&self.prefix)
            .unwrap_or(&info.parent)
            .to_string();
        info
    }

    /// Error messages name the client's key, not our namespaced one; the class stays.
    fn err(&self, e: berth_snapshotter::Error) -> Error {
        let strip = |name: &str| name.strip_prefix(&self.prefix).unwrap_or(name).to_string();
        let message = match e.snapshot() {
            Some(name) => Some(format!("snapshot {:?}: {}", strip(name), e.kind())),
            // An I/O error's message names paths, not keys.
            None if std::error::Error::source(&e).is_none() => {
                Some(e.message().replace(&self.prefix, ""))
            }
            None => None,
        };
        match message {
            Some(m) => e.with_message(m).into(),
            None => e.into(),
        }
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        let info = self.inner.stat(&self.key(key)?).map_err(|e| self.err(e))?;
        Ok(self.unscope(info))
    }

    pub fn update(&self, mut info: Info, paths: &[String]) -> Result<Info> {
        info.name = self.key(&info.name)?;
        info.parent = self.parent(&info.parent);
        let info = self.inner.update(info, paths).map_err(|e| self.err(e))?;
        Ok(self.unscope(info))
    }

    pub fn usage(&self, key: &str) -> Result<Usage> {
        self.inner.usage(&self.key(key)?).map_err(|e| self.err(e))
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.inner.mounts(&self.key(key)?).map_err(|e| self.err(e))
    }

    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.inner
            .prepare(&self.key(key)?, &self.parent(parent), labels)
            .map_err(|e| self.err(e))
    }

    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.inner
            .view(&self.key(key)?, &self.parent(parent), labels)
            .map_err(|e| self.err(e))
    }

    pub fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        self.inner
            .commit(&self.key(name)?, &self.key(key)?, labels)
            .map_err(|e| self.err(e))
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        self.inner.remove(&self.key(key)?).map_err(|e| self.err(e))
    }

    /// Whether [`Scoped::commit_onto`] works (the snapshotter's "rebase" capability).
    pub fn can_rebase(&self) -> bool {
        self.inner.can_rebase()
    }

    /// Commits the parentless active snapshot `key` as `name` on top of the committed `parent`.
    pub fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.inner
            .commit_onto(
                &self.key(name)?,
                &self.key(key)?,
                &self.parent(parent),
                labels,
            )
            .map_err(|e| self.err(e))
    }

    /// Every snapshot of this namespace.
    pub fn list(&self) -> Result<Vec<Info>> {
        let mut out = Vec::new();
        self.inner.walk(&mut |info| {
            if info.name.starts_with(&self.prefix) {
                out.push(info.clone());
            }
            Ok(())
        })?;
        Ok(out.into_iter().map(|i| self.unscope(i)).collect())
    }

    pub fn active_dir(&self, key: &str) -> Result<std::path::PathBuf> {
        self.inner
            .active_dir(&self.key(key)?)
            .map_err(|e| self.err(e))
    }

    pub fn cleanup(&self) -> Result<()> {
        Ok(self.inner.cleanup()?)
    }
}
