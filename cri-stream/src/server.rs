//! The HTTP side: the listener, URL minting, and the upgrade from an HTTP request to a SPDY
//! or WebSocket stream session once a token is redeemed.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::remotecommand::{self, Op};
use crate::spdy::Session;
use crate::token::{Pending, TokenCache};
use crate::{
    portforward, websocket, AttachRequest, Backend, Config, ExecRequest, PortForwardRequest,
    StreamError,
};

const SPDY_PROTOCOLS: &[(&str, u8)] = &[
    ("v4.channel.k8s.io", 4),
    ("v3.channel.k8s.io", 3),
    ("v2.channel.k8s.io", 2),
    ("channel.k8s.io", 1),
];
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
const WEBSOCKET_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// client-go's port-forward over WebSocket: SPDY/3.1 framing inside binary messages.
const WEBSOCKET_PORT_FORWARD_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The running streaming server; dropping it stops accepting connections.
pub struct StreamServer {
    cache: Arc<TokenCache>,
    base_url: String,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl StreamServer {
    pub async fn start(config: Config, backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.address).await?;
        let local_addr = listener.local_addr()?;
        let host = config
            .advertise_host
            .unwrap_or_else(|| concrete_host(local_addr.ip()));
        let base_url = format!("http://{}", SocketAddr::new(host, local_addr.port()));
        let cache = Arc::new(TokenCache::new(config.token_ttl, config.max_in_flight));
        let accept = tokio::spawn(accept_loop(listener, cache.clone(), backend));
        Ok(StreamServer {
            cache,
            base_url,
            local_addr,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn get_exec(&self, req: ExecRequest) -> Result<String, StreamError> {
        self.url("exec", Pending::Exec(req))
    }

    pub fn get_attach(&self, req: AttachRequest) -> Result<String, StreamError> {
        self.url("attach", Pending::Attach(req))
    }

    pub fn get_port_forward(&self, req: PortForwardRequest) -> Result<String, StreamError> {
        self.url("portforward", Pending::PortForward(req))
    }

    fn url(&self, kind: &str, req: Pending) -> Result<String, StreamError> {
        let token = self.cache.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }
}

/// A wildcard address is no use in a URL; the kubelet needs one it can dial. The address
/// the kernel would route from is the node's primary one; no packet is sent to find it.
fn concrete_host(ip: IpAddr) -> IpAddr {
    if !ip.is_unspecified() {
        return ip;
    }
    let probe = if ip.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
    } else {
        UdpSocket::bind("[::]:0").and_then(|s| {
            s.connect("[2001:db8::1]:9")?;
            s.local_addr()
        })
    };
    match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ if ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    }
}

async fn accept_loop(listener: TcpListener, cache: Arc<TokenCache>, backend: Arc<dyn Backend>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("stream server accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (cache, backend) = (cache.clone(), backend.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (cache, backend) = (cache.clone(), backend.clone());
                async move { Ok::<_, Infallible>(handle(req, &cache, backend)) }
            });
            // A connection that never finishes its request must not hold a task forever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("stream server connection: {e}");
            }
        });
    }
}

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *resp.status_mut() = status;
    resp
}

/// Every value of a possibly repeated, comma-separated header, in the client's order.
fn header_values<'a>(req: &'a Request<Incoming>, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

fn handle(
    mut req: Request<Incoming>,
    cache: &TokenCache,
    backend: Arc<dyn Backend>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_matches('/').to_string();
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let pending = match (kind, cache.consume(token)) {
        (_, None) => return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token"),
        ("exec", Some(p @ Pending::Exec(_)))
        | ("attach", Some(p @ Pending::Attach(_)))
        | ("portforward", Some(p @ Pending::PortForward(_))) => p,
        _ => return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token"),
    };
    let upgrade = header_values(&req, "upgrade")
        .first()
        .map(|u| u.to_ascii_lowercase())
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));

    if upgrade == "websocket" {
        let offered = header_values(&req, "sec-websocket-protocol");
        let supported: &[&str] = match pending {
            Pending::PortForward(_) => &[WEBSOCKET_PORT_FORWARD_PROTOCOL],
            _ => WEBSOCKET_PROTOCOLS,
        };
        let Some(proto) = offered.iter().find(|p| supported.contains(p)) else {
            return plain(
                StatusCode::FORBIDDEN,
                &format!(
                    "no supported WebSocket subprotocol in {offered:?}; want one of {supported:?}"
                ),
            );
        };
        let Some(key) = req
            .headers()
            .get("sec-websocket-key")
            .and_then(|k| k.to_str().ok())
        else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let (Ok(accept), Ok(proto_value)) = (
            HeaderValue::from_str(&websocket::accept_key(key)),
            HeaderValue::from_str(proto),
        ) else {
            return plain(StatusCode::BAD_REQUEST, "bad WebSocket headers");
        };
        let h = resp.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-accept", accept);
        h.insert("sec-websocket-protocol", proto_value);
        tokio::spawn(async move {
            let up = match on_upgrade.await {
                Ok(up) => TokioIo::new(up),
                Err(e) => return tracing::debug!("websocket upgrade: {e}"),
            };
            match pending {
                Pending::Exec(r) => remotecommand::serve_websocket(up, Op::Exec(r), backend).await,
                Pending::Attach(r) => {
                    remotecommand::serve_websocket(up, Op::Attach(r), backend).await
                }
                Pending::PortForward(r) => {
                    let session = Session::start(websocket::tunnel(up));
                    portforward::serve_spdy(session, r, backend).await
                }
            }
        });
        return resp;
    }

    if !upgrade.starts_with("spdy/3.1") {
        return plain(
            StatusCode::BAD_REQUEST,
            "streaming needs an Upgrade to SPDY/3.1 or websocket",
        );
    }
    let offered = header_values(&req, "x-stream-protocol-version");
    let chosen = match &pending {
        Pending::PortForward(_) => offered
            .contains(&PORT_FORWARD_PROTOCOL)
            .then_some((PORT_FORWARD_PROTOCOL, 0)),
        _ => offered
            .iter()
            .find_map(|p| SPDY_PROTOCOLS.iter().find(|(name, _)| name == p).copied()),
    };
    let Some((proto, version)) = chosen else {
        return plain(
            StatusCode::FORBIDDEN,
            &format!("no supported X-Stream-Protocol-Version in {offered:?}"),
        );
    };
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert("x-stream-protocol-version", HeaderValue::from_static(proto));
    tokio::spawn(async move {
        let up = match on_upgrade.await {
            Ok(up) => up,
            Err(e) => return tracing::debug!("spdy upgrade: {e}"),
        };
        let session = Session::start(TokioIo::new(up));
        match pending {
            Pending::Exec(r) => {
                remotecommand::serve_spdy(session, version, Op::Exec(r), backend).await
            }
            Pending::Attach(r) => {
                remotecommand::serve_spdy(session, version, Op::Attach(r), backend).await
            }
            Pending::PortForward(r) => portforward::serve_spdy(session, r, backend).await,
        }
    });
    resp
}
