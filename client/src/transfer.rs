//! Image transfers through berthd's Transfer service, as ctr 2 drives it: pull and push
//! (registry <-> image store, unpacked into the default snapshotter for the host platform),
//! import from a reader and export to a writer (archive bytes over a Streaming stream with
//! containerd's Data/WindowUpdate flow), each with its progress events handed to the caller.

use crate::api::services::streaming::v1::streaming_client::StreamingClient;
use crate::api::services::streaming::v1::StreamInit;
use crate::api::services::transfer::v1::transfer_client::TransferClient;
use crate::api::services::transfer::v1::{TransferOptions, TransferRequest};
use crate::api::types::transfer::{
    AuthRequest, AuthResponse, AuthType, Data, ImageExportStream, ImageImportStream,
    ImageReference, ImageStore, OciRegistry, Progress as ApiProgress, RegistryResolver,
    UnpackConfiguration, WindowUpdate,
};
use crate::api::types::Platform;
use crate::containers::DEFAULT_SNAPSHOTTER;
use crate::{Client, Error, Result};
use berth_api::{pack_any, type_url, unpack_any};
use prost_types::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// containerd's client sends at most this much per `Data` and grants twice it per window.
const MAX_DATA: usize = 32 * 1024;
const WINDOW: i32 = 2 * MAX_DATA as i32;
/// Progress events buffered before the daemon's sends wait for the caller.
const PROGRESS_BUFFER: usize = 256;

/// One progress event, in containerd's vocabulary ("resolving", "downloading", "complete",
/// "extracted", "saved", "pushing"...). `name` is the ref key (`layer-sha256:...`) of a blob,
/// or an image name for "saved".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressEvent {
    pub event: String,
    pub name: String,
    pub parents: Vec<String>,
    pub progress: i64,
    pub total: i64,
    pub digest: Option<String>,
    pub media_type: Option<String>,
}

impl From<ApiProgress> for ProgressEvent {
    fn from(p: ApiProgress) -> Self {
        ProgressEvent {
            event: p.event,
            name: p.name,
            parents: p.parents,
            progress: p.progress,
            total: p.total,
            digest: p.desc.as_ref().map(|d| d.digest.clone()),
            media_type: p.desc.map(|d| d.media_type),
        }
    }
}

/// A transfer under way: its progress events, then its outcome.
pub struct Transfer<T> {
    events: ReceiverStream<ProgressEvent>,
    done: JoinHandle<Result<T>>,
}

impl<T> Transfer<T> {
    /// A handle that cancels the transfer (its RPC to the daemon is dropped, so the daemon
    /// stops it and records nothing), e.g. when the caller's own deadline passes.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.done.abort_handle()
    }

    /// The next progress event; None once the daemon closed the progress stream.
    pub async fn next_event(&mut self) -> Option<ProgressEvent> {
        self.events.next().await
    }

    /// Wait for the transfer's end (remaining events are dropped).
    pub async fn finish(self) -> Result<T> {
        drop(self.events);
        self.done
            .await
            .map_err(|e| Error::local(tonic::Code::Internal, format!("transfer task: {e}")))?
    }
}

/// How a pull or push reaches the registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Speak plain HTTP. Loopback registries (`localhost`, `127.*`, `[::1]`) always do, as
    /// docker treats them as insecure registries.
    pub plain_http: bool,
    /// A directory of containerd `hosts.toml` files (`certs.d`) the daemon reads.
    pub hosts_dir: Option<String>,
    /// Credentials the daemon gets over the transfer's auth stream when a registry asks.
    pub auth: Option<RegistryAuth>,
}

/// Credentials a client hands a pull, answered on the daemon's auth stream; never printed.
#[derive(Clone)]
pub struct RegistryAuth {
    /// Only for this registry host (`host[:port]`); None: whichever host asks.
    pub host: Option<String>,
    pub secret: RegistrySecret,
}

/// What the daemon is told when it asks (containerd's AuthResponse kinds).
#[derive(Clone)]
pub enum RegistrySecret {
    /// A username and password (basic auth, or a token realm's password grant).
    Basic { username: String, password: String },
    /// A refresh token (docker's `identitytoken`) for the realm's refresh_token grant.
    IdentityToken { username: String, token: String },
    /// A registry bearer token, sent as an `Authorization: Bearer` header answer.
    BearerToken(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.secret {
            RegistrySecret::Basic { .. } => "basic",
            RegistrySecret::IdentityToken { .. } => "identity token",
            RegistrySecret::BearerToken(_) => "bearer token",
        };
        f.debug_struct("RegistryAuth")
            .field("host", &self.host)
            .field("secret", &format_args!("<{kind}, redacted>"))
            .finish()
    }
}

impl RegistryAuth {
    fn answer(&self, host: &str) -> AuthResponse {
        if self.host.as_deref().is_some_and(|h| h != host) {
            return AuthResponse::default();
        }
        let (auth_type, username, secret) = match &self.secret {
            RegistrySecret::Basic { username, password } => {
                (AuthType::Credentials, username.clone(), password.clone())
            }
            RegistrySecret::IdentityToken { username, token } => {
                (AuthType::Refresh, username.clone(), token.clone())
            }
            RegistrySecret::BearerToken(token) => {
                (AuthType::Header, String::new(), format!("Bearer {token}"))
            }
        };
        AuthResponse {
            auth_type: auth_type as i32,
            secret,
            username,
            expire_at: None,
        }
    }
}

/// Answer the daemon's credential questions on an auth stream until it closes it.
async fn answer_auth(stream: OpenStream, auth: RegistryAuth) {
    let OpenStream { tx, mut rx, .. } = stream;
    while let Ok(Some(any)) = rx.message().await {
        let Ok(ask) = unpack_any::<AuthRequest>(&any) else {
            continue;
        };
        if tx.send(pack_any(&auth.answer(&ask.host))).await.is_err() {
            return;
        }
    }
}

fn host_platform() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: crate::images::oci_arch().into(),
        ..Platform::default()
    }
}

fn unpack_here() -> Vec<UnpackConfiguration> {
    vec![UnpackConfiguration {
        platform: Some(host_platform()),
        snapshotter: DEFAULT_SNAPSHOTTER.into(),
    }]
}

fn is_loopback_registry(reference: &str) -> bool {
    let host = reference.split('/').next().unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

fn resolver(reference: &str, opts: &RegistryOptions) -> RegistryResolver {
    RegistryResolver {
        default_scheme: if opts.plain_http || is_loopback_registry(reference) {
            "http".into()
        } else {
            String::new()
        },
        host_dir: opts.hosts_dir.clone().unwrap_or_default(),
        ..RegistryResolver::default()
    }
}

static NEXT_STREAM: AtomicU64 = AtomicU64::new(0);

fn stream_id(kind: &str) -> String {
    format!(
        "berth-{kind}-{}-{}",
        std::process::id(),
        NEXT_STREAM.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Streaming/Stream the daemon acknowledged: what we send, what it sends.
struct OpenStream {
    id: String,
    tx: mpsc::Sender<Any>,
    rx: tonic::Streaming<Any>,
}

async fn open_stream(client: &Client, kind: &str) -> Result<OpenStream> {
    let id = stream_id(kind);
    let (tx, rx) = mpsc::channel::<Any>(32);
    tx.send(pack_any(&StreamInit { id: id.clone() }))
        .await
        .map_err(|_| Error::local(tonic::Code::Internal, "stream request channel closed"))?;
    let mut rx = StreamingClient::new(client.channel.clone())
        .stream(client.request(ReceiverStream::new(rx)))
        .await?
        .into_inner();
    // The first reply acknowledges the registration: only then may a transfer name it.
    match rx.message().await? {
        Some(_) => Ok(OpenStream { id, tx, rx }),
        None => Err(Error::local(
            tonic::Code::Unavailable,
            format!("stream {id}: the daemon closed it before acknowledging"),
        )),
    }
}

/// Open the progress stream and forward its events to the returned receiver.
async fn progress_stream(client: &Client) -> Result<(String, ReceiverStream<ProgressEvent>)> {
    let OpenStream { id, tx, mut rx } = open_stream(client, "progress").await?;
    let (events, out) = mpsc::channel(PROGRESS_BUFFER);
    tokio::spawn(async move {
        let _keep_open = tx;
        while let Ok(Some(any)) = rx.message().await {
            if any.type_url != type_url::<ApiProgress>() {
                continue;
            }
            if let Ok(p) = unpack_any::<ApiProgress>(&any) {
                // A caller that stopped listening does not stop the transfer.
                let _ = events.send(ProgressEvent::from(p)).await;
            }
        }
    });
    Ok((id, ReceiverStream::new(out)))
}

impl Client {
    async fn run_transfer<T: Send + 'static>(
        &self,
        source: Any,
        destination: Any,
        extra: Option<JoinHandle<Result<T>>>,
        fallback: T,
        progress: bool,
    ) -> Result<Transfer<T>> {
        // Without progress, no stream is opened (a round trip before the transfer starts) and
        // the events are an empty stream.
        let (progress_id, events) = if progress {
            progress_stream(self).await?
        } else {
            let (_none, rx) = tokio::sync::mpsc::channel(1);
            (String::new(), ReceiverStream::new(rx))
        };
        let client = self.clone();
        let done = tokio::spawn(async move {
            let req = TransferRequest {
                source: Some(source),
                destination: Some(destination),
                options: Some(TransferOptions {
                    progress_stream: progress_id,
                }),
            };
            let res = TransferClient::new(client.channel.clone())
                .transfer(client.request(req))
                .await;
            match (res, extra) {
                (Err(status), Some(side)) => {
                    side.abort();
                    Err(Error::from(status))
                }
                (Err(status), None) => Err(Error::from(status)),
                (Ok(_), Some(side)) => side.await.map_err(|e| {
                    Error::local(tonic::Code::Internal, format!("transfer stream task: {e}"))
                })?,
                (Ok(_), None) => Ok(fallback),
            }
        });
        Ok(Transfer { events, done })
    }
}

impl crate::images::Images {
    /// Pull `reference` (docker's short forms accepted) into the image store, unpacked into
    /// the default snapshotter for this host's platform, like `ctr images pull`.
    /// With `opts.auth`, the daemon asks for credentials over an auth stream.
    pub async fn pull(&self, reference: &str, opts: &RegistryOptions) -> Result<Transfer<()>> {
        self.pull_platform(reference, opts, host_platform(), HashMap::new(), true)
            .await
    }

    /// [`Images::pull`] whose image record carries `labels` (the daemon sets them with the
    /// target, in the one write a pull makes, replacing the record's labels), for a caller
    /// that only waits for the end (the CRI): no progress events.
    ///
    /// [`Images::pull`]: crate::images::Images::pull
    pub async fn pull_labelled(
        &self,
        reference: &str,
        opts: &RegistryOptions,
        labels: HashMap<String, String>,
    ) -> Result<Transfer<()>> {
        self.pull_platform(reference, opts, host_platform(), labels, false)
            .await
    }

    /// [`Images::pull`] of `platform`'s manifest from an index, unpacked for that platform
    /// (`berth build --platform`: a base of another architecture is still files to copy).
    ///
    /// [`Images::pull`]: crate::images::Images::pull
    pub async fn pull_for(
        &self,
        reference: &str,
        opts: &RegistryOptions,
        platform: &berth_registry::Platform,
    ) -> Result<Transfer<()>> {
        let platform = Platform {
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            variant: platform.variant.clone(),
            ..Platform::default()
        };
        self.pull_platform(reference, opts, platform, HashMap::new(), true)
            .await
    }

    async fn pull_platform(
        &self,
        reference: &str,
        opts: &RegistryOptions,
        platform: Platform,
        labels: HashMap<String, String>,
        progress: bool,
    ) -> Result<Transfer<()>> {
        let reference = crate::images::normalize(reference);
        let mut resolver = resolver(&reference, opts);
        if let Some(auth) = &opts.auth {
            let stream = open_stream(self.client(), "auth").await?;
            resolver.auth_stream = stream.id.clone();
            tokio::spawn(answer_auth(stream, auth.clone()));
        }
        let source = OciRegistry {
            reference: reference.clone(),
            resolver: Some(resolver),
        };
        let destination = ImageStore {
            name: reference,
            labels,
            platforms: vec![platform.clone()],
            unpacks: vec![UnpackConfiguration {
                platform: Some(platform),
                snapshotter: DEFAULT_SNAPSHOTTER.into(),
            }],
            ..ImageStore::default()
        };
        self.client()
            .run_transfer(
                pack_any(&source),
                pack_any(&destination),
                None,
                (),
                progress,
            )
            .await
    }

    /// Push the image named `reference` to its registry.
    pub async fn push(&self, reference: &str, opts: &RegistryOptions) -> Result<Transfer<()>> {
        let image = self.get(reference).await?;
        let source = ImageStore {
            name: image.name.clone(),
            platforms: vec![host_platform()],
            ..ImageStore::default()
        };
        let destination = OciRegistry {
            reference: image.name.clone(),
            resolver: Some(resolver(&image.name, opts)),
        };
        self.client()
            .run_transfer(pack_any(&source), pack_any(&destination), None, (), true)
            .await
    }

    /// Import an OCI or docker archive read from `reader`; the images keep the names the
    /// archive gives them ("saved" events name each) and are unpacked for this platform.
    pub async fn import(
        &self,
        reader: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<Transfer<u64>> {
        let stream = open_stream(self.client(), "import").await?;
        let source = ImageImportStream {
            stream: stream.id.clone(),
            ..ImageImportStream::default()
        };
        // ctr's default naming: full names from the archive's annotations as they are, a bare
        // tag under an `import-<date>` prefix.
        let destination = ImageStore {
            platforms: vec![host_platform()],
            unpacks: unpack_here(),
            extra_references: vec![ImageReference {
                name: format!("import-{}", today()),
                is_prefix: true,
                allow_overwrite: true,
                ..ImageReference::default()
            }],
            ..ImageStore::default()
        };
        let sender = tokio::spawn(send_bytes(stream, reader));
        self.client()
            .run_transfer(
                pack_any(&source),
                pack_any(&destination),
                Some(sender),
                0,
                true,
            )
            .await
    }

    /// Export `references` (at least one) as an OCI archive with docker's manifest.json to
    /// `writer`; the transfer's outcome is the number of bytes written.
    pub async fn export(
        &self,
        references: &[String],
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Result<Transfer<u64>> {
        let mut names = Vec::with_capacity(references.len());
        for r in references {
            names.push(self.get(r).await?.name);
        }
        let Some((first, rest)) = names.split_first() else {
            return Err(Error::invalid("export needs at least one image"));
        };
        let stream = open_stream(self.client(), "export").await?;
        let source = ImageStore {
            name: first.clone(),
            extra_references: rest
                .iter()
                .map(|n| ImageReference {
                    name: n.clone(),
                    ..ImageReference::default()
                })
                .collect(),
            ..ImageStore::default()
        };
        let destination = ImageExportStream {
            stream: stream.id.clone(),
            platforms: vec![host_platform()],
            ..ImageExportStream::default()
        };
        let receiver = tokio::spawn(receive_bytes(stream, writer));
        self.client()
            .run_transfer(
                pack_any(&source),
                pack_any(&destination),
                Some(receiver),
                0,
                true,
            )
            .await
    }
}

/// Today's UTC date as YYYY-MM-DD (Howard Hinnant's civil-from-days).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Send `reader`'s bytes within the windows the daemon grants, then end our side.
async fn send_bytes(stream: OpenStream, mut reader: impl AsyncRead + Unpin) -> Result<u64> {
    let OpenStream { id, tx, mut rx } = stream;
    let mut window: i64 = 0;
    let mut sent = 0u64;
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        while window <= 0 {
            let msg = rx.message().await?.ok_or_else(|| {
                Error::local(
                    tonic::Code::Unavailable,
                    format!("stream {id}: the daemon stopped reading after {sent} bytes"),
                )
            })?;
            if let Ok(w) = unpack_any::<WindowUpdate>(&msg) {
                window += i64::from(w.update.max(0));
            }
        }
        let max = window.min(MAX_DATA as i64) as usize;
        let n = reader
            .read(&mut buf[..max])
            .await
            .map_err(|e| Error::io("read the archive to import", e))?;
        if n == 0 {
            // Dropping our sender ends the request stream: the daemon's reader sees EOF. The
            // RPC stays up until the daemon ends it, since cancelling it (dropping `rx`) could
            // discard Data the daemon has not read yet.
            drop(tx);
            while let Ok(Some(_)) = rx.message().await {}
            return Ok(sent);
        }
        tx.send(pack_any(&Data {
            data: buf[..n].to_vec(),
        }))
        .await
        .map_err(|_| {
            Error::local(
                tonic::Code::Unavailable,
                format!("stream {id}: closed while sending"),
            )
        })?;
        window -= n as i64;
        sent += n as u64;
    }
}

/// Write the daemon's `Data` to `writer`, granting a new window as each is drained.
async fn receive_bytes(stream: OpenStream, mut writer: impl AsyncWrite + Unpin) -> Result<u64> {
    let OpenStream { id, tx, mut rx } = stream;
    let closed = || {
        Error::local(
            tonic::Code::Unavailable,
            format!("stream {id}: closed while granting a window"),
        )
    };
    tx.send(pack_any(&WindowUpdate { update: WINDOW }))
        .await
        .map_err(|_| closed())?;
    let mut granted: i64 = i64::from(WINDOW);
    let mut received = 0u64;
    while let Some(msg) = rx.message().await? {
        let Ok(data) = unpack_any::<Data>(&msg) else {
            continue;
        };
        writer
            .write_all(&data.data)
            .await
            .map_err(|e| Error::io("write the exported archive", e))?;
        received += data.data.len() as u64;
        granted -= data.data.len() as i64;
        if granted < i64::from(WINDOW) {
            // The daemon ends the stream when done; a grant it no longer reads is harmless.
            if tx
                .send(pack_any(&WindowUpdate { update: WINDOW }))
                .await
                .is_ok()
            {
                granted += i64::from(WINDOW);
            }
        }
    }
    writer
        .flush()
        .await
        .map_err(|e| Error::io("write the exported archive", e))?;
    Ok(received)
}
