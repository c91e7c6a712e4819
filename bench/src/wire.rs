//! A minimal HTTP/1.1 client connection and server loop for the benchmark.
//!
//! The load generator and the receiver share the machine with the server they
//! measure, so every microsecond they spend is one the server does not get.
//! They speak just enough HTTP/1.1 for this job (keep-alive, Content-Length
//! bodies, no pipelining) with `httparse`, which costs a fraction of a full
//! client and server stack.

use std::io;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The largest header block either side accepts.
const MAX_HEAD: usize = 16 * 1024;

/// One keep-alive connection to the server under test.
pub struct ClientConn {
    stream: TcpStream,
    buf: Vec<u8>,
    request: Vec<u8>,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// The length of the header block and the Content-Length, once the head is complete.
fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

impl ClientConn {
    pub async fn connect(addr: std::net::SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(4096), request: Vec::with_capacity(1024) })
    }

    /// POSTs a JSON body and returns the status and the response body.
    pub async fn post(&mut self, host: &str, path: &str, bearer: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
                 authorization: Bearer {bearer}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buf).map_err(|_| invalid("bad response"))? {
                let status = response.code.unwrap_or(0);
                let total = head + content_length(response.headers);
                while self.buf.len() < total {
                    self.fill().await?;
                }
                let body = self.buf[head..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// Serves one connection: calls `on_body` with each request body and answers
/// `200` with no body, until the peer closes.
pub async fn serve_connection(mut stream: TcpStream, mut on_body: impl FnMut(&[u8])) -> io::Result<()> {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(8192);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf).map_err(|_| invalid("bad request"))? {
            httparse::Status::Complete(head) => {
                let total = head + content_length(request.headers);
                while buf.len() < total {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                on_body(&buf[head..total]);
                buf.drain(..total);
                stream.write_all(OK).await?;
            }
            httparse::Status::Partial => {
                if buf.len() > MAX_HEAD {
                    return Err(invalid("request head too large"));
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
        }
    }
}
