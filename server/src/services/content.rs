//! Content service: blob metadata per namespace, streamed reads, and the lock-step Write protocol
//! (STAT / WRITE / COMMIT, one response per request, resumable by ref).

use super::{lease, mask_paths, namespace, reply, RpcResult, State};
use crate::blocking::blocking;
use berth_api::containerd::events::{ContentCreate, ContentDelete};
use berth_api::containerd::services::content::v1::{content_server::Content, *};
use berth_content::{IngestStatus, Writer};
use berth_errdefs::{Error, Result};
use berth_metadata::filters::{Adaptor, Filter};
use berth_oci::Digest;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status as RpcStatus, Streaming};

pub struct ContentService(pub Arc<State>);

/// containerd's clients send and read 1 MiB chunks.
const READ_CHUNK: usize = 1 << 20;
/// Infos per List response message, as containerd batches them.
const LIST_BATCH: usize = 100;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, RpcStatus>> + Send>>;

fn ingest_key(ns: &str, r#ref: &str) -> String {
    format!("{ns}/{ref}")
}

fn to_status(ns: &str, s: IngestStatus) -> Status {
    Status {
        started_at: Some(s.started_at.into()),
        updated_at: Some(s.updated_at.into()),
        r#ref: s.key[ns.len() + 1..].to_string(),
        offset: s.offset,
        total: s.total,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, req: Request<InfoRequest>) -> RpcResult<InfoResponse> {
        let ns = namespace(&req)?;
        let digest = Digest::parse(&req.get_ref().digest)?;
        reply(InfoResponse {
            info: Some(self.0.meta.content_info(&ns, &digest)?),
        })
    }

    async fn update(&self, req: Request<UpdateRequest>) -> RpcResult<UpdateResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let info = req.info.ok_or_else(|| Error::invalid("info must be set"))?;
        let info = self
            .0
            .meta
            .update_content(&ns, info, &mask_paths(req.update_mask))
            .await?;
        reply(UpdateResponse { info: Some(info) })
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        req: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, RpcStatus> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        let infos = self.0.meta.list_content(&ns, &filter)?;
        let batches: Vec<_> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListContentResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, req: Request<DeleteContentRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let digest = Digest::parse(&req.get_ref().digest)?;
        let last_reference = self.0.meta.remove_content(&ns, &digest).await?;
        if last_reference {
            // As the collector: a commit of the same blob may record it again meanwhile.
            // A file left over on error is harmless and the collector reclaims it.
            crate::controllers::gc::unlink_unrecorded(
                &self.0.meta,
                &self.0.content,
                vec![digest.clone()],
            )
            .await?;
        }
        self.0.events.publish(
            &ns,
            "/content/delete",
            &ContentDelete {
                digest: digest.to_string(),
            },
        );
        reply(())
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        req: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, RpcStatus> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let digest = Digest::parse(&req.digest)?;
        let info = self.0.meta.content_info(&ns, &digest)?;
        if req.offset < 0 || req.offset > info.size {
            return Err(Error::out_of_range(format!(
                "read offset {} is outside content {digest} of size {}",
                req.offset, info.size
            ))
            .into());
        }
        let end = if req.size <= 0 || req.offset.saturating_add(req.size) > info.size {
            info.size
        } else {
            req.offset + req.size
        };
        let content = self.0.content.clone();
        let d = digest.clone();
        let file = blocking(move || content.open_blob(&d)).await?;
        let (tx, rx) = mpsc::channel(4);
        // Read on a blocking thread for as long as the client takes the chunks.
        tokio::spawn(blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut offset = req.offset;
            while offset < end {
                let len = (end - offset).min(READ_CHUNK as i64) as usize;
                let mut data = vec![0u8; len];
                let sent = match file.read_exact_at(&mut data, offset as u64) {
                    Ok(()) => tx.blocking_send(Ok(ReadContentResponse { offset, data })),
                    Err(e) => {
                        let err = Error::io(format!("read {digest} at {offset}"), e);
                        let _ = tx.blocking_send(Err(err.into()));
                        return Ok(());
                    }
                };
                if sent.is_err() {
                    return Ok(()); // client went away
                }
                offset += len as i64;
            }
            Ok(())
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, req: Request<StatusRequest>) -> RpcResult<StatusResponse> {
        let ns = namespace(&req)?;
        let key = ingest_key(&ns, &req.get_ref().r#ref);
        let content = self.0.content.clone();
        let status = blocking(move || content.status(&key)).await?;
        reply(StatusResponse {
            status: Some(to_status(&ns, status)),
        })
    }

    async fn list_statuses(
        &self,
        req: Request<ListStatusesRequest>,
    ) -> RpcResult<ListStatusesResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        let prefix = format!("{ns}/");
        let content = self.0.content.clone();
        let statuses = blocking(move || content.list_ingests())
            .await?
            .into_iter()
            .filter(|s| s.key.starts_with(&prefix))
            .map(|s| to_status(&ns, s))
            .filter(|s| filter.matches(&StatusFields(s)))
            .collect();
        reply(ListStatusesResponse { statuses })
    }

    async fn abort(&self, req: Request<AbortRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let (content, key) = (
            self.0.content.clone(),
            ingest_key(&ns, &req.get_ref().r#ref),
        );
        blocking(move || content.abort(&key)).await?;
        reply(())
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, RpcStatus> {
        let ns = namespace(&req)?;
        let lease = lease(&req)?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let state = self.0.clone();
        tokio::spawn(async move {
            let mut session = WriteSession {
                state,
                ns,
                lease,
                tx: tx.clone(),
            };
            if let Err(e) = session.run(inbound).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Where a Write stream's bytes go: a real ingest, or nothing at all when the blob already sits on
/// disk for another namespace (the client then only commits, as against containerd's shared store).
enum Sink {
    Shared { digest: Digest, size: i64 },
    Ingest(Box<Writer>),
}

struct WriteSession {
    state: Arc<State>,
    ns: String,
    lease: Option<String>,
    tx: mpsc::Sender<Result<WriteContentResponse, RpcStatus>>,
}

impl WriteSession {
    async fn run(&mut self, mut inbound: Streaming<WriteContentRequest>) -> Result<(), RpcStatus> {
        let Some(first) = inbound.message().await? else {
            return Ok(());
        };
        if first.r#ref.is_empty() {
            return Err(Error::invalid("first message of a content write must have a ref").into());
        }
        let r#ref = first.r#ref.clone();
        let expected = parse_expected(&first.expected)?;
        if let Some(d) = &expected {
            let present = match &self.lease {
                Some(lease) => {
                    self.state
                        .meta
                        .lease_content_if_present(&self.ns, lease, d)
                        .await?
                }
                None => self.state.meta.has_content(&self.ns, d)?,
            };
            if present {
                return Err(Error::exists(format!("content {d}: already exists")).into());
            }
        }
        let mut sink = match &expected {
            Some(d) if first.total > 0 => match self.state.content.blob_size(d)? {
                Some(size) if size as i64 == first.total => Sink::Shared {
                    digest: d.clone(),
                    size: first.total,
                },
                _ => Sink::Ingest(Box::new(
                    self.open_writer(&r#ref, first.total, expected.clone())
                        .await?,
                )),
            },
            _ => Sink::Ingest(Box::new(
                self.open_writer(&r#ref, first.total, expected.clone())
                    .await?,
            )),
        };
        if let Some(lease) = &self.lease {
            self.state
                .meta
                .lease_ingest(&self.ns, lease, &r#ref)
                .await?;
        }

        let mut next = Some(first);
        while let Some(mut msg) = next.take() {
            let action = WriteAction::try_from(msg.action)
                .map_err(|_| Error::invalid(format!("unknown write action {}", msg.action)))?;
            // Later messages may bring the total or the expected digest.
            let msg_expected = parse_expected(&msg.expected)?;
            if let Sink::Ingest(w) = &mut sink {
                if msg.total > 0 {
                    w.set_total(msg.total);
                }
                if let Some(d) = &msg_expected {
                    w.set_expected(d.clone());
                }
            }
            // As containerd's Write: a WRITE or COMMIT at offset 0 after data starts the ingest
            // over (truncates it), with or without data; any other offset must be the current one.
            let restarts =
                matches!(&sink, Sink::Ingest(w) if msg.offset == 0 && w.status().offset > 0);
            if let (WriteAction::Write | WriteAction::Commit, Sink::Ingest(w)) = (action, &mut sink)
            {
                if msg.data.is_empty() && !restarts {
                    // Only the offset check: no I/O, so no offload.
                    w.write_at(msg.offset, &[])?;
                }
            }
            if action != WriteAction::Stat && (!msg.data.is_empty() || restarts) {
                if let Sink::Shared { .. } = sink {
                    // The client sends bytes after all: write them like any other blob.
                    sink = Sink::Ingest(Box::new(
                        self.open_writer(&r#ref, msg.total, msg_expected.clone())
                            .await?,
                    ));
                }
                sink = match sink {
                    Sink::Ingest(mut w) => {
                        let (offset, data) = (msg.offset, std::mem::take(&mut msg.data));
                        let (w, written) = blocking(move || {
                            let written = w.write_at(offset, &data);
                            Ok((w, written))
                        })
                        .await?;
                        written?;
                        Sink::Ingest(w)
                    }
                    shared => shared,
                };
            }
            match action {
                WriteAction::Stat | WriteAction::Write => {
                    self.send(response(action, &sink)).await?;
                }
                WriteAction::Commit => {
                    let resp = self.commit(sink, msg).await?;
                    self.send(resp).await?;
                    return Ok(());
                }
            }
            next = inbound.message().await?;
        }
        Ok(())
    }

    /// Opening may wait for the ref's lock and re-hash a resumed ingest: keep it off the reactor.
    async fn open_writer(
        &self,
        r#ref: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Writer> {
        let (content, key) = (self.state.content.clone(), ingest_key(&self.ns, r#ref));
        blocking(move || content.writer(&key, total, expected)).await
    }

    async fn commit(
        &self,
        sink: Sink,
        msg: WriteContentRequest,
    ) -> Result<WriteContentResponse, RpcStatus> {
        let expected = parse_expected(&msg.expected)?;
        // From the blob found or committed to its record: the collector must not unlink it.
        let _recording = self.state.meta.content_commit_lock().await;
        let (digest, size) = match sink {
            Sink::Shared { digest, size } => {
                if self.state.content.blob_size(&digest)? != Some(size as u64) {
                    return Err(Error::not_found(format!(
                        "content {digest}: collected before the commit; write it again"
                    ))
                    .into());
                }
                if expected.as_ref().is_some_and(|e| *e != digest)
                    || (msg.total > 0 && msg.total != size)
                {
                    return Err(
                        Error::invalid("commit does not match the blob being written").into(),
                    );
                }
                (digest, size)
            }
            Sink::Ingest(w) => {
                let (total, expected) = (msg.total, expected.clone());
                let committed = blocking(move || (*w).commit(total, expected.as_ref())).await?;
                (committed.digest, committed.size as i64)
            }
        };
        self.state
            .meta
            .add_content(&self.ns, &digest, size, msg.labels, self.lease.as_deref())
            .await?;
        // containerd 2 announces every committed blob; a write stream carries no media type.
        self.state.events.publish(
            &self.ns,
            "/content/create",
            &ContentCreate {
                digest: digest.to_string(),
                size,
                media_type: String::new(),
            },
        );
        let now = berth_metadata::now();
        Ok(WriteContentResponse {
            action: WriteAction::Commit as i32,
            started_at: Some(now),
            updated_at: Some(now),
            offset: size,
            total: size,
            digest: digest.to_string(),
        })
    }

    async fn send(&self, resp: WriteContentResponse) -> Result<(), RpcStatus> {
        self.tx
            .send(Ok(resp))
            .await
            .map_err(|_| Error::canceled("client closed the write stream").into())
    }
}

fn parse_expected(s: &str) -> Result<Option<Digest>> {
    if s.is_empty() {
        Ok(None)
    } else {
        Digest::parse(s).map(Some)
    }
}

fn response(action: WriteAction, sink: &Sink) -> WriteContentResponse {
    match sink {
        Sink::Shared { digest, size } => {
            let now = berth_metadata::now();
            WriteContentResponse {
                action: action as i32,
                started_at: Some(now),
                updated_at: Some(now),
                offset: *size,
                total: *size,
                digest: digest.to_string(),
            }
        }
        Sink::Ingest(w) => {
            let s = w.status();
            WriteContentResponse {
                action: action as i32,
                started_at: Some(s.started_at.into()),
                updated_at: Some(s.updated_at.into()),
                offset: s.offset,
                total: s.total,
                digest: w.digest().to_string(),
            }
        }
    }
}

struct StatusFields<'a>(&'a Status);

impl Adaptor for StatusFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["ref"] => Some(self.0.r#ref.clone()),
            ["expected"] => Some(self.0.expected.clone()),
            _ => None,
        }
    }
}
