//! Progress events on the client's progress stream, in containerd's vocabulary ("resolving",
//! "waiting", "downloading", "already exists", "complete", "extracting", "extracted", "saved",
//! "pushing"...). A client that stopped listening never fails a transfer: its events are dropped.

use crate::streams::Stream;
use berth_api::containerd::types::transfer::Progress as Event;
use berth_api::containerd::types::Descriptor;
use berth_api::pack_any;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Mutex;

/// How long a transfer's answer waits for its last progress events to be taken.
const FLUSH_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Progress {
    stream: Mutex<Option<Stream>>,
    /// Set once sending failed, so the rest are not even tried.
    gone: AtomicBool,
}

/// containerd's ref key for a descriptor: `<kind>-<digest>` (remotes.MakeRefKey).
pub fn ref_key(media_type: &str, digest: &str) -> String {
    let kind = if berth_registry::manifest::is_index(media_type) {
        "index"
    } else if berth_registry::manifest::is_manifest(media_type) {
        "manifest"
    } else if media_type.contains("layer") || media_type.contains("rootfs") {
        "layer"
    } else if media_type.contains("config") {
        "config"
    } else {
        "unknown"
    };
    format!("{kind}-{digest}")
}

impl Progress {
    pub fn new(stream: Option<Stream>) -> Progress {
        Progress {
            stream: Mutex::new(stream),
            gone: AtomicBool::new(false),
        }
    }

    /// An event without a subject ("Resolving from ...", "Completed pull from ...").
    pub async fn note(&self, event: impl Into<String>) {
        self.send(Event {
            event: event.into(),
            ..Event::default()
        })
        .await
    }

    /// An event about one descriptor, named by its ref key.
    pub async fn blob(
        &self,
        event: &str,
        desc: &Descriptor,
        parents: &[String],
        progress: i64,
        total: i64,
    ) {
        self.send(Event {
            event: event.to_string(),
            name: ref_key(&desc.media_type, &desc.digest),
            parents: parents.to_vec(),
            progress,
            total,
            desc: Some(desc.clone()),
        })
        .await
    }

    /// An event about a named thing (an image record: "saved").
    pub async fn named(&self, event: &str, name: &str, desc: Option<Descriptor>) {
        self.send(Event {
            event: event.to_string(),
            name: name.to_string(),
            desc,
            ..Event::default()
        })
        .await
    }

    pub async fn send(&self, event: Event) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        let guard = self.stream.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.send(pack_any(&event)).await.is_err() {
                self.gone.store(true, Ordering::Relaxed);
            }
        }
    }

    /// End the stream once the client has taken every event (see `Stream::flushed`; bounded,
    /// so a client that stopped reading cannot hold the transfer's answer): the client's
    /// progress reader sees its end.
    pub async fn close(&self) {
        let mut guard = self.stream.lock().await;
        if let Some(s) = guard.as_ref() {
            if !self.gone.load(Ordering::Relaxed) {
                s.flushed(FLUSH_BOUND).await;
            }
        }
        guard.take();
    }
}
