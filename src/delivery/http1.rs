//! HTTP/1.1 on one connection, as the delivery client speaks it: a request is
//! encoded into one buffer and written at once, and a response is read with
//! `httparse` just far enough to know its status, its `Retry-After`, the kept
//! prefix of its body, and whether the connection can carry another request.
//!
//! Receivers are arbitrary servers on the internet, so nothing here trusts
//! them: the head is bounded ([`MAX_HEAD`]), a body is read to its end only
//! when that end is near ([`DRAIN_LIMIT`]), and anything unexpected makes the
//! connection single-use rather than guessed at.

use std::io::Write as _;
use std::mem::MaybeUninit;

use bytes::{Buf as _, BytesMut};
use hyper::header::{CONTENT_LENGTH, HOST, HeaderMap, TRANSFER_ENCODING};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::time::Instant;

use super::client::KEPT_BODY_BYTES;

/// The largest response head (status line, headers, and any interim 1xx
/// responses before it) read before the answer is called garbage.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one response head.
const MAX_HEADERS: usize = 100;
/// A body is read to its end, so the connection can be reused, only while
/// that end lies within the kept prefix (plus room for chunk framing); a
/// longer body is not read on and the connection is closed instead. SPEC §5:
/// response bodies are not read past the kept prefix.
pub const DRAIN_LIMIT: u64 = KEPT_BODY_BYTES as u64 + 64;
/// The longest chunk-size or trailer line accepted in a chunked body, CRLF
/// included.
const LINE_LIMIT: usize = 4 * 1024;
/// The most bytes of a body (its framing included) read for its prefix. A
/// plain body fills the prefix within its first [`KEPT_BODY_BYTES`], a chunked
/// one a little later; this bounds hostile framing (one-byte chunks with long
/// extensions). The kept prefix is what the body's first `BODY_READ_LIMIT`
/// bytes hold, however the bytes arrive.
const BODY_READ_LIMIT: usize = 4 * LINE_LIMIT;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Writes `POST <path> HTTP/1.1` with `Host`, `headers` and `Content-Length`,
/// then the body, into `out`. `Host`, `Content-Length` and `Transfer-Encoding`
/// in `headers` are ignored: the framing is ours to state.
pub fn encode_request(out: &mut Vec<u8>, path: &str, host: &str, headers: &HeaderMap, body: &[u8]) {
    out.clear();
    out.reserve(256 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == HOST || name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        // `HeaderName` and `HeaderValue` cannot hold CR or LF, so no header
        // can end early or smuggle another one.
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

/// What a receiver answered, and what that leaves of the connection.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    /// At most [`KEPT_BODY_BYTES`] of the body.
    pub body_prefix: Vec<u8>,
    /// The whole response was read, nothing followed it, and neither side
    /// said the connection ends here: it can carry another request.
    pub reusable: bool,
}

/// Why there is no response.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The connection closed or broke before a single byte of a response
    /// arrived. On a reused connection this is most often the receiver having
    /// closed it while it was idle, and a new connection may well succeed.
    NothingReceived(String),
    /// The receiver sent something that is not an HTTP/1.x response, or the
    /// connection broke inside the response head.
    Protocol(String),
    /// The deadline passed before the response head was complete.
    TimedOut,
}

/// How the end of a response body is known (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// The body ends when the connection does.
    UntilClose,
}

/// The parts of a final response head that matter here.
#[derive(Debug)]
struct Head {
    status: u16,
    retry_after: Option<String>,
    framing: Framing,
    keep_alive: bool,
}

enum Parsed {
    /// A 1xx response (100 Continue, 103 Early Hints, …): another head follows.
    Interim,
    Final(Head),
}

/// Reads one response from `io`. `buf` holds bytes already read and receives
/// the bytes read; it is empty afterwards when the response is reusable.
/// A head not complete by `deadline` is an error; a body not complete by then
/// ends there: the receiver answered, and its status is what counts.
pub async fn read_response<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<Response, ResponseError> {
    let mut received = !buf.is_empty();
    // Bytes of interim responses already consumed, counted against MAX_HEAD.
    let mut interim_bytes = 0;
    // How much of `buf` is known to hold no blank line: the head is parsed
    // again only when one arrives, so a head sent a byte at a time costs
    // linear time, not quadratic. Bytes first read are always parsed, so
    // garbage is refused at once.
    let mut scanned: usize = 0;
    let too_large = || ResponseError::Protocol(format!("the response head is larger than {} KiB", MAX_HEAD / 1024));
    let head = loop {
        if scanned == 0 || has_blank_line(&buf[scanned.saturating_sub(2)..]) {
            let parsed = parse_head(buf).map_err(ResponseError::Protocol)?;
            // Checked on complete heads too, so that the bound does not
            // depend on how much of a head arrived in one read.
            if parsed.as_ref().is_some_and(|(len, _)| interim_bytes + len > MAX_HEAD) {
                return Err(too_large());
            }
            match parsed {
                Some((len, Parsed::Interim)) => {
                    buf.advance(len);
                    interim_bytes += len;
                    scanned = 0;
                    continue;
                }
                Some((len, Parsed::Final(head))) => {
                    buf.advance(len);
                    break head;
                }
                None => {}
            }
        }
        if interim_bytes + buf.len() >= MAX_HEAD {
            return Err(too_large());
        }
        scanned = buf.len();
        let Ok(filled) = tokio::time::timeout_at(deadline, fill(io, buf)).await else {
            // Bytes that are no head are refused as such, not waited on,
            // however slowly they came (they were not all parsed yet).
            parse_head(buf).map_err(ResponseError::Protocol)?;
            return Err(ResponseError::TimedOut);
        };
        match filled {
            Ok(0) if !received => {
                return Err(ResponseError::NothingReceived("the connection closed before a response".into()));
            }
            Err(e) if !received => {
                return Err(ResponseError::NothingReceived(format!("the connection failed before a response: {e}")));
            }
            Ok(0) => return Err(ResponseError::Protocol("the connection closed inside the response head".into())),
            Err(e) => {
                return Err(ResponseError::Protocol(format!("the connection failed inside the response head: {e}")));
            }
            Ok(_) => received = true,
        }
    };
    let (body_prefix, complete) = read_body(io, buf, head.framing, deadline).await;
    Ok(Response {
        status: head.status,
        retry_after: head.retry_after,
        body_prefix,
        reusable: complete && head.keep_alive && buf.is_empty(),
    })
}

/// Whether `bytes` hold an empty line, which ends a head (httparse also
/// accepts bare LF line endings).
fn has_blank_line(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    io.read_buf(buf).await
}

/// Parses a complete head at the start of `buf`: `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Parsed)>, String> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    // Leniencies real servers need; none of them changes where a message ends.
    let len = match httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .parse_response_with_uninit_headers(&mut response, buf, &mut headers)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("the response has more than {MAX_HEADERS} headers"));
        }
        Err(e) => return Err(format!("the receiver did not answer in HTTP/1.x ({e})")),
    };
    let status = response.code.expect("set in a complete response");
    match status {
        101 => return Err("the receiver switched protocols (101), which was not asked for".into()),
        100..=199 => return Ok(Some((len, Parsed::Interim))),
        200.. => {}
        _ => return Err(format!("the response has an invalid status code {status}")),
    }
    let http10 = response.version == Some(0);
    let mut retry_after = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = None;
    let (mut close, mut keep_alive_token) = (false, false);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or("the response has an invalid Content-Length")?;
            if content_length.is_some_and(|seen| seen != n) {
                return Err("the response has conflicting Content-Length headers".into());
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the message ends.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") && retry_after.is_none() {
            retry_after = std::str::from_utf8(h.value).ok().map(|v| v.trim().to_owned());
        }
    }
    let framing = match (status, chunked, content_length) {
        (204 | 304, _, _) => Framing::Length(0),
        (_, Some(true), _) => Framing::Chunked,
        (_, Some(false), _) => Framing::UntilClose,
        (_, None, Some(n)) => Framing::Length(n),
        (_, None, None) => Framing::UntilClose,
    };
    // A message with both Transfer-Encoding and Content-Length may be an
    // attempt at request smuggling: answer it, then close (RFC 9112 §6.1).
    let ambiguous = chunked.is_some() && content_length.is_some();
    let keep_alive = !close && !ambiguous && framing != Framing::UntilClose && (!http10 || keep_alive_token);
    Ok(Some((len, Parsed::Final(Head { status, retry_after, framing, keep_alive }))))
}

/// Digits, or a list of identical digit strings ("42, 42", RFC 9110 §8.6).
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// The first [`KEPT_BODY_BYTES`] of a body.
#[derive(Default)]
struct Prefix(Vec<u8>);

impl Prefix {
    fn keep(&mut self, data: &[u8]) {
        let room = KEPT_BODY_BYTES - self.0.len();
        self.0.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn full(&self) -> bool {
        self.0.len() == KEPT_BODY_BYTES
    }
}

/// Where a body decoder stands after consuming what was buffered.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Done,
    NeedMore,
    /// Not valid framing: the connection cannot be used again.
    Invalid,
}

/// Decodes a body as it arrives, keeping its prefix.
enum Decoder {
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk, with this many bytes of it left.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
    UntilClose,
}

impl Decoder {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::ChunkSize,
            Framing::UntilClose => Decoder::UntilClose,
        }
    }

    /// Consumes what it can from `buf`; returns how far it got and how many
    /// bytes of `buf` it consumed.
    fn decode(&mut self, buf: &[u8], body: &mut Prefix) -> (Step, usize) {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self {
                Decoder::Length(left) | Decoder::ChunkData(left) => {
                    let take = (*left).min(rest.len() as u64) as usize;
                    body.keep(&rest[..take]);
                    at += take;
                    *left -= take as u64;
                    match self {
                        Decoder::Length(0) => return (Step::Done, at),
                        Decoder::ChunkData(0) => *self = Decoder::ChunkEnd,
                        _ => return (Step::NeedMore, at),
                    }
                }
                // A size is one hex digit or more (RFC 9112 §7.1); httparse
                // reads an empty one as 0, which would end the body where the
                // receiver may not have meant it to.
                Decoder::ChunkSize if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    return (Step::Invalid, at);
                }
                Decoder::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((len, size))) if len <= LINE_LIMIT => {
                        at += len;
                        *self = if size == 0 { Decoder::Trailers } else { Decoder::ChunkData(size) };
                    }
                    Ok(httparse::Status::Partial) if rest.len() < LINE_LIMIT => return (Step::NeedMore, at),
                    _ => return (Step::Invalid, at),
                },
                Decoder::ChunkEnd => match rest.get(..2) {
                    None => return (Step::NeedMore, at),
                    Some(b"\r\n") => {
                        at += 2;
                        *self = Decoder::ChunkSize;
                    }
                    Some(_) => return (Step::Invalid, at),
                },
                Decoder::Trailers => match rest.windows(2).position(|w| w == b"\r\n") {
                    None if rest.len() < LINE_LIMIT => return (Step::NeedMore, at),
                    None => return (Step::Invalid, at),
                    Some(end) if end + 2 > LINE_LIMIT => return (Step::Invalid, at),
                    Some(0) => return (Step::Done, at + 2),
                    // A trailer field: nothing here needs it.
                    Some(end) => at += end + 2,
                },
                Decoder::UntilClose => {
                    body.keep(rest);
                    return (Step::NeedMore, buf.len());
                }
            }
        }
    }

    /// Whether the body could still end within [`DRAIN_LIMIT`], `read` bytes
    /// of it having been read (`consumed` of them decoded); once the prefix
    /// is full, reading on is worth it only then.
    fn may_end_within_drain_limit(&self, consumed: u64, read: u64) -> bool {
        match self {
            Decoder::Length(left) => consumed + left <= DRAIN_LIMIT,
            Decoder::UntilClose => false,
            // What was read and not decoded is part of the body: a line or
            // CRLF not complete yet.
            _ => read <= DRAIN_LIMIT,
        }
    }
}

/// Reads the body: its prefix, and whether it was read to its end. Errors
/// after the head end the body early but not the answer: the receiver did
/// answer, and its status is what counts.
async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    deadline: Instant,
) -> (Vec<u8>, bool) {
    let mut body = Prefix::default();
    let mut decoder = Decoder::new(framing);
    // Bytes of the body section (framing included) decoded so far.
    let mut consumed: usize = 0;
    loop {
        // Only the first BODY_READ_LIMIT bytes are ever decoded, so the prefix
        // does not depend on how many bytes one read brought in.
        let window = buf.len().min(BODY_READ_LIMIT - consumed);
        let (step, used) = decoder.decode(&buf[..window], &mut body);
        buf.advance(used);
        consumed += used;
        match step {
            // A longer body that happened to arrive whole is still not kept
            // alive for: whether a connection is reused must not depend on
            // how the bytes were cut into reads.
            Step::Done => return (body.0, consumed as u64 <= DRAIN_LIMIT),
            Step::Invalid => return (body.0, false),
            Step::NeedMore => {}
        }
        let read = consumed + buf.len();
        if read >= BODY_READ_LIMIT || (body.full() && !decoder.may_end_within_drain_limit(consumed as u64, read as u64))
        {
            return (body.0, false);
        }
        match tokio::time::timeout_at(deadline, fill(io, buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return (body.0, false),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::header::HeaderValue;
    use tokio::io::ReadBuf;

    use super::*;

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(3600)
    }

    /// A connection that delivers `data` a few bytes per read, as a slow
    /// network would, then reports end of stream.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Trickle {
        fn new(data: impl AsRef<[u8]>, step: usize) -> Self {
            Self { data: data.as_ref().to_vec(), at: 0, step }
        }

        fn unread(&self) -> usize {
            self.data.len() - self.at
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.step.min(self.unread()).min(out.remaining());
            out.put_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Reads `wire` one byte per read and again all at once, and checks both
    /// readings agree; returns the response and what was left unread.
    async fn read(wire: impl AsRef<[u8]>) -> (Result<Response, ResponseError>, usize) {
        let mut slow = Trickle::new(&wire, 1);
        let slow_result = read_response(&mut slow, &mut BytesMut::new(), far()).await;
        let mut fast = Trickle::new(&wire, usize::MAX);
        let mut buf = BytesMut::new();
        let result = read_response(&mut fast, &mut buf, far()).await;
        assert_eq!(format!("{slow_result:?}"), format!("{result:?}"), "the reading depends on how bytes arrive");
        (result, fast.unread() + buf.len())
    }

    async fn answer(wire: impl AsRef<[u8]>) -> Response {
        read(wire).await.0.expect("a response")
    }

    #[tokio::test]
    async fn a_content_length_body_is_read_and_the_connection_reused() {
        let r = answer("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 120\r\n\r\ndown").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after.as_deref(), Some("120"));
        assert_eq!(r.body_prefix, b"down");
        assert!(r.reusable);
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_with_extensions_and_trailers() {
        let r = answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nx-t: 1\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body_prefix, b"Wikipedia");
        assert!(r.reusable);
    }

    #[tokio::test]
    async fn responses_without_a_body_end_at_the_head() {
        for wire in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
        ] {
            let (r, unread) = read(wire).await;
            let r = r.unwrap();
            assert!(r.body_prefix.is_empty(), "{wire:?}");
            assert!(r.reusable, "{wire:?}");
            assert_eq!(unread, 0);
        }
    }

    #[tokio::test]
    async fn interim_1xx_responses_are_skipped() {
        let r = answer(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        assert_eq!(r.status, 201);
        assert_eq!(r.body_prefix, b"ok");
        assert!(r.reusable);
    }

    #[tokio::test]
    async fn connection_close_ends_the_connection() {
        for wire in [
            "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nconnection: Upgrade, CLOSE\r\ncontent-length: 2\r\n\r\nok",
        ] {
            let r = answer(wire).await;
            assert_eq!(r.body_prefix, b"ok");
            assert!(!r.reusable, "{wire:?}");
        }
    }

    #[tokio::test]
    async fn http_1_0_closes_unless_it_asks_for_keep_alive() {
        let r = answer("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!((r.status, r.reusable), (200, false));
        let r = answer("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!((r.status, r.reusable), (200, true));
    }

    #[tokio::test]
    async fn a_body_without_length_runs_until_the_connection_closes() {
        let r = answer("HTTP/1.0 500 Oops\r\n\r\nsomething broke").await;
        assert_eq!(r.status, 500);
        assert_eq!(r.body_prefix, b"something broke");
        assert!(!r.reusable);
    }

    #[tokio::test]
    async fn only_the_kept_prefix_of_a_body_is_returned() {
        let body = "x".repeat(5_000);
        let r = answer(format!("HTTP/1.1 500 Oops\r\ncontent-length: 5000\r\n\r\n{body}")).await;
        assert_eq!(r.body_prefix.len(), KEPT_BODY_BYTES);
        assert!(!r.reusable, "a body longer than the kept prefix is not read to its end");

        let chunk = format!("{:x}\r\n{body}\r\n", body.len());
        let r = answer(format!("HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n")).await;
        assert_eq!(r.body_prefix.len(), KEPT_BODY_BYTES);
        assert!(!r.reusable);
    }

    #[tokio::test]
    async fn a_body_within_the_kept_prefix_is_read_whole_and_the_connection_kept() {
        let body = "y".repeat(KEPT_BODY_BYTES);
        let r = answer(format!("HTTP/1.1 422 No\r\ncontent-length: {}\r\n\r\n{body}", body.len())).await;
        assert_eq!(r.body_prefix, body.as_bytes());
        assert!(r.reusable);

        let half = &body[..512];
        let chunk = format!("{:x}\r\n{half}\r\n", half.len());
        let r = answer(format!("HTTP/1.1 422 No\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n")).await;
        assert_eq!(r.body_prefix, body.as_bytes());
        assert!(r.reusable);
    }

    #[tokio::test]
    async fn a_large_body_is_not_read_past_the_prefix() {
        let body = "x".repeat(1_000_000);
        let (r, unread) = read(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())).await;
        let r = r.unwrap();
        assert_eq!(r.body_prefix.len(), KEPT_BODY_BYTES);
        assert!(!r.reusable);
        assert!(unread > 900_000, "read {} bytes of the body", 1_000_000 - unread);

        let chunk = format!("{:x}\r\n{body}\r\n", body.len());
        let (r, unread) = read(format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{chunk}0\r\n\r\n")).await;
        assert!(!r.unwrap().reusable);
        assert!(unread > 900_000);

        let (r, unread) = read(format!("HTTP/1.1 200 OK\r\n\r\n{body}")).await;
        assert_eq!(r.unwrap().body_prefix.len(), KEPT_BODY_BYTES);
        assert!(unread > 900_000);
    }

    #[tokio::test]
    async fn a_truncated_or_malformed_body_still_gives_the_status() {
        for wire in [
            "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 100\r\n\r\nshort",
            "HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n5\r\nshort",
            "HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n5\r\nshortXX0\r\n\r\n",
            "HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nshort\r\n0\r\n\r\n",
            &format!("HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n5;{}", "e".repeat(LINE_LIMIT)),
            &format!(
                "HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: {}",
                "t".repeat(LINE_LIMIT)
            ),
        ] {
            let r = answer(wire).await;
            assert_eq!(r.status, 502, "{wire:?}");
            assert!(!r.reusable, "{wire:?}");
        }
    }

    #[tokio::test]
    async fn bytes_after_the_response_make_the_connection_single_use() {
        // At once: bytes that arrive after the response was read cannot be seen.
        let mut io = Trickle::new("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", usize::MAX);
        let r = read_response(&mut io, &mut BytesMut::new(), far()).await.unwrap();
        assert_eq!(r.body_prefix, b"ok");
        assert!(!r.reusable);
    }

    #[tokio::test]
    async fn both_framings_at_once_are_answered_then_closed() {
        let r =
            answer("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                .await;
        assert_eq!(r.body_prefix, b"ok");
        assert!(!r.reusable);
    }

    #[tokio::test]
    async fn a_head_over_the_bound_is_refused_even_when_it_is_all_read_at_once() {
        let wire = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "a".repeat(MAX_HEAD));
        let mut buf = BytesMut::from(wire.as_bytes());
        let result = read_response(&mut Trickle::new("", 1), &mut buf, far()).await;
        assert!(matches!(result, Err(ResponseError::Protocol(m)) if m.contains("larger than 64 KiB")));
    }

    #[tokio::test]
    async fn an_oversized_head_is_a_protocol_error() {
        let wire = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let (result, unread) = read(wire).await;
        assert!(matches!(result, Err(ResponseError::Protocol(m)) if m.contains("larger than 64 KiB")));
        assert!(unread > 0, "reading stopped at the bound");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let (result, _) = read(format!("HTTP/1.1 200 OK\r\n{many}\r\n")).await;
        assert!(matches!(result, Err(ResponseError::Protocol(m)) if m.contains("more than 100 headers")));
        let endless_interim = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEAD / 10);
        assert!(matches!(read(endless_interim).await.0, Err(ResponseError::Protocol(_))));
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let garbage: [&[u8]; 8] = [
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        ];
        for wire in garbage {
            let (result, _) = read(wire).await;
            assert!(
                matches!(result, Err(ResponseError::Protocol(_))),
                "{:?}: {result:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let r = answer("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok").await;
        assert_eq!(r.body_prefix, b"ok", "a list of identical lengths is one length");
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_byte_is_told_apart_from_one_closed_mid_head() {
        let (result, _) = read("").await;
        assert!(matches!(result, Err(ResponseError::NothingReceived(_))));
        let (result, _) = read("HTTP/1.1 200 OK\r\ncontent-le").await;
        assert!(matches!(result, Err(ResponseError::Protocol(m)) if m.contains("inside the response head")));
    }

    #[test]
    fn a_request_states_its_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("host", HeaderValue::from_static("elsewhere"));
        let mut out = Vec::new();
        encode_request(&mut out, "/hook?a=1", "example.com:8443", &headers, b"{}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /hook?a=1 HTTP/1.1\r\nhost: example.com:8443\r\ncontent-type: application/json\r\n\
             webhook-id: msg_1\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[tokio::test]
    async fn a_body_that_stalls_after_the_head_ends_at_the_deadline_with_the_status_kept() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut server, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok")
            .await
            .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(100);
        let r = read_response(&mut client, &mut BytesMut::new(), deadline).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body_prefix, b"ok");
        assert!(!r.reusable);
        drop(server);
    }

    #[tokio::test]
    async fn a_head_that_stalls_times_out() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut server, b"HTTP/1.1 200 OK\r\ncontent-le").await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(100);
        let result = read_response(&mut client, &mut BytesMut::new(), deadline).await;
        assert_eq!(result.err(), Some(ResponseError::TimedOut));
        drop(server);
    }
}
