//! The distribution client: one `Client` per caller (or daemon), holding HTTP connections per
//! TLS configuration, learned challenges, cached tokens, and the download semaphore. Every
//! request goes through `send`, which owns authorization, the localhost HTTP fallback,
//! redirects (followed by hand so credentials never leave the host that challenged) and the
//! progress timeout.

use crate::auth::{parse_challenges, Challenge, TokenCache, TokenResponse};
use crate::credentials::{Anonymous, CredentialProvider, Credentials};
use crate::error::Error;
use crate::hosts::{HostsConfig, RegistryHost, TlsSettings};
use crate::http::HttpClients;
use crate::manifest::{self, Descriptor, Document, Manifest, Platform, ACCEPT_MANIFESTS};
use crate::reference::Reference;
use crate::verify::{sha256_digest, BlobReader, Resume};
use base64::Engine;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Bounds of one client. The defaults follow containerd where it has one.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest manifest or index read (containerd: 4 MiB).
    pub max_manifest_size: u64,
    /// Most layers in a manifest, and most entries in an index.
    pub max_layers: usize,
    /// Blob downloads in flight at once (containerd's `max_concurrent_downloads`: 3).
    pub max_concurrent_downloads: usize,
    /// No byte moving for this long fails a request: a stall, not a slow transfer.
    pub progress_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_redirects: usize,
    /// Largest token-server answer and error body read.
    pub max_small_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_size: 4 << 20,
            max_layers: 512,
            max_concurrent_downloads: 3,
            progress_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            max_redirects: 10,
            max_small_body: 1 << 20,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub hosts: HostsConfig,
    pub limits: Limits,
    pub user_agent: String,
    /// Follow a layer descriptor's `urls` (foreign layers) when the registry does not have the
    /// blob. Off by default (CVE-2020-15157); credentials are never sent there.
    pub allow_foreign_urls: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            hosts: HostsConfig::default(),
            limits: Limits::default(),
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            allow_foreign_urls: false,
        }
    }
}

/// What `push_blob` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The registry already had the blob in this repository.
    Exists,
    /// Mounted from another repository of the same registry; no bytes sent.
    Mounted,
    Uploaded,
}

/// Bytes of a blob to push. A stream is sent once, so it is not retried.
pub enum BlobSource {
    Bytes(Bytes),
    Stream(Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>),
}

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Repositories of the same registry that may hold the blob (cross-repository mount).
    pub mount_from: Vec<String>,
    /// Chunked upload (PATCH per chunk); None uploads in one PUT.
    pub chunk_size: Option<usize>,
}

/// The image manifest picked for a reference, with what led to it.
#[derive(Clone, Debug)]
pub struct PulledManifest {
    /// What the reference resolved to (an index or a manifest).
    pub root: Descriptor,
    /// The index bytes when the root is one.
    pub index: Option<Bytes>,
    /// The platform manifest chosen (the root itself for a single manifest).
    pub descriptor: Descriptor,
    pub manifest: Manifest,
    pub bytes: Bytes,
}

/// A request body: replayable bytes, or a stream that can be sent once.
enum ReqBody {
    Empty,
    Bytes(Bytes),
    Stream(Option<reqwest::Body>),
}

/// One logical request: where, what, and which scope of token it needs.
struct Req<'a> {
    host: &'a RegistryHost,
    method: Method,
    /// The URL below the host's API root (`/<repo>/manifests/<tag>`), or an absolute URL the
    /// registry handed out (an upload Location).
    target: Target,
    headers: Vec<(&'static str, String)>,
    body: ReqBody,
    scopes: Vec<String>,
    /// Shared with a streaming body, which bumps it as bytes go out.
    progress: Arc<Progress>,
}

enum Target {
    Api(String),
    Absolute(url::Url),
}

/// Milliseconds since `start` at which bytes last moved.
pub(crate) struct Progress {
    start: Instant,
    last: AtomicU64,
}

impl Progress {
    pub(crate) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
        })
    }
    pub(crate) fn bump(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Run `fut`, failing when `progress` has not moved for `limit`.
async fn with_progress<T>(
    what: &str,
    limit: Duration,
    progress: &Progress,
    fut: impl Future<Output = T>,
) -> Result<T, Error> {
    progress.bump();
    tokio::pin!(fut);
    let tick = (limit / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep(tick) => {
                if progress.idle() >= limit {
                    return Err(Error::Timeout { what: what.to_string(), after: limit });
                }
            }
        }
    }
}

struct Inner {
    config: ClientConfig,
    credentials: Arc<dyn CredentialProvider>,
    downloads: Arc<Semaphore>,
    http: HttpClients,
    /// The challenge each host answered with, so later requests authorize up front.
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: TokenCache,
    /// Loopback hosts that turned out to speak plain HTTP.
    plain_http: Mutex<HashSet<String>>,
}

/// The client. Cheap to clone; clones share connections, tokens and the download semaphore.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        let downloads = Arc::new(Semaphore::new(
            config.limits.max_concurrent_downloads.max(1),
        ));
        Client::with_parts(
            config,
            Arc::new(Anonymous),
            downloads,
            HttpClients::default(),
        )
    }

    /// A client asking `credentials` when a host challenges, taking download permits from
    /// `downloads` and its connections from `http`: share both daemon-wide, to bound all pulls
    /// together and to keep connections (and the cost of setting up TLS) from pull to pull.
    pub fn with_parts(
        config: ClientConfig,
        credentials: Arc<dyn CredentialProvider>,
        downloads: Arc<Semaphore>,
        http: HttpClients,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                config,
                credentials,
                downloads,
                http,
                challenges: Mutex::new(HashMap::new()),
                tokens: TokenCache::default(),
                plain_http: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn with_credentials(
        config: ClientConfig,
        credentials: Arc<dyn CredentialProvider>,
    ) -> Client {
        let downloads = Arc::new(Semaphore::new(
            config.limits.max_concurrent_downloads.max(1),
        ));
        Client::with_parts(config, credentials, downloads, HttpClients::default())
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// The hosts to try for `reference`, per hosts.toml.
    pub fn hosts(&self, reference: &Reference) -> Result<Vec<RegistryHost>, Error> {
        self.inner.config.hosts.hosts(reference.domain())
    }

    fn http_client(&self, tls: &TlsSettings) -> Result<reqwest::Client, Error> {
        let cfg = &self.inner.config;
        self.inner
            .http
            .get(tls, cfg.limits.connect_timeout, &cfg.user_agent)
    }

    fn scheme_of(&self, host: &RegistryHost) -> &'static str {
        if host.scheme == "http" || lock(&self.inner.plain_http).contains(&host.host) {
            "http"
        } else {
            "https"
        }
    }

    fn url_of(&self, host: &RegistryHost, target: &Target) -> Result<url::Url, Error> {
        match target {
            Target::Absolute(u) => Ok(u.clone()),
            Target::Api(suffix) => {
                let s = format!(
                    "{}://{}{}{}",
                    self.scheme_of(host),
                    host.host,
                    host.path,
                    suffix
                );
                url::Url::parse(&s).map_err(|e| Error::Protocol {
                    url: s.clone(),
                    message: format!("bad URL: {e}"),
                })
            }
        }
    }

    /// The Authorization header for `host` under `scopes`, from what it challenged with before.
    async fn authorization(
        &self,
        host: &RegistryHost,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, Error> {
        let challenge = lock(&self.inner.challenges).get(&host.host).cloned();
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        let value = if challenge.is_bearer() {
            let key = scopes.join(" ");
            let token = match self.inner.tokens.get(&host.host, &key) {
                Some(t) => t,
                None => self.fetch_token(host, &challenge, scopes).await?,
            };
            format!("Bearer {token}")
        } else if challenge.is_basic() {
            match self.inner.credentials.credentials(&host.host).await? {
                Some(Credentials::Basic { username, password }) => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                ),
                _ => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            Error::Credentials(format!("{}: credentials are not a valid header", host.host))
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// Get a token from the challenge's realm for `scopes`, with `host`'s credentials if it has any.
    async fn fetch_token(
        &self,
        host: &RegistryHost,
        challenge: &Challenge,
        scopes: &[String],
    ) -> Result<String, Error> {
        let realm = challenge.param("realm").ok_or_else(|| Error::Protocol {
            url: host.host.clone(),
            message: "bearer challenge without a realm".into(),
        })?;
        let mut url = url::Url::parse(realm).map_err(|e| Error::Protocol {
            url: host.host.clone(),
            message: format!("bearer realm {realm:?}: {e}"),
        })?;
        let realm_host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => {
                return Err(Error::Protocol {
                    url: host.host.clone(),
                    message: "bearer realm without a host".into(),
                })
            }
        };
        let creds_allowed =
            crate::auth::realm_may_have_credentials(url.scheme(), &realm_host, &host.host);
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Error::Protocol {
                url: host.host.clone(),
                message: format!("bearer realm scheme {:?} refused", url.scheme()),
            });
        }
        let creds = if creds_allowed {
            self.inner.credentials.credentials(&host.host).await?
        } else {
            None
        };
        let service = challenge.param("service");
        let client = self.http_client(&host.tls)?;
        let limit = self.inner.config.limits.progress_timeout;
        let req = match &creds {
            Some(Credentials::IdentityToken { token, .. }) => {
                // OAuth refresh-token grant: the token goes in the POST body, never a URL.
                let mut form: Vec<(&str, &str)> = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token),
                    ("client_id", "berth"),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                let scope = scopes.join(" ");
                form.push(("scope", &scope));
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish();
                client
                    .post(url.clone())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                }
                let mut r = client.get(url.clone());
                if let Some(Credentials::Basic { username, password }) = other {
                    r = r.basic_auth(username, Some(password));
                }
                r
            }
        };
        let shown = {
            let mut u = url.clone();
            u.set_query(None);
            u.to_string()
        };
        let progress = Progress::new();
        let resp = with_progress(&shown, limit, &progress, req.send())
            .await?
            .map_err(|e| Error::Http {
                url: shown.clone(),
                source: e.without_url(),
            })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized(format!(
                "{} (token server {shown})",
                host.host
            )));
        }
        if !status.is_success() {
            return Err(Error::Status {
                url: shown,
                status: status.as_u16(),
                detail: " from the token server".into(),
            });
        }
        let body = read_bounded(
            resp,
            &shown,
            self.inner.config.limits.max_small_body as u64,
            limit,
        )
        .await?;
        let tr: TokenResponse = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            url: shown.clone(),
            message: format!("token response: {e}"),
        })?;
        let token = tr
            .token
            .filter(|t| !t.is_empty())
            .or(tr.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Protocol {
                url: shown.clone(),
                message: "token response without a token".into(),
            })?;
        self.inner
            .tokens
            .put(&host.host, &scopes.join(" "), token.clone(), tr.expires_in);
        Ok(token)
    }

    /// Send a request: authorize, fall back to HTTP for loopback, answer one 401 with a fresh
    /// challenge, follow redirects (GET/HEAD) without credentials off the origin.
    async fn send(&self, mut req: Req<'_>) -> Result<reqwest::Response, Error> {
        let limits = &self.inner.config.limits;
        let client = self.http_client(&req.host.tls)?;
        let mut retried_auth = false;
        let mut fell_back = false;
        loop {
            let url = self.url_of(req.host, &req.target)?;
            let shown = shown_url(&url);
            let origin_ok = same_origin_host(&url, &req.host.host);
            let auth = if origin_ok {
                self.authorization(req.host, &req.scopes).await?
            } else {
                None
            };
            let mut headers = HeaderMap::new();
            if origin_ok {
                for (k, v) in &req.host.headers {
                    if let (Ok(k), Ok(v)) = (
                        reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(v),
                    ) {
                        headers.append(k, v);
                    }
                }
            }
            for (k, v) in &req.headers {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.insert(*k, v);
                }
            }
            if let Some(a) = auth {
                headers.insert(AUTHORIZATION, a);
            }
            let mut rb = client
                .request(req.method.clone(), url.clone())
                .headers(headers);
            let replayable = match &mut req.body {
                ReqBody::Empty => true,
                ReqBody::Bytes(b) => {
                    rb = rb.body(b.clone());
                    true
                }
                ReqBody::Stream(s) => match s.take() {
                    Some(body) => {
                        rb = rb.body(body);
                        false
                    }
                    None => {
                        return Err(Error::Protocol {
                            url: shown,
                            message: "the upload was refused and its stream cannot be sent again"
                                .into(),
                        })
                    }
                },
            };
            tracing::debug!(method = %req.method, url = %shown, "registry request");
            let sent =
                with_progress(&shown, limits.progress_timeout, &req.progress, rb.send()).await?;
            let resp = match sent {
                Ok(r) => r,
                Err(e)
                    if is_plain_http_answer(&e)
                        && req.host.http_fallback
                        && !fell_back
                        && url.scheme() == "https"
                        && matches!(req.target, Target::Api(_))
                        && replayable =>
                {
                    tracing::debug!(host = %req.host.host, "a loopback host answered TLS in plain HTTP; using http");
                    lock(&self.inner.plain_http).insert(req.host.host.clone());
                    fell_back = true;
                    continue;
                }
                Err(e) => {
                    return Err(Error::Http {
                        url: shown,
                        source: e.without_url(),
                    })
                }
            };
            let status = resp.status();
            tracing::debug!(url = %shown, status = status.as_u16(), "registry response");
            if status == StatusCode::UNAUTHORIZED && origin_ok {
                let challenges: Vec<Challenge> = resp
                    .headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                let pick = challenges
                    .iter()
                    .find(|c| c.is_bearer())
                    .or_else(|| challenges.iter().find(|c| c.is_basic()))
                    .cloned();
                if retried_auth || !replayable || pick.is_none() {
                    return Err(Error::Unauthorized(shown));
                }
                retried_auth = true;
                if let Some(c) = pick {
                    lock(&self.inner.challenges).insert(req.host.host.clone(), c);
                }
                self.inner
                    .tokens
                    .invalidate(&req.host.host, &req.scopes.join(" "));
                continue;
            }
            if status.is_redirection() && (req.method == Method::GET || req.method == Method::HEAD)
            {
                return self.follow_redirects(&client, &req, resp, url).await;
            }
            return Ok(resp);
        }
    }

    /// Follow a redirect chain. Credentials and configured headers go only to the origin
    /// that challenged; an HTTPS chain never continues over plain HTTP.
    async fn follow_redirects(
        &self,
        client: &reqwest::Client,
        req: &Req<'_>,
        mut resp: reqwest::Response,
        mut url: url::Url,
    ) -> Result<reqwest::Response, Error> {
        let limits = &self.inner.config.limits;
        for _ in 0..limits.max_redirects {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let shown = shown_url(&url);
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Error::Protocol {
                    url: shown.clone(),
                    message: format!("redirect {} without a Location", resp.status()),
                })?;
            let next = url.join(location).map_err(|e| Error::Protocol {
                url: shown.clone(),
                message: format!("bad redirect Location: {e}"),
            })?;
            if next.scheme() != "https" && next.scheme() != "http" {
                return Err(Error::Protocol {
                    url: shown,
                    message: "redirect to a non-HTTP URL refused".into(),
                });
            }
            if url.scheme() == "https" && next.scheme() == "http" {
                return Err(Error::Protocol {
                    url: shown,
                    message: "redirect from https to plain http refused".into(),
                });
            }
            let mut headers = HeaderMap::new();
            for (k, v) in &req.headers {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.insert(*k, v);
                }
            }
            if same_origin_host(&next, &req.host.host) && next.scheme() == url.scheme() {
                if let Some(a) = self.authorization(req.host, &req.scopes).await? {
                    headers.insert(AUTHORIZATION, a);
                }
            }
            let next_shown = shown_url(&next);
            tracing::debug!(url = %next_shown, "following redirect");
            let rb = client
                .request(req.method.clone(), next.clone())
                .headers(headers);
            resp = with_progress(
                &next_shown,
                limits.progress_timeout,
                &req.progress,
                rb.send(),
            )
            .await?
            .map_err(|e| Error::Http {
                url: next_shown.clone(),
                source: e.without_url(),
            })?;
            url = next;
        }
        Err(Error::Protocol {
            url: shown_url(&url),
            message: format!("more than {} redirects", limits.max_redirects),
        })
    }

    fn req<'a>(
        &self,
        host: &'a RegistryHost,
        method: Method,
        suffix: String,
        scopes: Vec<String>,
    ) -> Req<'a> {
        Req {
            host,
            method,
            target: Target::Api(suffix),
            headers: Vec::new(),
            body: ReqBody::Empty,
            scopes,
            progress: Progress::new(),
        }
    }

    /// Resolve a reference to the descriptor of what it names (an index or a manifest): HEAD
    /// first, GET when the HEAD answer lacks the digest. Hosts with the resolve capability (pull
    /// for a digest reference) are tried in order.
    pub async fn resolve(&self, reference: &Reference) -> Result<Descriptor, Error> {
        let hosts = self.hosts(reference)?;
        let by_digest = reference.digest().is_some();
        let mut first_err = None;
        for host in hosts.iter().filter(|h| {
            if by_digest {
                h.capabilities.pull
            } else {
                h.capabilities.resolve
            }
        }) {
            match self.resolve_on(host, reference).await {
                Ok(d) => return Ok(d),
                Err(e) if e.try_next_host() => {
                    tracing::debug!(host = %host.host, error = %e, "resolve failed; next host");
                    if first_err.is_none() || matches!(first_err, Some(Error::NotFound(_))) {
                        first_err = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_err
            .unwrap_or_else(|| Error::NotFound(format!("{reference}: no host to resolve it"))))
    }

    async fn resolve_on(
        &self,
        host: &RegistryHost,
        reference: &Reference,
    ) -> Result<Descriptor, Error> {
        let suffix = manifest_path(host, reference, reference.object());
        let scopes = vec![pull_scope(reference.repository())];
        let mut req = self.req(host, Method::HEAD, suffix.clone(), scopes.clone());
        req.headers.push(("accept", ACCEPT_MANIFESTS.to_string()));
        let resp = self.send(req).await?;
        let (_, media_type, header_digest) = manifest_answer(&resp, reference)?;
        let length = crate::client::header_length(&resp);
        let max = self.inner.config.limits.max_manifest_size;
        if let Some(l) = length {
            if l > max {
                return Err(Error::TooLarge {
                    what: format!("manifest {reference}"),
                    limit: max,
                });
            }
        }
        if let (Some(d), Some(size), false) = (&header_digest, length, media_type.is_empty()) {
            if crate::reference::parse_digest(d).is_ok() && size > 0 {
                if let Some(want) = reference.digest() {
                    if want != d {
                        return Err(Error::DigestMismatch {
                            what: reference.to_string(),
                            expected: want.to_string(),
                            actual: d.clone(),
                        });
                    }
                }
                return Ok(Descriptor::new(&media_type, d, size));
            }
        }
        // The HEAD did not say enough: GET the document and hash it.
        let mut req = self.req(host, Method::GET, suffix, scopes);
        req.headers.push(("accept", ACCEPT_MANIFESTS.to_string()));
        let resp = self.send(req).await?;
        let (shown, media_type, header_digest) = manifest_answer(&resp, reference)?;
        let body =
            read_bounded(resp, &shown, max, self.inner.config.limits.progress_timeout).await?;
        let actual = sha256_digest(&body);
        for want in [
            reference.digest().map(str::to_string),
            header_digest.filter(|d| d.starts_with("sha256:")),
        ]
        .into_iter()
        .flatten()
        {
            if want != actual {
                return Err(Error::DigestMismatch {
                    what: reference.to_string(),
                    expected: want,
                    actual,
                });
            }
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            // Some registries serve OCI documents as plain JSON; the body says what it is.
            match manifest::parse_document(&reference.to_string(), "", &body, usize::MAX)? {
                Document::Index(i) => i.media_type.unwrap_or_else(|| manifest::OCI_INDEX.into()),
                Document::Manifest(m) => m
                    .media_type
                    .unwrap_or_else(|| manifest::OCI_MANIFEST.into()),
            }
        } else {
            media_type
        };
        Ok(Descriptor::new(&media_type, &actual, body.len() as u64))
    }

    /// Fetch the manifest or index `desc` names, bounded by the descriptor's size and the
    /// manifest limit, verified against its digest, and parsed strictly.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        desc: &Descriptor,
    ) -> Result<(Document, Bytes), Error> {
        crate::verify::check_supported(&desc.digest)?;
        let max = self.inner.config.limits.max_manifest_size;
        let what = format!("{}@{}", reference.name(), desc.digest);
        if desc.size > max {
            return Err(Error::TooLarge { what, limit: max });
        }
        let hosts = self.hosts(reference)?;
        let mut first_err = None;
        for host in hosts.iter().filter(|h| h.capabilities.pull) {
            match self.fetch_manifest_on(host, reference, desc, &what).await {
                Ok(out) => return Ok(out),
                Err(e) if e.try_next_host() => {
                    if first_err.is_none() || matches!(first_err, Some(Error::NotFound(_))) {
                        first_err = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_err.unwrap_or_else(|| Error::NotFound(what)))
    }

    async fn fetch_manifest_on(
        &self,
        host: &RegistryHost,
        reference: &Reference,
        desc: &Descriptor,
        what: &str,
    ) -> Result<(Document, Bytes), Error> {
        let suffix = manifest_path(host, reference, &desc.digest);
        let mut req = self.req(
            host,
            Method::GET,
            suffix,
            vec![pull_scope(reference.repository())],
        );
        let accept = if desc.media_type.is_empty() {
            ACCEPT_MANIFESTS.to_string()
        } else {
            format!("{}, {ACCEPT_MANIFESTS}", desc.media_type)
        };
        req.headers.push(("accept", accept));
        let resp = self.send(req).await?;
        let shown = shown_url(resp.url());
        check_status(&resp, &shown, reference)?;
        let served = content_type(&resp);
        if let Some(l) = crate::client::header_length(&resp) {
            if l != desc.size {
                return Err(Error::SizeMismatch {
                    what: what.to_string(),
                    expected: desc.size,
                    actual: l,
                });
            }
        }
        let body = read_bounded(
            resp,
            &shown,
            desc.size,
            self.inner.config.limits.progress_timeout,
        )
        .await
        .map_err(|e| match e {
            Error::TooLarge { .. } => Error::SizeMismatch {
                what: what.to_string(),
                expected: desc.size,
                actual: desc.size + 1,
            },
            e => e,
        })?;
        if body.len() as u64 != desc.size {
            return Err(Error::SizeMismatch {
                what: what.to_string(),
                expected: desc.size,
                actual: body.len() as u64,
            });
        }
        let actual = sha256_digest(&body);
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        let media_type = if desc.media_type.is_empty() {
            served
        } else {
            desc.media_type.clone()
        };
        let doc = manifest::parse_document(
            what,
            &media_type,
            &body,
            self.inner.config.limits.max_layers,
        )?;
        Ok((doc, body))
    }

    /// Resolve `reference` and pick the image manifest for the first of `platforms` the index
    /// offers (the host's platform when empty).
    pub async fn pull_manifest(
        &self,
        reference: &Reference,
        platforms: &[Platform],
    ) -> Result<PulledManifest, Error> {
        let host_platform = [Platform::host()];
        let platforms = if platforms.is_empty() {
            &host_platform[..]
        } else {
            platforms
        };
        let root = self.resolve(reference).await?;
        let (doc, bytes) = self.fetch_manifest(reference, &root).await?;
        match doc {
            Document::Manifest(manifest) => Ok(PulledManifest {
                descriptor: root.clone(),
                root,
                index: None,
                manifest,
                bytes,
            }),
            Document::Index(index) => {
                let picked = manifest::select_platforms(&index, platforms);
                let Some(desc) = picked
                    .into_iter()
                    .find(|d| manifest::is_manifest(&d.media_type))
                else {
                    return Err(Error::NoMatchingPlatform(reference.to_string()));
                };
                let desc = desc.clone();
                let (doc, mbytes) = self.fetch_manifest(reference, &desc).await?;
                match doc {
                    Document::Manifest(manifest) => Ok(PulledManifest {
                        root,
                        index: Some(bytes),
                        descriptor: desc,
                        manifest,
                        bytes: mbytes,
                    }),
                    Document::Index(_) => Err(Error::InvalidManifest(format!(
                        "{reference}: the platform entry {} is an index",
                        desc.digest
                    ))),
                }
            }
        }
    }

    /// Stream the blob `desc` names, verified as it arrives: the reader fails on a wrong
    /// Content-Length, too many or too few bytes, or a digest mismatch, and hands out the last
    /// bytes only once all of them checked out. With `resume`, asks for the bytes after the
    /// caller's `offset` (a registry answering 200 to the Range is read past the prefix).
    /// Holds one download permit until dropped.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        resume: Option<Resume>,
    ) -> Result<BlobReader, Error> {
        crate::verify::check_supported(&desc.digest)?;
        let permit = self
            .inner
            .downloads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Protocol {
                url: desc.digest.clone(),
                message: "download semaphore closed".into(),
            })?;
        let what = format!("{}@{}", reference.name(), desc.digest);
        if let Some(r) = &resume {
            if r.offset > desc.size {
                return Err(Error::SizeMismatch {
                    what,
                    expected: desc.size,
                    actual: r.offset,
                });
            }
            if r.offset == desc.size {
                // Nothing left to fetch (a Range from the end would be refused): verify only.
                let mut reader = BlobReader::complete(desc, &what, r.clone());
                reader.permit = Some(permit);
                return Ok(reader);
            }
        }
        let hosts = self.hosts(reference)?;
        let mut first_err = None;
        for host in hosts.iter().filter(|h| h.capabilities.pull) {
            let suffix = format!(
                "/{}/blobs/{}{}",
                reference.repository(),
                desc.digest,
                ns_query(host, reference)
            );
            let mut req = self.req(
                host,
                Method::GET,
                suffix,
                vec![pull_scope(reference.repository())],
            );
            let offset = resume.as_ref().map_or(0, |r| r.offset);
            if offset > 0 {
                req.headers.push(("range", format!("bytes={offset}-")));
            }
            let progress = req.progress.clone();
            let result = match self.send(req).await {
                Ok(resp) => BlobReader::start(
                    resp,
                    desc,
                    &what,
                    resume.clone(),
                    self.inner.config.limits.progress_timeout,
                    progress,
                ),
                Err(e) => Err(e),
            };
            match result {
                Ok(mut reader) => {
                    reader.permit = Some(permit);
                    return Ok(reader);
                }
                Err(e) if e.try_next_host() => {
                    if first_err.is_none() || matches!(first_err, Some(Error::NotFound(_))) {
                        first_err = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !desc.urls.is_empty() {
            if !self.inner.config.allow_foreign_urls {
                return Err(Error::ForeignLayer(what));
            }
            for u in &desc.urls {
                match self.fetch_foreign(u, desc, &what).await {
                    Ok(mut reader) => {
                        reader.permit = Some(permit);
                        return Ok(reader);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "foreign URL failed");
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or(Error::NotFound(what)))
    }

    /// A foreign layer URL: plain GET with the default TLS settings, no credentials, no headers.
    async fn fetch_foreign(
        &self,
        u: &str,
        desc: &Descriptor,
        what: &str,
    ) -> Result<BlobReader, Error> {
        let url = url::Url::parse(u).map_err(|e| Error::Protocol {
            url: u.to_string(),
            message: e.to_string(),
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Error::Protocol {
                url: u.to_string(),
                message: "foreign URL scheme refused".into(),
            });
        }
        let host = RegistryHost {
            scheme: url.scheme().to_string(),
            host: String::new(),
            path: String::new(),
            capabilities: Default::default(),
            tls: TlsSettings::default(),
            headers: Vec::new(),
            http_fallback: false,
            is_server: false,
        };
        let req = Req {
            host: &host,
            method: Method::GET,
            target: Target::Absolute(url),
            headers: Vec::new(),
            body: ReqBody::Empty,
            scopes: Vec::new(),
            progress: Progress::new(),
        };
        let progress = req.progress.clone();
        let resp = self.send(req).await?;
        BlobReader::start(
            resp,
            desc,
            what,
            None,
            self.inner.config.limits.progress_timeout,
            progress,
        )
    }

    /// Read a small blob (an image config) whole, verified, refusing one above `max` bytes.
    pub async fn fetch_blob_bytes(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        max: u64,
    ) -> Result<Bytes, Error> {
        if desc.size > max {
            return Err(Error::TooLarge {
                what: format!("{}@{}", reference.name(), desc.digest),
                limit: max,
            });
        }
        let mut reader = self.fetch_blob(reference, desc, None).await?;
        let mut out = bytes::BytesMut::with_capacity(desc.size as usize);
        while let Some(chunk) = reader.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    fn push_host(&self, reference: &Reference) -> Result<RegistryHost, Error> {
        self.hosts(reference)?
            .into_iter()
            .find(|h| h.capabilities.push)
            .ok_or_else(|| {
                Error::NotFound(format!("{reference}: no host with the push capability"))
            })
    }

    /// Whether the registry has `desc` in the reference's repository.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        desc: &Descriptor,
    ) -> Result<bool, Error> {
        crate::verify::check_supported(&desc.digest)?;
        let host = self.push_host(reference)?;
        self.blob_exists_on(
            &host,
            reference,
            desc,
            vec![push_scope(reference.repository())],
        )
        .await
    }

    async fn blob_exists_on(
        &self,
        host: &RegistryHost,
        reference: &Reference,
        desc: &Descriptor,
        scopes: Vec<String>,
    ) -> Result<bool, Error> {
        let suffix = format!("/{}/blobs/{}", reference.repository(), desc.digest);
        let resp = self
            .send(self.req(host, Method::HEAD, suffix, scopes))
            .await?;
        match resp.status() {
            StatusCode::OK => {
                Ok(crate::client::header_length(&resp).is_none_or(|l| l == desc.size))
            }
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_error(&resp, s)),
        }
    }

    /// Push one blob: nothing if it is there, a mount if another repository has it, else an
    /// upload (one PUT, or PATCH chunks then PUT). The bytes sent are checked against `desc`.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        source: BlobSource,
        options: &PushOptions,
    ) -> Result<PushOutcome, Error> {
        crate::verify::check_supported(&desc.digest)?;
        let host = self.push_host(reference)?;
        let repo = reference.repository();
        let scopes = vec![push_scope(repo)];
        if self
            .blob_exists_on(&host, reference, desc, scopes.clone())
            .await?
        {
            return Ok(PushOutcome::Exists);
        }
        let mut location = None;
        for from in &options.mount_from {
            let from_ref = reference.with_repository(from)?;
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("mount", &desc.digest)
                .append_pair("from", from_ref.repository())
                .finish();
            let suffix = format!("/{repo}/blobs/uploads/?{q}");
            let mount_scopes = vec![push_scope(repo), pull_scope(from_ref.repository())];
            let resp = self
                .send(self.req(&host, Method::POST, suffix, mount_scopes))
                .await?;
            match resp.status() {
                StatusCode::CREATED => return Ok(PushOutcome::Mounted),
                StatusCode::ACCEPTED => {
                    // Not mountable from there; the registry started an upload instead. Keep
                    // the latest session and cancel the one before it.
                    let started = upload_location(&resp)?;
                    if let Some(old) = location.replace(started) {
                        self.cancel_upload(&host, old, &scopes).await;
                    }
                }
                s => return Err(status_error(&resp, s)),
            }
        }
        let mut location = match location {
            Some(l) => l,
            None => {
                let suffix = format!("/{repo}/blobs/uploads/");
                let resp = self
                    .send(self.req(&host, Method::POST, suffix, scopes.clone()))
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(status_error(&resp, resp.status()));
                }
                upload_location(&resp)?
            }
        };
        let what = format!("{}@{}", reference.name(), desc.digest);
        match (options.chunk_size, source) {
            (None, source) => {
                let progress = Progress::new();
                let (body, check) =
                    crate::verify::checked_upload(source, desc, &what, progress.clone());
                let put = with_digest(&location, &desc.digest);
                let req = Req {
                    host: &host,
                    method: Method::PUT,
                    target: Target::Absolute(put),
                    headers: vec![
                        ("content-type", "application/octet-stream".into()),
                        ("content-length", desc.size.to_string()),
                    ],
                    body: ReqBody::Stream(Some(body)),
                    scopes,
                    progress,
                };
                let resp = self.send(req).await;
                // What we read from the source decides first: a short or wrong source is the
                // caller's error, not the registry's.
                check.result()?;
                let resp = resp?;
                if resp.status() != StatusCode::CREATED {
                    return Err(status_error(&resp, resp.status()));
                }
            }
            (Some(chunk), source) => {
                let chunk = chunk.max(1);
                let mut stream: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> =
                    match source {
                        BlobSource::Bytes(b) => {
                            Box::pin(futures_util::stream::once(async move { Ok(b) }))
                        }
                        BlobSource::Stream(s) => s,
                    };
                let mut hasher = crate::verify::Digester::new();
                let mut sent: u64 = 0;
                let mut buf = bytes::BytesMut::new();
                let mut ended = false;
                while !ended {
                    while buf.len() < chunk {
                        match stream.next().await {
                            Some(Ok(b)) => buf.extend_from_slice(&b),
                            Some(Err(e)) => {
                                return Err(Error::io(format!("{what}: read the blob to push"), e))
                            }
                            None => {
                                ended = true;
                                break;
                            }
                        }
                    }
                    let take = buf.len().min(chunk);
                    if take == 0 {
                        break;
                    }
                    let piece = buf.split_to(take).freeze();
                    if sent + piece.len() as u64 > desc.size {
                        return Err(Error::SizeMismatch {
                            what,
                            expected: desc.size,
                            actual: sent + piece.len() as u64,
                        });
                    }
                    hasher.update(&piece);
                    let end = sent + piece.len() as u64 - 1;
                    let req = Req {
                        host: &host,
                        method: Method::PATCH,
                        target: Target::Absolute(location.clone()),
                        headers: vec![
                            ("content-type", "application/octet-stream".into()),
                            ("content-range", format!("{sent}-{end}")),
                        ],
                        body: ReqBody::Bytes(piece.clone()),
                        scopes: scopes.clone(),
                        progress: Progress::new(),
                    };
                    let resp = self.send(req).await?;
                    if resp.status() != StatusCode::ACCEPTED {
                        return Err(status_error(&resp, resp.status()));
                    }
                    sent += piece.len() as u64;
                    location = upload_location(&resp)?;
                }
                if sent != desc.size {
                    return Err(Error::SizeMismatch {
                        what,
                        expected: desc.size,
                        actual: sent,
                    });
                }
                let actual = hasher.finish();
                if actual != desc.digest {
                    return Err(Error::DigestMismatch {
                        what,
                        expected: desc.digest.clone(),
                        actual,
                    });
                }
                let req = Req {
                    host: &host,
                    method: Method::PUT,
                    target: Target::Absolute(with_digest(&location, &desc.digest)),
                    headers: vec![("content-length", "0".into())],
                    body: ReqBody::Empty,
                    scopes,
                    progress: Progress::new(),
                };
                let resp = self.send(req).await?;
                if resp.status() != StatusCode::CREATED {
                    return Err(status_error(&resp, resp.status()));
                }
            }
        }
        Ok(PushOutcome::Uploaded)
    }

    /// Abandon an upload session; a failure only leaves it for the registry to expire.
    async fn cancel_upload(&self, host: &RegistryHost, location: url::Url, scopes: &[String]) {
        let req = Req {
            host,
            method: Method::DELETE,
            target: Target::Absolute(location),
            headers: Vec::new(),
            body: ReqBody::Empty,
            scopes: scopes.to_vec(),
            progress: Progress::new(),
        };
        if let Err(e) = self.send(req).await {
            tracing::debug!(error = %e, "cancelling an upload session failed");
        }
    }

    /// PUT a manifest or index under the reference's tag (or digest), with its media type; returns
    /// its descriptor once the registry's digest agrees.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Descriptor, Error> {
        if !manifest::is_index(media_type) && !manifest::is_manifest(media_type) {
            return Err(Error::UnsupportedMediaType(media_type.to_string()));
        }
        let what = reference.to_string();
        manifest::parse_document(
            &what,
            media_type,
            &bytes,
            self.inner.config.limits.max_layers,
        )?;
        let digest = sha256_digest(&bytes);
        if let Some(d) = reference.digest() {
            if d != digest {
                return Err(Error::DigestMismatch {
                    what,
                    expected: d.to_string(),
                    actual: digest,
                });
            }
        }
        let host = self.push_host(reference)?;
        let object = reference.tag().unwrap_or(&digest).to_string();
        let suffix = format!("/{}/manifests/{object}", reference.repository());
        let mut req = self.req(
            &host,
            Method::PUT,
            suffix,
            vec![push_scope(reference.repository())],
        );
        req.headers.push(("content-type", media_type.to_string()));
        let size = bytes.len() as u64;
        req.body = ReqBody::Bytes(bytes);
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&resp, resp.status()));
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if d != digest {
                return Err(Error::DigestMismatch {
                    what,
                    expected: digest,
                    actual: d.to_string(),
                });
            }
        }
        Ok(Descriptor::new(media_type, &digest, size))
    }
}

/// The repositories a registry lists at `/v2/_catalog`, page by page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub repositories: Vec<String>,
    /// Pages read (the registry's Link headers chain them).
    pub pages: usize,
}

impl Client {
    /// `GET /v2/_catalog?n=page_size` on `domain`'s registry (not its mirrors: a mirror's
    /// catalog is not the registry's), authorised as pulls are (scope `registry:catalog:*`),
    /// following `Link: <…>; rel="next"` until the registry stops or `max_repositories` are
    /// read. A refusal is the registry's answer as an error: Unauthorized (401), Denied (403),
    /// NotFound (404: no catalog API).
    pub async fn catalog(
        &self,
        domain: &str,
        page_size: usize,
        max_repositories: usize,
    ) -> Result<Catalog, Error> {
        let hosts = self.inner.config.hosts.hosts(domain)?;
        let host = hosts
            .iter()
            .find(|h| h.is_server)
            .or(hosts.first())
            .ok_or_else(|| Error::NotFound(format!("{domain}: no host for its catalog")))?;
        let scopes = vec!["registry:catalog:*".to_string()];
        let mut out = Catalog::default();
        let mut req = self.req(
            host,
            Method::GET,
            format!("/_catalog?n={}", page_size.max(1)),
            scopes.clone(),
        );
        loop {
            let resp = self.send(req).await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(status_error(&resp, status));
            }
            let next = next_link(&resp);
            let shown = shown_url(resp.url());
            let limits = &self.inner.config.limits;
            let body = read_bounded(
                resp,
                &shown,
                limits.max_manifest_size,
                limits.progress_timeout,
            )
            .await?;
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let page: Page = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
                url: shown.clone(),
                message: format!("catalog page: {e}"),
            })?;
            out.pages += 1;
            let empty = page.repositories.is_empty();
            out.repositories.extend(page.repositories);
            // An empty page with a next link would loop forever on a broken registry.
            match next {
                Some(url) if !empty && out.repositories.len() < max_repositories => {
                    req = self.req(host, Method::GET, String::new(), scopes.clone());
                    req.target = Target::Absolute(url);
                }
                _ => break,
            }
        }
        out.repositories.truncate(max_repositories);
        Ok(out)
    }
}

/// The `rel="next"` target of a Link header, resolved against the answer's URL; only on the
/// same origin (credentials go with it).
fn next_link(resp: &reqwest::Response) -> Option<url::Url> {
    let base = resp.url();
    resp.headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let next = params
                .split(';')
                .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
            next.then(|| base.join(target).ok()).flatten()
        })
        .filter(|u| u.origin() == base.origin())
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// Mirrors are told which registry a name belongs to, as containerd does.
fn ns_query(host: &RegistryHost, reference: &Reference) -> String {
    if host.is_server {
        String::new()
    } else {
        format!(
            "?ns={}",
            url::form_urlencoded::byte_serialize(reference.domain().as_bytes()).collect::<String>()
        )
    }
}

fn manifest_path(host: &RegistryHost, reference: &Reference, object: &str) -> String {
    format!(
        "/{}/manifests/{object}{}",
        reference.repository(),
        ns_query(host, reference)
    )
}

/// A URL for messages: no query (upload state, tokens of pre-signed storage URLs).
fn shown_url(u: &url::Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

fn same_origin_host(u: &url::Url, host: &str) -> bool {
    let h = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return false,
    };
    !host.is_empty() && h == host
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// What a manifest answer (HEAD or GET) says about the document: the URL as it may be shown,
/// its media type and the digest the registry claims. A failed status and schema 1 are errors.
fn manifest_answer(
    resp: &reqwest::Response,
    reference: &Reference,
) -> Result<(String, String, Option<String>), Error> {
    let shown = shown_url(resp.url());
    check_status(resp, &shown, reference)?;
    let media_type = content_type(resp);
    if manifest::is_schema1(&media_type) {
        return Err(Error::Schema1(reference.to_string()));
    }
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string());
    Ok((shown, media_type, header_digest))
}

fn check_status(resp: &reqwest::Response, shown: &str, reference: &Reference) -> Result<(), Error> {
    match resp.status() {
        s if s.is_success() => Ok(()),
        StatusCode::NOT_FOUND => Err(Error::NotFound(reference.to_string())),
        s => Err(Error::Status {
            url: shown.to_string(),
            status: s.as_u16(),
            detail: String::new(),
        }),
    }
}

fn status_error(resp: &reqwest::Response, s: StatusCode) -> Error {
    let url = shown_url(resp.url());
    match s {
        StatusCode::NOT_FOUND => Error::NotFound(url),
        StatusCode::UNAUTHORIZED => Error::Unauthorized(url),
        StatusCode::FORBIDDEN => Error::Denied(url),
        s => Error::Status {
            url,
            status: s.as_u16(),
            detail: String::new(),
        },
    }
}

fn upload_location(resp: &reqwest::Response) -> Result<url::Url, Error> {
    let shown = shown_url(resp.url());
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Protocol {
            url: shown.clone(),
            message: "upload answer without a Location".into(),
        })?;
    resp.url().join(loc).map_err(|e| Error::Protocol {
        url: shown,
        message: format!("bad upload Location: {e}"),
    })
}

fn with_digest(location: &url::Url, digest: &str) -> url::Url {
    let mut u = location.clone();
    u.query_pairs_mut().append_pair("digest", digest);
    u
}

/// Read a whole body of at most `max` bytes: a larger Content-Length is refused unread, and a
/// body that keeps coming is cut at the bound.
async fn read_bounded(
    mut resp: reqwest::Response,
    shown: &str,
    max: u64,
    limit: Duration,
) -> Result<Bytes, Error> {
    if let Some(l) = crate::client::header_length(&resp) {
        if l > max {
            return Err(Error::TooLarge {
                what: shown.to_string(),
                limit: max,
            });
        }
    }
    let mut out = bytes::BytesMut::new();
    loop {
        let chunk = tokio::time::timeout(limit, resp.chunk())
            .await
            .map_err(|_| Error::Timeout {
                what: shown.to_string(),
                after: limit,
            })?
            .map_err(|e| Error::Http {
                url: shown.to_string(),
                source: e.without_url(),
            })?;
        let Some(chunk) = chunk else { break };
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(Error::TooLarge {
                what: shown.to_string(),
                limit: max,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// The Content-Length header as sent. reqwest's `content_length()` is the body's size hint,
/// which is 0 for any HEAD answer.
pub(crate) fn header_length(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Whether a request failed because the server answered the TLS handshake with something that
/// is not TLS (a plain-HTTP server), containerd's condition for the loopback HTTP fallback. A
/// certificate error is not one: it must not turn into a clear-text retry.
fn is_plain_http_answer(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return matches!(t, rustls::Error::InvalidMessage(_));
        }
        // An io::Error's source() skips the error it wraps (nested io::Errors wrap the rustls
        // one), so step into the wrapped error itself.
        source = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}
