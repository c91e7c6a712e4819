//! The outgoing HTTP client: hyper's pooled HTTP/1.1 client over rustls, with
//! a connector that resolves and checks every target address against the SSRF
//! policy and then connects to exactly the address it checked.
//!
//! Redirects are never followed (hyper's client does not follow them), and no
//! proxy is used: the connector dials the target itself, whatever
//! `HTTPS_PROXY` says. hyper's client is used rather than reqwest because the
//! delivery path is the hottest in the process and reqwest adds measurable CPU
//! per request on top of the same hyper core.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Uri;
use hyper::header::{HeaderMap, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use url::Host;

use super::policy::ErrorClass;
use crate::ssrf::{Policy, Refusal};

/// How much of a response body is kept in the attempt log.
pub const KEPT_BODY_BYTES: usize = 1024;

/// Why the connector produced no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("connecting timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Io(std::io::Error),
}

/// Resolves, checks and connects; see the module docs.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<Policy>,
    connect_timeout: Duration,
}

fn host_of(uri: &Uri) -> Option<Host<String>> {
    let host = uri.host()?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse().ok().map(Host::Ipv6);
    }
    Some(match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Host::Ipv4(v4),
        Ok(IpAddr::V6(v6)) => Host::Ipv6(v6),
        Err(_) => Host::Domain(host.to_owned()),
    })
}

impl GuardedConnector {
    async fn connect(self, uri: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let deadline = Instant::now() + self.connect_timeout;
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = host_of(&uri).ok_or_else(|| {
            ConnectError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the URL has no host"))
        })?;
        let host_ref = match &host {
            Host::Domain(d) => Host::Domain(d.as_str()),
            Host::Ipv4(v4) => Host::Ipv4(*v4),
            Host::Ipv6(v6) => Host::Ipv6(*v6),
        };
        let addrs: Vec<SocketAddr> = self.policy.resolve(&host_ref, port, https).await?;
        let mut last = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small request/response exchanges: do not wait to coalesce.
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => last = Some(ConnectError::Io(e)),
                Err(_) => return Err(ConnectError::Timeout),
            }
        }
        Err(last.unwrap_or(ConnectError::Timeout))
    }
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// What a receiver answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// At most [`KEPT_BODY_BYTES`] of the body, lossily decoded.
    pub body_prefix: String,
}

/// Why there was no answer.
#[derive(Debug, Clone)]
pub struct SendError {
    pub class: ErrorClass,
    pub message: String,
}

pub struct DeliveryClient {
    client: Client<HttpsConnector<GuardedConnector>, Full<Bytes>>,
    request_timeout: Duration,
}

impl DeliveryClient {
    pub fn new(policy: Policy, connect_timeout: Duration, request_timeout: Duration, max_idle_per_host: usize) -> Self {
        let connector = GuardedConnector { policy: Arc::new(policy), connect_timeout };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .expect("ring supports the default protocol versions")
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle_per_host)
            .build(https);
        Self { client, request_timeout }
    }

    /// POSTs `body` to `url` with `headers`; reads at most the kept prefix of the answer.
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Bytes) -> Result<Answer, SendError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| SendError { class: ErrorClass::Protocol, message: format!("invalid target URL: {e}") })?;
        let https = uri.scheme_str() == Some("https");
        let mut request = hyper::Request::post(uri).body(Full::new(body)).expect("a valid request");
        *request.headers_mut() = headers;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| classify(&e, https))?;
            let status = response.status().as_u16();
            let retry_after =
                response.headers().get(hyper::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body_prefix = read_prefix(response.into_body()).await;
            Ok(Answer { status, retry_after, body_prefix })
        };
        tokio::time::timeout(self.request_timeout, exchange).await.unwrap_or_else(|_| {
            Err(SendError {
                class: ErrorClass::Timeout,
                message: format!("no complete answer within {} s", self.request_timeout.as_secs_f32()),
            })
        })
    }
}

/// Reads up to the kept prefix; the rest is never read (the connection is then
/// closed rather than reused).
async fn read_prefix(mut body: hyper::body::Incoming) -> String {
    let mut kept = Vec::new();
    while kept.len() < KEPT_BODY_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    kept.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    kept.truncate(KEPT_BODY_BYTES);
    String::from_utf8_lossy(&kept).into_owned()
}

fn classify(e: &hyper_util::client::legacy::Error, https: bool) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(connect) = err.downcast_ref::<ConnectError>() {
            let class = match connect {
                ConnectError::Refused(r) if r.class() == "dns" => ErrorClass::Dns,
                ConnectError::Refused(_) => ErrorClass::Blocked,
                ConnectError::Timeout => ErrorClass::Timeout,
                ConnectError::Io(_) => ErrorClass::Connect,
            };
            return SendError { class, message: connect.to_string() };
        }
        source = err.source();
    }
    if e.is_connect() && https {
        // Our connector succeeded, so the failure is in the TLS handshake.
        let detail = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
        return SendError { class: ErrorClass::Tls, message: format!("TLS handshake failed: {detail}") };
    }
    let detail = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
    SendError { class: ErrorClass::Protocol, message: format!("the exchange failed: {detail}") }
}

/// A header value from text that is known to be visible ASCII.
pub fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header values built from ids, digits and base64")
}
