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
//! Measured again against a client on `hyper::client::conn::http1` with a
//! small pool of its own (`benches/delivery_client.rs`; 2026-12-02, this
//! 2-core machine, shared with other builds, load average 5-6): CPU per
//! delivery of the client process (`CLOCK_PROCESS_CPUTIME_ID`, the receiver in
//! a child process on 127.0.0.1), release build, 40,000 deliveries a run, 8
//! events in flight, each delivery a task of its own, the two clients in
//! alternating order, medians of 7 pairs; two runs of the bench:
//!
//! | scenario | this client | hyper conn + pool | hyper / this, median of pairs |
//! |---|---|---|---|
//! | fan-out to 10 targets | 22.7 µs, 22.4 µs | 31.8 µs, 31.7 µs | 1.42, 1.36 |
//! | 1 target | 22.1 µs, 20.9 µs | 30.5 µs, 27.1 µs | 1.36, 1.29 |
//!
//! hyper's connection API costs 29-42 % more CPU per delivery (a connection
//! task and a channel hop per request), far outside the 5 % that would have
//! paid for dropping this code, so it stays; the property test in
//! `http1/props.rs` holds its reading to a reference.
//!
//! Redirects are never followed (nothing here would follow one), and no proxy
//! is used: the connector dials the target itself, whatever `HTTPS_PROXY` says.
//!
//! Connecting: the name is looked up by the SSRF policy's bounded resolver
//! ([`crate::ssrf::Resolver`]), and the checked addresses are raced Happy
//! Eyeballs style (`race`), so one dead address costs 250 ms, not the
//! connect timeout.
//!
//! Kept-alive connections (SPEC §8): before an idle connection carries a
//! request it is checked without waiting; one the receiver wrote to or closed
//! meanwhile is dropped. A request written on a kept-alive connection that
//! then breaks without a byte of answer is sent once more on a new
//! connection, and [`Sent::resent_after`] tells the caller so it can count
//! both.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderValue};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Host;

use super::http1::{self, ResponseError};
use super::policy::ErrorClass;
use crate::domain::TargetUrl;
use crate::ssrf::{Policy, Refusal, Resolver};

/// How much of a response body is kept in the attempt log.
pub const KEPT_BODY_BYTES: usize = 1024;
/// How long a connection may sit idle in the pool; receivers close idle
/// connections too (often sooner), and an old one is likelier to be dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a connection attempt has to itself before the next address is
/// tried alongside it (RFC 8305 §5 recommends 250 ms).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

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

/// Opens a TCP connection to one address the policy checked. Injectable so
/// tests can make an address hang without touching the network.
type Dial = dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>> + Send + Sync;

/// Resolves, checks and connects; see the module docs.
struct GuardedConnector {
    policy: Arc<Policy>,
    /// Looks names up, a bounded number at once.
    resolver: Arc<Resolver>,
    dial: Arc<Dial>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    async fn connect(&self, host: &Host<&str>, port: u16, https: bool) -> Result<TcpStream, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let addrs = self.policy.resolve_with(&self.resolver, host, port, https).await?;
        // Only the addresses just checked are dialled: no second lookup.
        let stream = race(addrs, |addr| (self.dial)(addr), deadline).await?;
        // Small request/response exchanges: do not wait to coalesce.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Connects to one of `addrs` the Happy Eyeballs way (RFC 8305): addresses
/// are tried in [`interleave`]d order, each attempt starting [`ATTEMPT_DELAY`]
/// after the one before or as soon as one fails, while earlier attempts go
/// on; the first connection made wins and the attempts still running are
/// dropped. So a host whose first address black-holes (a broken IPv6 route,
/// a dead server behind one A record) is reached through the next one well
/// within `deadline`, instead of after the whole connect timeout.
async fn race<T, F>(
    addrs: Vec<SocketAddr>,
    dial: impl Fn(SocketAddr) -> F,
    deadline: tokio::time::Instant,
) -> Result<T, ConnectError>
where
    F: Future<Output = std::io::Result<T>>,
{
    enum Event<T> {
        StartNext,
        Ended(std::io::Result<T>),
    }
    let mut waiting = interleave(addrs);
    let mut running: Vec<Pin<Box<F>>> = Vec::new();
    let next_start = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(next_start);
    loop {
        let event = std::future::poll_fn(|cx| {
            for i in 0..running.len() {
                if let Poll::Ready(result) = running[i].as_mut().poll(cx) {
                    drop(running.swap_remove(i));
                    return Poll::Ready(Event::Ended(result));
                }
            }
            if !waiting.is_empty() && next_start.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::StartNext);
            }
            Poll::Pending
        });
        match tokio::time::timeout_at(deadline, event).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Event::Ended(Ok(stream))) => return Ok(stream),
            Ok(Event::Ended(Err(e))) => {
                if waiting.is_empty() && running.is_empty() {
                    return Err(ConnectError::Io(e));
                }
                // A failed attempt hands over to the next address at once.
                next_start.as_mut().reset(tokio::time::Instant::now());
            }
            Ok(Event::StartNext) => {
                let addr = waiting.pop_front().expect("polled only while some wait");
                running.push(Box::pin(dial(addr)));
                next_start.as_mut().reset(tokio::time::Instant::now() + ATTEMPT_DELAY);
            }
        }
    }
}

/// The order addresses are tried in (RFC 8305 §4): the resolver's order
/// (`getaddrinfo` sorts by RFC 6724, so the first address's family is the
/// one this host prefers), with the two families taking turns, so one broken
/// family costs one attempt delay and not one per address.
fn interleave(addrs: Vec<SocketAddr>) -> VecDeque<SocketAddr> {
    let first_is_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut preferred, mut other): (VecDeque<_>, VecDeque<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    let mut order = VecDeque::with_capacity(preferred.len() + other.len());
    while !preferred.is_empty() || !other.is_empty() {
        order.extend(preferred.pop_front());
        order.extend(other.pop_front());
    }
    order
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

/// What one [`DeliveryClient::post`] did.
#[derive(Debug)]
pub struct Sent {
    /// The answer to the last request sent, or why there was none.
    pub result: Result<Answer, SendError>,
    /// Set when the request was first written on a kept-alive connection
    /// that broke without a byte of answer, and then sent again on a new
    /// connection: why the first one failed. The receiver may have got the
    /// first request too, so it is an attempt of its own (SPEC §8: every
    /// request sent is an attempt).
    pub resent_after: Option<SendError>,
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
            connector: GuardedConnector {
                policy: Arc::new(policy),
                resolver: Resolver::system(),
                dial: Arc::new(|addr| Box::pin(TcpStream::connect(addr))),
                connect_timeout,
            },
            tls: TlsConnector::from(Arc::new(tls)),
            pool: Pool::new(max_idle_per_host),
            request_timeout,
        }
    }

    /// POSTs `body` to `target` with `headers`; reads at most the kept prefix
    /// of the answer (a small body is read to its end to keep the connection).
    pub async fn post(&self, target: &TargetUrl, headers: HeaderMap, body: Bytes) -> Sent {
        // Every step is bounded by this deadline: connecting (also bounded by
        // the connect timeout), the TLS handshake, sending, and the response
        // head. A body still arriving then is cut short, but the receiver did
        // answer: its status counts, and the attempt is not a timeout.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let timed_out = || SendError {
            class: ErrorClass::Timeout,
            message: format!("no complete answer within {} s", self.request_timeout.as_secs_f32()),
        };
        let mut resent_after = None;
        let result = match self.exchange(target, &headers, &body, deadline, &mut resent_after).await {
            Err(e) if e.class == ErrorClass::Timeout && tokio::time::Instant::now() >= deadline => Err(timed_out()),
            other => other,
        };
        Sent { result, resent_after }
    }

    async fn exchange(
        &self,
        target: &TargetUrl,
        headers: &HeaderMap,
        body: &[u8],
        deadline: tokio::time::Instant,
        resent_after: &mut Option<SendError>,
    ) -> Result<Answer, SendError> {
        if let Some(mut conn) = self.take_quiet(target) {
            match conn.round_trip(target, headers, body, deadline).await {
                Ok(response) => return Ok(self.finish(target, conn, response)),
                // The receiver closed the connection after it was checked (it
                // may have timed it out just then): once more, on a new
                // connection, and the caller learns that two requests went out.
                Err(ResponseError::NothingReceived(m)) => *resent_after = Some(SendError::protocol(m)),
                Err(e) => return Err(e.into()),
            }
        }
        let mut conn = self.connect(target, deadline).await?;
        let response = conn.round_trip(target, headers, body, deadline).await?;
        Ok(self.finish(target, conn, response))
    }

    /// An idle connection to `target` that the receiver left alone (SPEC §8):
    /// one it wrote to or closed while idle is dropped, never written to, so
    /// bytes it sent then (a `408` before closing, say) are never taken as
    /// the answer to this request.
    fn take_quiet(&self, target: &TargetUrl) -> Option<Conn> {
        loop {
            let mut conn = self.pool.take(target.pool_key())?;
            if conn.is_quiet() {
                return Some(conn);
            }
        }
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

    /// Whether the receiver neither wrote nor closed since the last answer,
    /// asked without waiting: one read is polled with a waker that does
    /// nothing. Only a read that would block means quiet; bytes, end of
    /// stream or an error all mean the connection is done. (TLS records
    /// without data, such as session tickets, are taken in by rustls and
    /// read as quiet.)
    fn is_quiet(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut byte = [0; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
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

    async fn send(client: &DeliveryClient, url: &str) -> Sent {
        client.post(&TargetUrl::parse(url).unwrap(), HeaderMap::new(), Bytes::from_static(b"{}")).await
    }

    async fn post(client: &DeliveryClient, url: &str) -> Result<Answer, SendError> {
        send(client, url).await.result
    }

    /// Reads one test request (a single small write ending in its `{}` body);
    /// false when the connection closed first.
    async fn read_request(socket: &mut tokio::net::TcpStream) -> bool {
        let mut buf = Vec::new();
        while !buf.ends_with(b"{}") {
            let mut chunk = [0; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
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
            // The close is seen before reuse: no request is lost on the dead connection.
            let sent = send(&client, &url).await;
            assert_eq!(sent.result.unwrap().status, 200);
            assert!(sent.resent_after.is_none(), "{:?}", sent.resent_after);
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn bytes_a_receiver_wrote_on_an_idle_connection_are_never_taken_as_an_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (first_answered_tx, first_answered) = tokio::sync::oneshot::channel::<()>();
        let (timed_out_tx, timed_out) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // First connection: one answer, then, while it idles, a 408 and a close.
            let (mut socket, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut socket).await);
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst").await.unwrap();
            first_answered.await.unwrap();
            socket
                .write_all(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 4\r\n\r\nidle")
                .await
                .unwrap();
            drop(socket);
            timed_out_tx.send(()).unwrap();
            // Second connection: the real answer.
            let (mut socket, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut socket).await);
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh").await.unwrap();
        });
        let client = client();

        assert_eq!(post(&client, &url).await.unwrap().body_prefix, "first");
        first_answered_tx.send(()).unwrap();
        timed_out.await.unwrap();
        let sent = send(&client, &url).await;

        let answer = sent.result.unwrap();
        assert_eq!((answer.status, answer.body_prefix.as_str()), (200, "fresh"));
        assert!(sent.resent_after.is_none(), "nothing was written on the idle connection");
    }

    #[tokio::test]
    async fn a_request_lost_on_a_kept_alive_connection_is_sent_again_and_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            // First connection: answers one request, then reads the next and hangs up on it.
            let (mut socket, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut socket).await);
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            assert!(read_request(&mut socket).await);
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
            let (mut socket, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut socket).await);
            seen.fetch_add(1, Ordering::SeqCst);
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain").await.unwrap();
        });
        let client = client();
        post(&client, &url).await.unwrap();

        let sent = send(&client, &url).await;

        assert_eq!(sent.result.unwrap().body_prefix, "again");
        let first = sent.resent_after.expect("the lost request is reported");
        assert_eq!(first.class, ErrorClass::Protocol, "{}", first.message);
        assert_eq!(requests.load(Ordering::SeqCst), 2, "the receiver got both requests");
    }

    /// A client whose resolver answers `addrs` for any name and whose dialler
    /// never completes a connection to `black_hole`.
    fn client_with_addresses(addrs: Vec<SocketAddr>, black_hole: SocketAddr) -> DeliveryClient {
        let policy = Policy { dev: true, allowed: vec![], dns_timeout: Duration::from_secs(1) };
        let mut client = DeliveryClient::new(policy, Duration::from_secs(1), Duration::from_secs(5), 4);
        client.connector.resolver = Arc::new(Resolver::with_lookup(4, move |_, _| Ok(addrs.clone())));
        client.connector.dial = Arc::new(move |addr| {
            if addr == black_hole { Box::pin(std::future::pending()) } else { Box::pin(TcpStream::connect(addr)) }
        });
        client
    }

    #[tokio::test]
    async fn a_target_whose_first_address_hangs_is_reached_through_the_next_within_the_connect_timeout() {
        let (url, accepted) = receiver("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", usize::MAX).await;
        let port = TargetUrl::parse(&url).unwrap().port();
        let (v6, v4) = (SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], port)));
        let client = client_with_addresses(vec![v6, v4], v6);
        let started = std::time::Instant::now();

        let answer = post(&client, &format!("http://receiver.test:{port}/hook")).await.unwrap();

        assert_eq!(answer.status, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() >= ATTEMPT_DELAY, "the second address waited its turn");
    }

    /// A dial attempt that connects to (here: returns) its address.
    type TestDial = Pin<Box<dyn Future<Output = std::io::Result<SocketAddr>> + Send>>;

    /// Dials that end as told (`None`: never), noting which addresses were dialled.
    fn scripted_dial(
        script: Vec<(SocketAddr, Option<Result<(), ()>>)>,
    ) -> (impl Fn(SocketAddr) -> TestDial, Arc<Mutex<Vec<SocketAddr>>>) {
        let dialled = Arc::new(Mutex::new(Vec::new()));
        let log = dialled.clone();
        let dial = move |addr: SocketAddr| -> TestDial {
            log.lock().unwrap().push(addr);
            match script.iter().find(|(a, _)| *a == addr).and_then(|(_, end)| *end) {
                None => Box::pin(std::future::pending()),
                Some(Ok(())) => Box::pin(std::future::ready(Ok(addr))),
                Some(Err(())) => Box::pin(std::future::ready(Err(std::io::ErrorKind::ConnectionRefused.into()))),
            }
        };
        (dial, dialled)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_families_take_turns_starting_with_the_resolvers_first() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["[::1]:1", "[::2]:1", "1.0.0.1:1", "1.0.0.2:1"], &["[::1]:1", "1.0.0.1:1", "[::2]:1", "1.0.0.2:1"]),
            (&["1.0.0.1:1", "[::1]:1", "[::2]:1", "[::3]:1"], &["1.0.0.1:1", "[::1]:1", "[::2]:1", "[::3]:1"]),
            (&["1.0.0.1:1", "1.0.0.2:1"], &["1.0.0.1:1", "1.0.0.2:1"]),
            (&[], &[]),
        ];
        for (resolved, tried) in cases {
            let got: Vec<SocketAddr> = interleave(resolved.iter().map(|a| addr(a)).collect()).into();
            let want: Vec<SocketAddr> = tried.iter().map(|a| addr(a)).collect();
            assert_eq!(got, want, "{resolved:?}");
        }
    }

    #[tokio::test]
    async fn an_attempt_that_hangs_is_joined_by_the_next_after_the_attempt_delay() {
        let (a, b) = (addr("[::1]:1"), addr("127.0.0.1:1"));
        let (dial, dialled) = scripted_dial(vec![(a, None), (b, Some(Ok(())))]);
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(2);

        let got = race(vec![a, b], dial, deadline).await.unwrap();

        assert_eq!(got, b);
        assert_eq!(*dialled.lock().unwrap(), [a, b]);
        assert!(started.elapsed() >= ATTEMPT_DELAY);
    }

    #[tokio::test]
    async fn a_failed_attempt_hands_over_to_the_next_at_once() {
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        let (dial, _) = scripted_dial(vec![(a, Some(Err(()))), (b, Some(Ok(())))]);
        // Too short to wait out the attempt delay: only an immediate hand-over connects in time.
        let deadline = tokio::time::Instant::now() + ATTEMPT_DELAY / 2;

        assert_eq!(race(vec![a, b], dial, deadline).await.unwrap(), b);
    }

    #[tokio::test]
    async fn the_first_connection_wins_and_attempts_still_running_are_dropped() {
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        let still_running = Arc::new(());
        let held = still_running.clone();
        let dial = move |addr: SocketAddr| {
            let held = held.clone();
            async move {
                if addr == a {
                    let _held = held;
                    std::future::pending::<()>().await;
                }
                Ok(addr)
            }
        };

        let got = race(vec![a, b], dial, tokio::time::Instant::now() + Duration::from_secs(2)).await.unwrap();

        assert_eq!(got, b);
        assert_eq!(Arc::strong_count(&still_running), 1, "the hanging attempt was dropped");
    }

    #[tokio::test]
    async fn when_every_attempt_fails_the_last_error_is_told_and_the_deadline_bounds_them_all() {
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        let (dial, dialled) = scripted_dial(vec![(a, Some(Err(()))), (b, Some(Err(())))]);
        let e = race(vec![a, b], dial, tokio::time::Instant::now() + Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(&e, ConnectError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused), "{e:?}");
        assert_eq!(*dialled.lock().unwrap(), [a, b]);

        let (dial, dialled) = scripted_dial(vec![]);
        let deadline = tokio::time::Instant::now() + ATTEMPT_DELAY + ATTEMPT_DELAY / 2;
        let e = race(vec![a, b, addr("127.0.0.3:1")], dial, deadline).await.unwrap_err();
        assert!(matches!(e, ConnectError::Timeout), "{e:?}");
        assert_eq!(*dialled.lock().unwrap(), [a, b], "a third attempt was not due before the deadline");
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
