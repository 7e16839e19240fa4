//! Network namespaces made ahead of need. Making one is an unshare on a thread of its own:
//! ~0.5 ms alone, 1–3 ms on a pod start's critical path, where the new thread and the kernel's
//! work wait for a CPU beside the pod's holder and cgroups. Naming a spare is one bind mount.
//!
//! A spare is held by an fd alone, with no name and no mount: a daemon that ends or is killed
//! leaves nothing behind (the kernel frees a namespace with its last reference). The fds are
//! close-on-exec, so no plugin, holder or shim inherits one.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::netns;

/// Spares kept ready: back-to-back starts use one at a time; a burst beyond them makes its own.
const SPARES: usize = 2;

#[derive(Debug, Default)]
pub struct NetnsPool {
    ready: Mutex<Vec<OwnedFd>>,
    filling: AtomicBool,
}

impl NetnsPool {
    pub fn new() -> Arc<NetnsPool> {
        Arc::new(NetnsPool::default())
    }

    /// Creates the network namespace `name` as [`netns::create`] does (AlreadyExists if the name
    /// is taken; only `lo` in it, up), from a spare when one is ready.
    pub fn create(&self, name: &str) -> Result<PathBuf> {
        let Some(spare) = self.take() else {
            return netns::create(name);
        };
        // A refused name or bind leaves the spare fresh: nothing was bound on it.
        netns::bind(name, &netns::fd_path(&spare)).inspect_err(|_| self.put(spare))
    }

    /// Makes spares up to the pool's size on a thread of its own, unless one is at it. Called
    /// after an attach rather than in [`NetnsPool::create`], so the making does not compete
    /// with that attach's plugins for a CPU.
    pub fn refill(self: &Arc<Self>) {
        if self.len() >= SPARES || self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::clone(self);
        // The thread enters each new namespace in turn and runs nothing else.
        let spawned = std::thread::Builder::new()
            .name("netns-pool".into())
            .spawn(move || {
                while pool.len() < SPARES {
                    match netns::enter_new() {
                        Ok(fd) => pool.put(fd),
                        Err(e) => {
                            // Each attach then makes its own, and reports what fails.
                            tracing::warn!("making a spare network namespace: {e}");
                            break;
                        }
                    }
                }
                pool.filling.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!("starting the netns pool's thread: {e}");
            self.filling.store(false, Ordering::Release);
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn take(&self) -> Option<OwnedFd> {
        self.lock().pop()
    }

    fn put(&self, fd: OwnedFd) {
        self.lock().push(fd);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OwnedFd>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
