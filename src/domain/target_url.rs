//! `TargetUrl`: a webhook destination that is syntactically acceptable.
//!
//! Parsing follows the WHATWG URL standard (the `url` crate), which also turns
//! odd IPv4 spellings (`2130706433`, `0x7f.1`, `017700000001`) into the address
//! they mean, so the SSRF policy judges `127.0.0.1`, never the raw string.
//! Whether the address behind the host may be reached is [`crate::ssrf`]'s
//! question, asked at creation and again at every delivery attempt.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use url::{Host, Position, Url};

/// Longer URLs are almost certainly a mistake or an attack on log storage.
const MAX_URL_LEN: usize = 2048;
/// Targets kept parsed by [`TargetUrl::from_stored`]; past this the cache
/// starts again empty (a webhook's URL is read once per delivery, so a few
/// thousand cover the targets a server is busy with).
const STORED_KEPT: usize = 4096;

/// Targets read back from the database, by their stored text.
static STORED: LazyLock<Mutex<HashMap<Box<str>, TargetUrl>>> = LazyLock::new(Default::default);

/// A parsed target. The parts a request needs (host, port, `Host` header,
/// request target, pool key) are computed once here, so the delivery client
/// never parses the URL again; cloning is a reference count.
#[derive(Clone)]
pub struct TargetUrl(Arc<Parts>);

struct Parts {
    url: Url,
    /// `host[:port]` as written in the URL: the `Host` header.
    authority: String,
    /// Connections are shared by scheme, host and port: `https://host:443`.
    pool_key: String,
}

impl PartialEq for TargetUrl {
    fn eq(&self, other: &Self) -> bool {
        self.0.url == other.0.url
    }
}

impl Eq for TargetUrl {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must be an absolute URL such as https://example.com/webhooks")]
    NotAUrl,
    #[error("must be at most {MAX_URL_LEN} characters")]
    TooLong,
    #[error("scheme must be https (http only for development or allowed ranges)")]
    Scheme,
    #[error("must not contain a user name or password")]
    Userinfo,
    #[error("must have a host")]
    NoHost,
    #[error("must not contain a fragment (#...)")]
    Fragment,
}

impl TargetUrl {
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        if s.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let url = Url::parse(s.trim()).map_err(|_| UrlError::NotAUrl)?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(UrlError::Scheme);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Userinfo);
        }
        match url.host() {
            None => return Err(UrlError::NoHost),
            Some(Host::Domain("")) => return Err(UrlError::NoHost),
            Some(_) => {}
        }
        if url.fragment().is_some() {
            return Err(UrlError::Fragment);
        }
        let authority = url[Position::BeforeHost..Position::AfterPort].to_owned();
        let port = url.port_or_known_default().expect("http and https have default ports");
        let pool_key = format!("{}://{}:{port}", url.scheme(), url.host_str().expect("checked above"));
        Ok(Self(Arc::new(Parts { url, authority, pool_key })))
    }

    /// A target read back from the database. Stored targets were parsed when
    /// they were written, and every delivery reads its target again, so
    /// parses are kept by text: a URL parse cost the SQLite writer about 8 %
    /// of its instructions per event (callgrind, 2026-12-02); a lookup here
    /// costs a hash of the text.
    pub fn from_stored(s: &str) -> Result<Self, UrlError> {
        let cache = || STORED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = cache().get(s) {
            return Ok(known.clone());
        }
        let parsed = Self::parse(s)?;
        let mut kept = cache();
        if kept.len() >= STORED_KEPT {
            kept.clear();
        }
        kept.insert(s.into(), parsed.clone());
        Ok(parsed)
    }

    pub fn is_https(&self) -> bool {
        self.0.url.scheme() == "https"
    }

    pub fn host(&self) -> Host<&str> {
        self.0.url.host().expect("checked in parse")
    }

    pub fn port(&self) -> u16 {
        self.0.url.port_or_known_default().expect("http and https have default ports")
    }

    /// `host[:port]` as written: the `Host` header of a request to it.
    pub fn authority(&self) -> &str {
        &self.0.authority
    }

    /// The request target: path and query (never empty: at least `/`).
    pub fn path_and_query(&self) -> &str {
        &self.0.url[Position::BeforePath..Position::AfterQuery]
    }

    /// What connections to this target are pooled and limited by: scheme,
    /// host and port (`https://example.com:443`).
    pub fn pool_key(&self) -> &str {
        &self.0.pool_key
    }

    /// The canonical serialization: what is stored, shown and dialled.
    pub fn as_str(&self) -> &str {
        self.0.url.as_str()
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetUrl({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_stored_target_reads_back_as_parsed_and_is_parsed_once() {
        let stored = TargetUrl::parse("https://Hooks.Example.com:8443/in?x=1").unwrap();
        let first = TargetUrl::from_stored(stored.as_str()).unwrap();
        let again = TargetUrl::from_stored(stored.as_str()).unwrap();
        assert!(first == stored && first.pool_key() == stored.pool_key() && first.authority() == stored.authority());
        assert!(Arc::ptr_eq(&first.0, &again.0), "the second read is the kept parse");
        assert_eq!(TargetUrl::from_stored("ftp://example.com/").unwrap_err(), UrlError::Scheme);
    }

    #[test]
    fn odd_ipv4_spellings_are_read_as_the_address_they_mean() {
        for s in [
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0x7f.1/",
            "https://017700000001/",
            "https://127.1/",
            "https://0177.0.0.1/",
        ] {
            let url = TargetUrl::parse(s).unwrap();
            assert_eq!(url.host(), Host::<&str>::Ipv4(Ipv4Addr::LOCALHOST), "{s}");
            assert_eq!(url.as_str(), "https://127.0.0.1/", "{s}");
        }
    }

    #[test]
    fn urls_that_cannot_be_targets_are_refused() {
        let cases = [
            ("ftp://example.com/", UrlError::Scheme),
            ("file:///etc/passwd", UrlError::Scheme),
            ("https://user:pw@example.com/", UrlError::Userinfo),
            ("https://user@example.com/", UrlError::Userinfo),
            ("example.com/hook", UrlError::NotAUrl),
            ("https://example.com/#frag", UrlError::Fragment),
        ];
        for (s, want) in cases {
            assert_eq!(TargetUrl::parse(s), Err(want), "{s}");
        }
        assert_eq!(TargetUrl::parse(&format!("https://a.com/{}", "x".repeat(3000))), Err(UrlError::TooLong));
    }

    #[test]
    fn the_parts_a_request_needs_are_computed_once() {
        // (url, pool key, Host header, request target)
        let cases = [
            ("https://example.com/hook?x=1", "https://example.com:443", "example.com", "/hook?x=1"),
            ("https://example.com:443/hook", "https://example.com:443", "example.com", "/hook"),
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081", "127.0.0.1:8081", "/"),
            ("https://[::1]:9443/a/b", "https://[::1]:9443", "[::1]:9443", "/a/b"),
            ("https://EXAMPLE.com./x", "https://example.com.:443", "example.com.", "/x"),
        ];
        for (url, key, authority, target) in cases {
            let t = TargetUrl::parse(url).unwrap();
            assert_eq!((t.pool_key(), t.authority(), t.path_and_query()), (key, authority, target), "{url}");
        }
    }

    #[test]
    fn ports_default_by_scheme() {
        assert_eq!(TargetUrl::parse("https://example.com/x").unwrap().port(), 443);
        assert_eq!(TargetUrl::parse("http://example.com:8081/x").unwrap().port(), 8081);
    }
}
