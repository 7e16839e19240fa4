//! Events as a `Stream`: Events.Subscribe with containerd's filters, each envelope with its
//! payload's main attributes decoded (container id, exit status, image name, ...).

use crate::api::events as ev;
use crate::api::services::events::v1::events_client::EventsClient;
use crate::api::services::events::v1::SubscribeRequest;
use crate::api::services::images::v1 as img;
use crate::{Client, Result};
use std::collections::BTreeMap;
use std::time::SystemTime;
use tokio_stream::{Stream, StreamExt};

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    pub timestamp: Option<SystemTime>,
    pub namespace: String,
    pub topic: String,
    /// The payload's type URL.
    pub kind: String,
    /// The payload's main fields by name (`container_id`, `exit_status`, `name`, ...); empty for
    /// payloads this library does not know.
    pub attributes: BTreeMap<String, String>,
}

/// The events of the client's daemon (every namespace; filter on `namespace==` for one).
pub struct Events {
    client: Client,
}

impl Events {
    pub(crate) fn new(client: Client) -> Events {
        Events { client }
    }

    /// Subscribe; the stream ends when the daemon closes it and yields the status that closed
    /// it as an error.
    pub async fn subscribe(
        &self,
        filters: Vec<String>,
    ) -> Result<impl Stream<Item = Result<Event>> + Send + Unpin + 'static> {
        let stream = EventsClient::new(self.client.channel.clone())
            .subscribe(self.client.request(SubscribeRequest { filters }))
            .await?
            .into_inner();
        Ok(stream.map(|item| {
            let envelope = item?;
            let (kind, attributes) = match &envelope.event {
                Some(any) => (any.type_url.clone(), attributes(&envelope.topic, any)),
                None => (String::new(), BTreeMap::new()),
            };
            Ok(Event {
                timestamp: envelope.timestamp.and_then(crate::images::timestamp),
                namespace: envelope.namespace,
                topic: envelope.topic,
                kind,
                attributes,
            })
        }))
    }
}

fn attributes(topic: &str, any: &prost_types::Any) -> BTreeMap<String, String> {
    fn decode<T: prost::Name + Default>(any: &prost_types::Any) -> Option<T> {
        crate::unpack_any(any).ok()
    }
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            out.insert(k.to_string(), v);
        }
    };
    match topic {
        "/tasks/create" => decode::<ev::TaskCreate>(any).map(|e| {
            put("container_id", e.container_id);
            put("pid", e.pid.to_string());
        }),
        "/tasks/start" => decode::<ev::TaskStart>(any).map(|e| {
            put("container_id", e.container_id);
            put("pid", e.pid.to_string());
        }),
        "/tasks/exit" => decode::<ev::TaskExit>(any).map(|e| {
            put("container_id", e.container_id);
            put("id", e.id);
            put("pid", e.pid.to_string());
            put("exit_status", e.exit_status.to_string());
        }),
        "/tasks/delete" => decode::<ev::TaskDelete>(any).map(|e| {
            put("container_id", e.container_id);
            put("id", e.id);
            put("exit_status", e.exit_status.to_string());
        }),
        "/tasks/oom" => decode::<ev::TaskOom>(any).map(|e| put("container_id", e.container_id)),
        "/tasks/paused" => {
            decode::<ev::TaskPaused>(any).map(|e| put("container_id", e.container_id))
        }
        "/tasks/resumed" => {
            decode::<ev::TaskResumed>(any).map(|e| put("container_id", e.container_id))
        }
        "/tasks/exec-added" => decode::<ev::TaskExecAdded>(any).map(|e| {
            put("container_id", e.container_id);
            put("exec_id", e.exec_id);
        }),
        "/tasks/exec-started" => decode::<ev::TaskExecStarted>(any).map(|e| {
            put("container_id", e.container_id);
            put("exec_id", e.exec_id);
            put("pid", e.pid.to_string());
        }),
        "/containers/create" => decode::<ev::ContainerCreate>(any).map(|e| {
            put("id", e.id);
            put("image", e.image);
        }),
        "/containers/update" => decode::<ev::ContainerUpdate>(any).map(|e| {
            put("id", e.id);
            put("image", e.image);
        }),
        "/containers/delete" => decode::<ev::ContainerDelete>(any).map(|e| put("id", e.id)),
        "/images/create" => decode::<img::ImageCreate>(any).map(|e| put("name", e.name)),
        "/images/update" => decode::<img::ImageUpdate>(any).map(|e| put("name", e.name)),
        "/images/delete" => decode::<img::ImageDelete>(any).map(|e| put("name", e.name)),
        "/namespaces/create" => decode::<ev::NamespaceCreate>(any).map(|e| put("name", e.name)),
        "/namespaces/delete" => decode::<ev::NamespaceDelete>(any).map(|e| put("name", e.name)),
        "/snapshot/prepare" => decode::<ev::SnapshotPrepare>(any).map(|e| {
            put("key", e.key);
            put("parent", e.parent);
        }),
        "/snapshot/commit" => decode::<ev::SnapshotCommit>(any).map(|e| {
            put("key", e.key);
            put("name", e.name);
        }),
        "/snapshot/remove" => decode::<ev::SnapshotRemove>(any).map(|e| put("key", e.key)),
        _ => None,
    };
    out
}

pub use crate::clock::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800);
        assert_eq!(rfc3339(t), "2020-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3661);
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01Z");
    }
}
