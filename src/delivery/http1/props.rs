//! Generated responses read by [`read_response`] and by a reference reading
//! written here as plainly as possible, in every framing (Content-Length,
//! chunked with extensions and trailers, close-delimited, interim 1xx, 204 and
//! 304 without a body), with bad sizes and cut-off streams, and with the bytes
//! arriving whole, a byte at a time, split at every position, or in generated
//! pieces. The two readings must agree, whatever the split.
//!
//! The reference takes the head from `httparse` (the reader's parser too: what
//! is tested is everything around it) and decodes the body in one pass over
//! the whole stream, applying the reader's limits as they are documented:
//! [`MAX_HEAD`], [`KEPT_BODY_BYTES`], [`DRAIN_LIMIT`], [`BODY_READ_LIMIT`],
//! [`LINE_LIMIT`].

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::ReadBuf;

use super::*;

/// How the stream ends after its last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The receiver closes the connection.
    Eof,
    /// The receiver sends nothing more and keeps the connection open: the
    /// reader's deadline ends the wait.
    Stall,
}

/// A connection that delivers `wire` in pieces of the given sizes (cycled).
struct Pieces<'a> {
    wire: &'a [u8],
    sizes: &'a [usize],
    at: usize,
    piece: usize,
    end: End,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let left = self.wire.len() - self.at;
        if left == 0 {
            return match self.end {
                End::Eof => Poll::Ready(Ok(())),
                End::Stall => Poll::Pending,
            };
        }
        let size = self.sizes[self.piece % self.sizes.len()].max(1);
        self.piece += 1;
        let n = size.min(left).min(out.remaining());
        out.put_slice(&self.wire[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// What a reading comes to, in terms both readings can state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reading {
    Answer { status: u16, retry_after: Option<String>, body_prefix: Vec<u8>, reusable: bool },
    NothingReceived,
    Protocol,
    TimedOut,
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap());

/// The reader's reading of `wire` arriving in pieces of `sizes`, and whether
/// bytes past the response were already buffered when it ended.
fn read_in_pieces(wire: &[u8], sizes: &[usize], end: End) -> (Reading, usize) {
    RUNTIME.block_on(async {
        let mut io = Pieces { wire, sizes, at: 0, piece: 0, end };
        let mut buf = BytesMut::new();
        // A stalled stream times out at once: a deadline already past still
        // lets every read that is ready complete first.
        let deadline = match end {
            End::Eof => Instant::now() + std::time::Duration::from_secs(3600),
            End::Stall => Instant::now(),
        };
        let reading = match read_response(&mut io, &mut buf, deadline).await {
            Ok(r) => Reading::Answer {
                status: r.status,
                retry_after: r.retry_after,
                body_prefix: r.body_prefix,
                reusable: r.reusable,
            },
            Err(ResponseError::NothingReceived(_)) => Reading::NothingReceived,
            Err(ResponseError::Protocol(_)) => Reading::Protocol,
            Err(ResponseError::TimedOut) => Reading::TimedOut,
        };
        (reading, buf.len())
    })
}

/// The reference reading of a whole stream. For an answer, also whether
/// bytes follow the response: a reader that has not seen them yet may call
/// the connection reusable (the pool's idle check catches them later).
fn reference(wire: &[u8], end: End) -> (Reading, bool) {
    let mut at = 0;
    loop {
        let rest = &wire[at..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .parse_response(&mut response, rest);
        let len = match parsed {
            Err(_) => return (Reading::Protocol, false),
            // Heads longer than MAX_HEAD, interim responses included, are refused.
            Ok(httparse::Status::Partial) if wire.len() >= MAX_HEAD => return (Reading::Protocol, false),
            Ok(httparse::Status::Partial) => {
                let reading = match (end, wire.is_empty()) {
                    (End::Stall, _) => Reading::TimedOut,
                    (End::Eof, true) => Reading::NothingReceived,
                    (End::Eof, false) => Reading::Protocol,
                };
                return (reading, false);
            }
            Ok(httparse::Status::Complete(len)) if at + len > MAX_HEAD => return (Reading::Protocol, false),
            Ok(httparse::Status::Complete(len)) => len,
        };
        at += len;
        let status = response.code.unwrap();
        if status == 101 || status < 100 {
            return (Reading::Protocol, false);
        }
        if status < 200 {
            continue;
        }
        let values = |name: &str| {
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect::<Vec<_>>()
        };
        let retry_after = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| v.trim().to_owned());
        // Content-Length: digits, or a list of equal digit strings; anything else is an error.
        let mut length = None;
        for value in values("content-length") {
            for part in value.split(',').map(str::trim) {
                let Some(n) = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| part.parse::<u64>().ok())
                    .flatten()
                else {
                    return (Reading::Protocol, false);
                };
                if length.is_some_and(|l| l != n) {
                    return (Reading::Protocol, false);
                }
                length = Some(n);
            }
        }
        let codings = values("transfer-encoding");
        let chunked = (!codings.is_empty()).then(|| {
            let all = codings.join(",");
            all.rsplit(',').next().unwrap().trim().eq_ignore_ascii_case("chunked")
        });
        let tokens: Vec<String> =
            values("connection").iter().flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase())).collect();
        let body = &wire[at..];
        // RFC 9112 §6.3, in order.
        let plain = |data: &[u8], end| Decoded { data: data.to_vec(), end };
        let (decoded, window) = match (status, chunked, length) {
            (204 | 304, _, _) => (plain(&[], Some(0)), plain(&[], Some(0))),
            (_, Some(true), _) => (decode_chunked(body), decode_chunked(&body[..body.len().min(BODY_READ_LIMIT)])),
            (_, Some(false), _) | (_, None, None) => (plain(body, None), plain(body, None)),
            (_, None, Some(n)) => {
                let end = (body.len() as u64 >= n).then_some(n as usize);
                let data = &body[..body.len().min(n as usize)];
                (plain(data, end), plain(data, end))
            }
        };
        let persistent = if response.version == Some(0) {
            tokens.iter().any(|t| t == "keep-alive") && !tokens.iter().any(|t| t == "close")
        } else {
            !tokens.iter().any(|t| t == "close")
        };
        let ambiguous = chunked.is_some() && length.is_some();
        let close_delimited =
            status != 204 && status != 304 && (chunked == Some(false) || (chunked.is_none() && length.is_none()));
        let reusable =
            persistent && !ambiguous && !close_delimited && decoded.end.is_some_and(|len| len as u64 <= DRAIN_LIMIT);
        let trailing = decoded.end.is_some_and(|len| len < body.len());
        // The prefix: body data found within the first BODY_READ_LIMIT bytes of the body.
        let mut body_prefix = window.data;
        body_prefix.truncate(KEPT_BODY_BYTES);
        return (
            Reading::Answer { status, retry_after, body_prefix, reusable: reusable && !trailing },
            trailing && reusable,
        );
    }
}

/// A body decoded as far as it goes: its data, and where it ended (`None`:
/// it did not, or its framing broke).
struct Decoded {
    data: Vec<u8>,
    end: Option<usize>,
}

/// RFC 9112 §7.1, plainly: `1*HEXDIG [ ; ext ] CRLF`, data, `CRLF`, … a zero
/// size, then trailer lines until an empty one. No line may exceed LINE_LIMIT.
fn decode_chunked(body: &[u8]) -> Decoded {
    let mut data = Vec::new();
    let mut at = 0;
    // The next line (without its CRLF), or None when there is no valid one.
    let line = |at: usize| -> Option<&[u8]> {
        let rest = &body[at..];
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        (end + 2 <= LINE_LIMIT).then_some(&rest[..end])
    };
    loop {
        let Some(size_line) = line(at) else { return Decoded { data, end: None } };
        at += size_line.len() + 2;
        let digits = size_line.split(|&b| b == b';').next().unwrap();
        if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Decoded { data, end: None };
        }
        let size = u64::from_str_radix(std::str::from_utf8(digits).unwrap(), 16).unwrap();
        if size == 0 {
            loop {
                let Some(trailer) = line(at) else { return Decoded { data, end: None } };
                at += trailer.len() + 2;
                if trailer.is_empty() {
                    return Decoded { data, end: Some(at) };
                }
            }
        }
        let available = (body.len() - at) as u64;
        data.extend_from_slice(&body[at..at + size.min(available) as usize]);
        if size > available {
            return Decoded { data, end: None };
        }
        at += size as usize;
        if body.get(at..at + 2) != Some(b"\r\n") {
            return Decoded { data, end: None };
        }
        at += 2;
    }
}

/// One chunk of a generated chunked body.
#[derive(Debug, Clone)]
struct Chunk {
    data: Vec<u8>,
    /// How its size is written: lower or upper case hex, leading zeros, or a bad size.
    size: SizeText,
    extension: Option<Vec<u8>>,
    /// The CRLF after the data is missing or wrong.
    bad_end: bool,
}

#[derive(Debug, Clone)]
enum SizeText {
    Lower,
    Upper,
    Zeros(usize),
    /// Written instead of the size.
    Bad(&'static str),
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let size = prop_oneof![
        8 => Just(SizeText::Lower),
        2 => Just(SizeText::Upper),
        1 => (1..20usize).prop_map(SizeText::Zeros),
        1 => prop::sample::select(vec!["", "zz", "-1", "0x10", "1ffffffffffffffff", " 5", "+5"]).prop_map(SizeText::Bad),
    ];
    let extension = prop_oneof![
        6 => Just(None),
        3 => "[a-z]{1,8}(=[a-z0-9\"]{0,8})?".prop_map(|e| Some(e.into_bytes())),
        1 => (LINE_LIMIT - 40..LINE_LIMIT + 40).prop_map(|n| Some(vec![b'e'; n])),
    ];
    (body_data(), size, extension, prop::bool::weighted(0.03)).prop_map(|(data, size, extension, bad_end)| Chunk {
        data,
        size,
        extension,
        bad_end,
    })
}

fn body_data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        2 => prop::collection::vec(any::<u8>(), 0..1200),
        // Around the kept prefix and the drain limit.
        2 => (KEPT_BODY_BYTES - 8..DRAIN_LIMIT as usize + 8).prop_map(|n| vec![b'x'; n]),
        1 => Just(b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n".to_vec()),
    ]
}

fn encode_chunked(chunks: &[Chunk], last_extension: bool, trailers: &[Vec<u8>], complete: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks.iter().filter(|c| !c.data.is_empty() || matches!(c.size, SizeText::Bad(_))) {
        match &c.size {
            SizeText::Lower => out.extend_from_slice(format!("{:x}", c.data.len()).as_bytes()),
            SizeText::Upper => out.extend_from_slice(format!("{:X}", c.data.len()).as_bytes()),
            SizeText::Zeros(n) => out.extend_from_slice(format!("{}{:x}", "0".repeat(*n), c.data.len()).as_bytes()),
            SizeText::Bad(text) => out.extend_from_slice(text.as_bytes()),
        }
        if let Some(ext) = &c.extension {
            out.push(b';');
            out.extend_from_slice(ext);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&c.data);
        out.extend_from_slice(if c.bad_end { b"X\r" } else { b"\r\n" });
    }
    if complete {
        out.extend_from_slice(if last_extension { b"0;last\r\n" } else { b"0\r\n" });
        for t in trailers {
            out.extend_from_slice(t);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How a generated response frames its body.
#[derive(Debug, Clone)]
enum Body {
    /// `Content-Length` as written (maybe wrong), then these bytes.
    Length(String, Vec<u8>),
    Chunked {
        coding: &'static str,
        chunks: Vec<Chunk>,
        last_extension: bool,
        trailers: Vec<Vec<u8>>,
        complete: bool,
    },
    /// No framing header: the body runs until the connection closes.
    UntilClose(Vec<u8>),
    /// Both framing headers at once.
    Both(String, Vec<Chunk>),
}

fn body() -> impl Strategy<Value = Body> {
    let length = body_data().prop_flat_map(|data| {
        let n = data.len();
        let stated = prop_oneof![
            8 => Just(n.to_string()),
            1 => (0..n + 20).prop_map(|m| m.to_string()),
            1 => Just(format!("{n}, {n}")),
            1 => prop::sample::select(vec!["-1", "abc", "99999999999999999999999", "1, 2", ""]).prop_map(str::to_owned),
        ];
        (stated, Just(data)).prop_map(|(stated, data)| Body::Length(stated, data))
    });
    let trailer = prop_oneof![
        3 => "[a-z]{1,8}: [a-z0-9 ]{0,16}".prop_map(String::into_bytes),
        1 => (LINE_LIMIT - 40..LINE_LIMIT + 40).prop_map(|n| [b"x-t: ".as_slice(), &vec![b't'; n]].concat()),
    ];
    let chunked = (
        prop::sample::select(vec!["chunked", "gzip, chunked", "CHUNKED"]),
        prop::collection::vec(chunk(), 0..6),
        any::<bool>(),
        prop::collection::vec(trailer, 0..3),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(coding, chunks, last_extension, trailers, complete)| Body::Chunked {
            coding,
            chunks,
            last_extension,
            trailers,
            complete,
        });
    prop_oneof![
        4 => length,
        4 => chunked,
        2 => body_data().prop_map(Body::UntilClose),
        1 => prop::collection::vec(chunk(), 0..3).prop_map(|chunks| Body::Both("3".into(), chunks)),
    ]
}

/// A generated stream: interim responses, a final head, a body, maybe more bytes.
#[derive(Debug, Clone)]
struct Stream {
    wire: Vec<u8>,
    end: End,
}

fn stream() -> impl Strategy<Value = Stream> {
    let interim = prop::collection::vec(
        prop::sample::select(vec![
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        ]),
        0..3,
    );
    let status =
        prop::sample::select(vec![200u16, 201, 202, 204, 301, 304, 400, 408, 410, 429, 500, 503, 101, 99, 999]);
    let connection = prop::option::weighted(
        0.3,
        prop::sample::select(vec!["close", "keep-alive", "Upgrade, close", "Keep-Alive", "CLOSE"]),
    );
    let retry_after =
        prop::option::weighted(0.3, prop::sample::select(vec!["120", " 5 ", "Wed, 02 Dec 2026 01:00:00 GMT"]));
    let filler = prop::collection::vec("[a-z]{1,10}: [ -~]{0,40}", 0..4);
    // A header that takes the head to around MAX_HEAD.
    let big = prop::option::weighted(0.03, (MAX_HEAD - 200..MAX_HEAD + 50).prop_map(|n| vec![b'a'; n]));
    let trailing =
        prop::option::weighted(0.1, prop::sample::select(vec!["H", "HTTP/1.1 408 Request Timeout\r\n\r\n", "\r\n"]));
    let end = prop_oneof![3 => Just(End::Eof), 1 => Just(End::Stall)];
    let cut = prop::option::weighted(0.15, any::<prop::sample::Index>());
    let http10 = prop::bool::weighted(0.15);
    ((interim, status, http10, connection, retry_after, filler, big), body(), trailing, end, cut).prop_map(
        |((interim, status, http10, connection, retry_after, filler, big), body, trailing, end, cut)| {
            let mut wire = Vec::new();
            for i in interim {
                wire.extend_from_slice(i.as_bytes());
            }
            let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
            wire.extend_from_slice(format!("{version} {status:03} Status\r\n").as_bytes());
            if let Some(c) = connection {
                wire.extend_from_slice(format!("connection: {c}\r\n").as_bytes());
            }
            if let Some(r) = retry_after {
                wire.extend_from_slice(format!("Retry-After: {r}\r\n").as_bytes());
            }
            for f in filler {
                wire.extend_from_slice(format!("{f}\r\n").as_bytes());
            }
            if let Some(big) = big {
                wire.extend_from_slice(b"x-big: ");
                wire.extend_from_slice(&big);
                wire.extend_from_slice(b"\r\n");
            }
            let body_bytes = match body {
                Body::Length(stated, data) => {
                    wire.extend_from_slice(format!("content-length: {stated}\r\n").as_bytes());
                    data
                }
                Body::Chunked { coding, chunks, last_extension, trailers, complete } => {
                    wire.extend_from_slice(format!("transfer-encoding: {coding}\r\n").as_bytes());
                    encode_chunked(&chunks, last_extension, &trailers, complete)
                }
                Body::UntilClose(data) => data,
                Body::Both(stated, chunks) => {
                    wire.extend_from_slice(
                        format!("content-length: {stated}\r\ntransfer-encoding: chunked\r\n").as_bytes(),
                    );
                    encode_chunked(&chunks, false, &[], true)
                }
            };
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&body_bytes);
            if let Some(t) = trailing {
                wire.extend_from_slice(t.as_bytes());
            }
            if let Some(cut) = cut {
                wire.truncate(cut.index(wire.len() + 1));
            }
            Stream { wire, end }
        },
    )
}

/// Checks one reading against the reference. Bytes after the response may be
/// unseen by a reader that stopped before they arrived: then it may call the
/// connection reusable, but only with nothing of them buffered.
fn check(wire: &[u8], end: End, sizes: &[usize], want: &Reading, trailing: bool) -> Result<(), TestCaseError> {
    let (got, buffered) = read_in_pieces(wire, sizes, end);
    let shown = || {
        format!(
            "pieces {:?}, wire {:?}",
            &sizes[..sizes.len().min(8)],
            String::from_utf8_lossy(&wire[..wire.len().min(600)])
        )
    };
    match (&got, want) {
        (Reading::Answer { reusable: true, .. }, Reading::Answer { reusable: false, .. }) if trailing => {
            prop_assert_eq!(buffered, 0, "reusable with bytes of what follows buffered; {}", shown());
            let mut as_closed = got.clone();
            if let Reading::Answer { reusable, .. } = &mut as_closed {
                *reusable = false;
            }
            prop_assert_eq!(&as_closed, want, "{}", shown());
        }
        _ => prop_assert_eq!(&got, want, "{}", shown()),
    }
    Ok(())
}

/// Streams on which the reader once disagreed with the reference, each read
/// whole, a byte at a time, and split at a few places.
#[test]
fn regressions() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let x = |n: usize| vec![b'x'; n];
    let cases: Vec<(&str, Vec<u8>, End, Reading)> = vec![
        (
            // The prefix was cut short when many small chunks came in small reads.
            "one-byte chunks fill the prefix",
            [chunked.as_bytes(), &b"1\r\nx\r\n".repeat(1100), b"0\r\n\r\n"].concat(),
            End::Eof,
            Reading::Answer { status: 200, retry_after: None, body_prefix: x(KEPT_BODY_BYTES), reusable: false },
        ),
        (
            "a long chunk extension within the line limit",
            [chunked.as_bytes(), b"1;", &vec![b'e'; 3000], b"\r\nx\r\n0\r\n\r\n"].concat(),
            End::Eof,
            Reading::Answer { status: 200, retry_after: None, body_prefix: x(1), reusable: false },
        ),
        (
            // Read whole, a line over the limit was accepted; a byte at a time, refused.
            "a chunk-size line over the line limit",
            [chunked.as_bytes(), b"5;", &vec![b'e'; LINE_LIMIT], b"\r\nhello\r\n0\r\n\r\n"].concat(),
            End::Eof,
            Reading::Answer { status: 200, retry_after: None, body_prefix: vec![], reusable: false },
        ),
        (
            "a trailer line over the line limit",
            [chunked.as_bytes(), b"2\r\nok\r\n0\r\nx-t: ", &vec![b't'; LINE_LIMIT], b"\r\n\r\n"].concat(),
            End::Eof,
            Reading::Answer { status: 200, retry_after: None, body_prefix: b"ok".to_vec(), reusable: false },
        ),
        (
            // httparse reads an empty chunk size as 0: the body seemed to end, and the connection was kept.
            "an empty chunk size",
            [chunked.as_bytes(), b"2\r\nok\r\n\r\n\r\n"].concat(),
            End::Eof,
            Reading::Answer { status: 200, retry_after: None, body_prefix: b"ok".to_vec(), reusable: false },
        ),
        (
            // A byte at a time, the head was parsed again only at a blank line, so garbage that then stalled timed out.
            "garbage that stalls",
            b"HTTP/1.1 200 OK\r\n\x01bad\r\n".to_vec(),
            End::Stall,
            Reading::Protocol,
        ),
        (
            "a head over the bound",
            [b"HTTP/1.1 200 OK\r\nx-big: ".as_slice(), &vec![b'a'; MAX_HEAD], b"\r\ncontent-length: 0\r\n\r\n"]
                .concat(),
            End::Eof,
            Reading::Protocol,
        ),
    ];
    for (name, wire, end, want) in cases {
        let (reference_reading, trailing) = reference(&wire, end);
        assert_eq!(reference_reading, want, "{name}: the reference");
        for sizes in [&[usize::MAX][..], &[1], &[7, 3000], &[wire.len() - 3, 1]] {
            check(&wire, end, sizes, &want, trailing).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_reader_agrees_with_the_reference_however_the_bytes_arrive(
        s in stream(),
        pieces in prop::collection::vec(1..300usize, 1..16),
    ) {
        let (want, trailing) = reference(&s.wire, s.end);
        check(&s.wire, s.end, &[usize::MAX], &want, trailing)?;
        check(&s.wire, s.end, &[1], &want, trailing)?;
        check(&s.wire, s.end, &pieces, &want, trailing)?;
        if s.wire.len() <= 400 {
            for at in 1..s.wire.len() {
                check(&s.wire, s.end, &[at, usize::MAX], &want, trailing)?;
            }
        }
    }
}
