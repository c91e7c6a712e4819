//! The outgoing HTTP client: a lean HTTP/1.1 client of our own, with a pool of
//! keep-alive connections, TLS by rustls, and a connector that resolves and
//! checks every target address against the SSRF policy and then connects to
//! exactly the address it checked.
//!
//! Why not a library client: delivery is the hottest path in the process, and
//! the benchmark (issue 6) found the outgoing client to be its largest movable
//! cost. reqwest took ~11 µs more CPU per delivery than a minimal HTTP/1.1
//! client; hyper's pooled client sits in between, and each of its requests
//! still travels through channels to a connection task and back. This client
//! does the whole exchange inside the delivery's own task: take an idle
//! connection, write the request in one piece, parse the answer with
//! `httparse` ([`super::http1`]), put the connection back. A delivery needs
//! nothing more: one POST, a status, a header and a body prefix.
//!
//! Redirects are never followed (nothing here would follow one), and no proxy
//! is used: the connector dials the target itself, whatever `HTTPS_PROXY` says.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderValue};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Host;

use super::http1::{self, ResponseError};
use super::policy::ErrorClass;
use crate::domain::TargetUrl;
use crate::ssrf::{Policy, Refusal};

/// How much of a response body is kept in the attempt log.
pub const KEPT_BODY_BYTES: usize = 1024;
/// How long a connection may sit idle in the pool; receivers close idle
/// connections too (often sooner), and an old one is likelier to be dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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
struct GuardedConnector {
    policy: Arc<Policy>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    async fn connect(&self, host: &Host<&str>, port: u16, https: bool) -> Result<TcpStream, ConnectError> {
        let deadline = Instant::now() + self.connect_timeout;
        let addrs: Vec<SocketAddr> = self.policy.resolve(host, port, https).await?;
        let mut last = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small request/response exchanges: do not wait to coalesce.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = Some(ConnectError::Io(e)),
                Err(_) => return Err(ConnectError::Timeout),
            }
        }
        Err(last.unwrap_or(ConnectError::Timeout))
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

impl SendError {
    fn protocol(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Protocol, message: message.into() }
    }
}

impl From<ResponseError> for SendError {
    fn from(e: ResponseError) -> Self {
        match e {
            ResponseError::NothingReceived(m) | ResponseError::Protocol(m) => SendError::protocol(m),
            ResponseError::TimedOut => SendError {
                class: ErrorClass::Timeout,
                message: "no complete answer before the request timeout".into(),
            },
        }
    }
}

pub struct DeliveryClient {
    connector: GuardedConnector,
    tls: TlsConnector,
    pool: Pool,
    request_timeout: Duration,
}

impl DeliveryClient {
    pub fn new(policy: Policy, connect_timeout: Duration, request_timeout: Duration, max_idle_per_host: usize) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(policy, connect_timeout, request_timeout, max_idle_per_host, roots)
    }

    /// [`Self::new`] with other trusted roots (tests trust their own CA).
    fn with_roots(
        policy: Policy,
        connect_timeout: Duration,
        request_timeout: Duration,
        max_idle_per_host: usize,
        roots: rustls::RootCertStore,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            connector: GuardedConnector { policy: Arc::new(policy), connect_timeout },
            tls: TlsConnector::from(Arc::new(tls)),
            pool: Pool::new(max_idle_per_host),
            request_timeout,
        }
    }

    /// POSTs `body` to `url` with `headers`; reads at most the kept prefix of
    /// the answer (a small body is read to its end to keep the connection).
    pub async fn post(&self, target: &TargetUrl, headers: HeaderMap, body: Bytes) -> Result<Answer, SendError> {
        // Every step is bounded by this deadline: connecting (also bounded by
        // the connect timeout), the TLS handshake, sending, and the response
        // head. A body still arriving then is cut short, but the receiver did
        // answer: its status counts, and the attempt is not a timeout.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let timed_out = || SendError {
            class: ErrorClass::Timeout,
            message: format!("no complete answer within {} s", self.request_timeout.as_secs_f32()),
        };
        match self.exchange(target, &headers, &body, deadline).await {
            Err(e) if e.class == ErrorClass::Timeout && tokio::time::Instant::now() >= deadline => Err(timed_out()),
            other => other,
        }
    }

    async fn exchange(
        &self,
        target: &TargetUrl,
        headers: &HeaderMap,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<Answer, SendError> {
        if let Some(mut conn) = self.pool.take(target.pool_key()) {
            match conn.round_trip(target, headers, body, deadline).await {
                Ok(response) => return Ok(self.finish(target, conn, response)),
                // The receiver most likely closed the connection while it sat
                // idle (keep-alive timeouts are often a few seconds): once, on
                // a new connection. Receivers dedupe on webhook-id should the
                // first request have been seen after all.
                Err(ResponseError::NothingReceived(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut conn = self.connect(target, deadline).await?;
        let response = conn.round_trip(target, headers, body, deadline).await?;
        Ok(self.finish(target, conn, response))
    }

    /// A new connection, TLS included for https.
    async fn connect(&self, target: &TargetUrl, deadline: tokio::time::Instant) -> Result<Conn, SendError> {
        let timed_out = || SendError { class: ErrorClass::Timeout, message: "connecting timed out".into() };
        let host = target.host();
        let tcp = self.connector.connect(&host, target.port(), target.is_https());
        let tcp = tokio::time::timeout_at(deadline, tcp).await.map_err(|_| timed_out())?.map_err(|e| {
            let class = match &e {
                ConnectError::Refused(r) if r.class() == "dns" => ErrorClass::Dns,
                ConnectError::Refused(_) => ErrorClass::Blocked,
                ConnectError::Timeout => ErrorClass::Timeout,
                ConnectError::Io(_) => ErrorClass::Connect,
            };
            SendError { class, message: e.to_string() }
        })?;
        if !target.is_https() {
            return Ok(Conn::new(Box::new(tcp)));
        }
        let tls_error =
            |detail: String| SendError { class: ErrorClass::Tls, message: format!("TLS handshake failed: {detail}") };
        // SNI and certificate check against the URL's host, never the address.
        let name = match target.host() {
            Host::Domain(d) => ServerName::try_from(d.to_owned()).map_err(|e| tls_error(e.to_string()))?,
            Host::Ipv4(ip) => ServerName::IpAddress(IpAddr::V4(ip).into()),
            Host::Ipv6(ip) => ServerName::IpAddress(IpAddr::V6(ip).into()),
        };
        let tls = tokio::time::timeout_at(deadline, self.tls.connect(name, tcp))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| tls_error(e.to_string()))?;
        Ok(Conn::new(Box::new(tls)))
    }

    /// Gives a reusable connection back to the pool and shapes the answer.
    fn finish(&self, target: &TargetUrl, conn: Conn, response: http1::Response) -> Answer {
        if response.reusable {
            self.pool.put(target.pool_key(), conn);
        }
        Answer {
            status: response.status,
            retry_after: response.retry_after,
            // Kept in the log: valid UTF-8, and no NUL, which PostgreSQL text refuses.
            body_prefix: String::from_utf8_lossy(&response.body_prefix).replace('\0', "\u{FFFD}"),
        }
    }
}

/// A plain TCP or a TLS connection.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to a receiver, with buffers it keeps across requests.
struct Conn {
    io: Box<dyn Stream>,
    /// Bytes read and not yet parsed.
    read: BytesMut,
    /// The encoded request.
    write: Vec<u8>,
}

impl Conn {
    fn new(io: Box<dyn Stream>) -> Self {
        Self { io, read: BytesMut::new(), write: Vec::new() }
    }

    async fn round_trip(
        &mut self,
        target: &TargetUrl,
        headers: &HeaderMap,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<http1::Response, ResponseError> {
        http1::encode_request(&mut self.write, target.path_and_query(), target.authority(), headers, body);
        let sent = async {
            self.io.write_all(&self.write).await?;
            // TLS holds written bytes in records until flushed.
            self.io.flush().await
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Err(_) => return Err(ResponseError::TimedOut),
            Ok(Err(e)) => return Err(ResponseError::NothingReceived(format!("sending the request failed: {e}"))),
            Ok(Ok(())) => {}
        }
        http1::read_response(&mut self.io, &mut self.read, deadline).await
    }
}

/// Idle keep-alive connections by scheme, host and port.
struct Pool {
    idle: Mutex<Idle>,
    /// Most idle connections kept per host; more would only wait to time out.
    max_per_host: usize,
}

struct Idle {
    /// Oldest first, so the most recently used (the likeliest to be alive) is taken first.
    by_host: HashMap<String, Vec<(Instant, Conn)>>,
    /// When connections of hosts no longer sent to were last dropped.
    swept_at: Instant,
}

impl Pool {
    fn new(max_per_host: usize) -> Self {
        Self { idle: Mutex::new(Idle { by_host: HashMap::new(), swept_at: Instant::now() }), max_per_host }
    }

    fn take(&self, key: &str) -> Option<Conn> {
        let now = Instant::now();
        // Closed after the lock is released: closing is a system call.
        let mut expired = Vec::new();
        let mut idle = self.idle.lock().expect("not poisoned");
        if now.duration_since(idle.swept_at) >= IDLE_TIMEOUT {
            idle.swept_at = now;
            idle.by_host.retain(|_, conns| {
                let fresh = conns.partition_point(|(since, _)| now.duration_since(*since) >= IDLE_TIMEOUT);
                expired.extend(conns.drain(..fresh));
                !conns.is_empty()
            });
        }
        let conns = idle.by_host.get_mut(key)?;
        let (since, conn) = conns.pop()?;
        if now.duration_since(since) < IDLE_TIMEOUT {
            return Some(conn);
        }
        // The newest is too old, so all are.
        expired.push((since, conn));
        expired.append(conns);
        drop(idle);
        drop(expired);
        None
    }

    fn put(&self, key: &str, conn: Conn) {
        let mut idle = self.idle.lock().expect("not poisoned");
        // Looked up first: the key is copied only for a host new to the pool.
        if !idle.by_host.contains_key(key) {
            idle.by_host.insert(key.to_owned(), Vec::new());
        }
        let conns = idle.by_host.get_mut(key).expect("just inserted");
        if conns.len() < self.max_per_host {
            conns.push((Instant::now(), conn));
        } else {
            drop(idle);
            drop(conn);
        }
    }
}

/// A header value from text that is known to be visible ASCII.
pub fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header values built from ids, digits and base64")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    fn client() -> DeliveryClient {
        let policy =
            Policy { dev: false, allowed: vec!["127.0.0.1/32".parse().unwrap()], dns_timeout: Duration::from_secs(1) };
        DeliveryClient::new(policy, Duration::from_secs(1), Duration::from_secs(5), 4)
    }

    /// A receiver that answers each request on a connection with `reply`
    /// until `per_connection` requests were answered, then closes it without
    /// saying so. Counts connections accepted.
    async fn receiver(reply: &'static str, per_connection: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_connection {
                        // Each test request is one small write: read until its body is in.
                        loop {
                            let mut chunk = [0; 4096];
                            let n = socket.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            if buf.ends_with(b"{}") {
                                break;
                            }
                        }
                        buf.clear();
                        socket.write_all(reply.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (url, accepted)
    }

    async fn post(client: &DeliveryClient, url: &str) -> Result<Answer, SendError> {
        client.post(&TargetUrl::parse(url).unwrap(), HeaderMap::new(), Bytes::from_static(b"{}")).await
    }

    #[tokio::test]
    async fn a_kept_alive_connection_carries_the_next_request() {
        let (url, accepted) = receiver("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", usize::MAX).await;
        let client = client();
        for _ in 0..5 {
            let answer = post(&client, &url).await.unwrap();
            assert_eq!((answer.status, answer.body_prefix.as_str()), (200, "ok"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_once() {
        // Answers one request per connection, then closes it.
        let (url, accepted) = receiver("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 1).await;
        let client = client();
        post(&client, &url).await.unwrap();
        for round in 2..=4 {
            // Whether or not its close has arrived yet, the pooled connection is dead.
            let answer = post(&client, &url).await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn a_new_connection_closed_without_an_answer_is_not_retried() {
        let (url, accepted) = receiver("", 1).await;
        let client = client();
        let e = post(&client, &url).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Protocol);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let (url, accepted) =
            receiver("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", usize::MAX).await;
        let client = client();
        for _ in 0..3 {
            post(&client, &url).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// A TLS receiver with a certificate for `localhost` only, answering
    /// every request with 200 on one kept-alive connection. Reports the SNI
    /// of each connection it accepts.
    async fn tls_receiver() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Option<String>>) {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs = CertificateDer::pem_slice_iter(include_bytes!("../../tests/fixtures/tls/localhost.pem"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../../tests/fixtures/tls/localhost.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sni_tx, sni_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, sni_tx) = (acceptor.clone(), sni_tx.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else { return };
                    let _ = sni_tx.send(tls.get_ref().1.server_name().map(str::to_owned));
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.ends_with(b"{}") {
                            buf.clear();
                            tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure").await.unwrap();
                        }
                    }
                });
            }
        });
        (port, sni_rx)
    }

    fn tls_client() -> DeliveryClient {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;

        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(include_bytes!("../../tests/fixtures/tls/ca.pem")).unwrap();
        roots.add(ca).unwrap();
        // --dev: `localhost` resolves to loopback addresses only.
        let policy = Policy { dev: true, allowed: vec![], dns_timeout: Duration::from_secs(1) };
        DeliveryClient::with_roots(policy, Duration::from_secs(1), Duration::from_secs(5), 4, roots)
    }

    #[tokio::test]
    async fn https_is_spoken_over_tls_with_the_url_host_as_server_name() {
        let (port, mut sni) = tls_receiver().await;
        let client = tls_client();
        let url = format!("https://localhost:{port}/hook");
        for _ in 0..3 {
            let answer = post(&client, &url).await.unwrap();
            assert_eq!((answer.status, answer.body_prefix.as_str()), (200, "secure"));
        }
        assert_eq!(sni.recv().await.unwrap().as_deref(), Some("localhost"));
        assert!(sni.try_recv().is_err(), "three requests used more than one TLS connection");
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_a_tls_error() {
        let (port, _sni) = tls_receiver().await;
        let e = post(&tls_client(), &format!("https://127.0.0.1:{port}/hook")).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Tls, "{}", e.message);
        assert!(e.message.contains("certificate"), "{}", e.message);
        // And the production client knows only the webpki roots, not the test CA.
        let e = post(&client(), &format!("https://127.0.0.1:{port}/hook")).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Tls, "{}", e.message);
        assert!(e.message.contains("certificate"), "{}", e.message);
    }
}
