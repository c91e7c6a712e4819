//! The target address policy: which addresses a webhook may reach.
//!
//! Webhook URLs come from tenants, so without a policy a tenant could make
//! hookline call its cloud metadata service, its database or anything else on
//! the internal network (server-side request forgery). The policy is applied
//! when a webhook is created or changed, and again inside the delivery client's
//! connector on every attempt ([`Policy::resolve`]): the connector connects only
//! to the addresses this module returned, so a DNS answer that changes between
//! check and connect (rebinding) cannot slip through. IP-literal hosts never
//! reach a resolver and are judged here too.
//!
//! Names are looked up by a [`Resolver`], which bounds both how long one lookup
//! is waited for and how many run at once (see there why both).
//!
//! Rules, in order:
//! 1. An address inside an `--allow-target-cidr` range is allowed, over http or https.
//! 2. With `--dev`, loopback is allowed and http is allowed.
//! 3. Any special-purpose address (the table in [`special_range`]) is blocked, as
//!    is every address of a host if one of its addresses is.
//! 4. Anything else is a public address, allowed over https only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::Semaphore;
use url::Host;

/// Most name lookups running at once in the process. A lookup is a blocking
/// `getaddrinfo` call on a thread of tokio's blocking pool, and a hung
/// resolver holds that thread long after the lookup's timeout. Healthy lookups
/// take milliseconds, so this many is plenty; it bounds the threads a hung
/// resolver can pin, far below the pool's own limit (512) that file and
/// SQLite work also draw on.
pub const MAX_CONCURRENT_LOOKUPS: usize = 64;

/// What the operator allowed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `--dev`: http and loopback allowed, for local development.
    pub dev: bool,
    /// `--allow-target-cidr`: ranges an operator opened on purpose.
    pub allowed: Vec<IpNet>,
    /// Bound on a DNS lookup; a hanging resolver must not hold a worker slot.
    pub dns_timeout: Duration,
}

/// Why a target may not be reached. Messages are for the developer who
/// configured the webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("target resolves to a {range} address {ip}")]
    Blocked { ip: IpAddr, range: &'static str },
    /// A name that resolves into a blocked range. The address is not told:
    /// it would let a tenant map the internal names of hookline's network.
    #[error("target host {host} resolves to a {range} address")]
    NameBlocked { host: String, range: &'static str },
    #[error("http is not allowed for {ip}: use https (http is allowed only with --dev or inside --allow-target-cidr)")]
    InsecureScheme { ip: IpAddr },
    #[error("could not resolve host {host}: {reason}")]
    Dns { host: String, reason: String },
}

impl Refusal {
    /// The error class recorded on a delivery attempt.
    pub fn class(&self) -> &'static str {
        match self {
            Refusal::Blocked { .. } | Refusal::NameBlocked { .. } | Refusal::InsecureScheme { .. } => "blocked",
            Refusal::Dns { .. } => "dns",
        }
    }
}

/// A blocking name lookup, as `getaddrinfo` does it.
pub type LookupFn = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

/// Name lookups with a bound on how many run at once.
///
/// A lookup runs on a blocking thread, which a timeout cannot stop: only the
/// waiting ends. So the permit of a lookup is held by the blocking call itself
/// and released when that call really returns; when every permit is held by
/// hung lookups, new ones wait (within their timeout) instead of pinning more
/// threads, and fail as DNS errors.
pub struct Resolver {
    lookup: Arc<LookupFn>,
    permits: Arc<Semaphore>,
}

/// The process's resolver: one bound for every lookup, whoever asks.
static SYSTEM: LazyLock<Arc<Resolver>> =
    LazyLock::new(|| Arc::new(Resolver::with_lookup(MAX_CONCURRENT_LOOKUPS, system_lookup)));

fn system_lookup(name: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((name, port).to_socket_addrs()?.collect())
}

impl Resolver {
    /// The system resolver (`getaddrinfo`), shared by the whole process.
    pub fn system() -> Arc<Resolver> {
        SYSTEM.clone()
    }

    /// A resolver that looks names up with `lookup` (tests: canned or hung
    /// answers), at most `max_concurrent` at once.
    pub fn with_lookup(
        max_concurrent: usize,
        lookup: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        Self { lookup: Arc::new(lookup), permits: Arc::new(Semaphore::new(max_concurrent)) }
    }

    /// Looks `name` up within `timeout`, waiting for a free permit included.
    async fn lookup(&self, name: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| "too many lookups in progress".to_owned())?
            .expect("the semaphore is never closed");
        let (lookup, name) = (self.lookup.clone(), name.to_owned());
        let blocking = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            lookup(&name, port)
        });
        match tokio::time::timeout_at(deadline, blocking).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(format!("the lookup failed: {e}")),
            Ok(Ok(found)) => found.map_err(|e| e.to_string()),
        }
    }

    /// Permits not held by a running lookup.
    #[cfg(test)]
    fn free_permits(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Policy {
    /// Judges one address for a URL of the given scheme.
    pub fn check_ip(&self, ip: IpAddr, https: bool) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        let loopback_allowed = self.dev && ip.is_loopback();
        if !loopback_allowed && let Some(range) = special_range(ip) {
            return Err(Refusal::Blocked { ip, range });
        }
        if !https && !self.dev {
            return Err(Refusal::InsecureScheme { ip });
        }
        Ok(())
    }

    /// The addresses a request to `host:port` may connect to: every address the
    /// host resolves to, each checked; one blocked address refuses them all.
    /// Names are looked up by the process's [`Resolver::system`].
    pub async fn resolve(&self, host: &Host<&str>, port: u16, https: bool) -> Result<Vec<SocketAddr>, Refusal> {
        self.resolve_with(&SYSTEM, host, port, https).await
    }

    /// [`Self::resolve`] with names looked up by `resolver`.
    pub async fn resolve_with(
        &self,
        resolver: &Resolver,
        host: &Host<&str>,
        port: u16,
        https: bool,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let addrs: Vec<SocketAddr> = match host {
            Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
            Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
            Host::Domain(name) => {
                let dns_error = |reason: String| Refusal::Dns { host: (*name).to_owned(), reason };
                let addrs = resolver.lookup(name, port, self.dns_timeout).await.map_err(dns_error)?;
                if addrs.is_empty() {
                    return Err(dns_error("no address".into()));
                }
                addrs
            }
        };
        for addr in &addrs {
            match (self.check_ip(addr.ip(), https), host) {
                (Ok(()), _) => {}
                (Err(Refusal::Blocked { ip, range }), Host::Domain(name)) => {
                    // The operator may see the address; the tenant's message does not carry it.
                    tracing::debug!(host = %name, %ip, range, "a target name resolves to a blocked address");
                    return Err(Refusal::NameBlocked { host: (*name).to_owned(), range });
                }
                (Err(refusal), _) => return Err(refusal),
            }
        }
        Ok(addrs)
    }
}

/// Special-purpose IPv4 ranges (IANA registry), most specific first.
static V4_RANGES: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("255.255.255.255/32", "broadcast"),
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ]
    .into_iter()
    .map(|(net, name)| (net.parse().expect("valid CIDR"), name))
    .collect()
});

/// Special-purpose IPv6 ranges that do not embed an IPv4 address.
static V6_RANGES: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "NAT64 local-use"),
        ("100::/64", "discard"),
        ("2001:db8::/32", "documentation"),
        ("2001::/23", "reserved"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "reserved"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
    .into_iter()
    .map(|(net, name)| (net.parse().expect("valid CIDR"), name))
    .collect()
});

/// The name of the special-purpose range `ip` lies in, or `None` for a public
/// address. IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64,
/// 6to4, Teredo) are judged by the IPv4 address inside.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let ip = IpAddr::V4(ip);
    V4_RANGES.iter().find(|(net, _)| net.contains(&ip)).map(|(_, name)| *name)
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let low32 = Ipv4Addr::from(u128::from(ip) as u32);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && u32::from(low32) > 1)) {
        return v4_range(low32);
    }
    // NAT64 well-known prefix: 64:ff9b::a.b.c.d.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_range(low32);
    }
    // 6to4: 2002:AABB:CCDD::/48 carries a.b.c.d in bits 16..48.
    if s[0] == 0x2002 {
        let inner = Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2]));
        return v4_range(inner);
    }
    // Teredo: 2001:0::/32, server IPv4 in bits 32..64, client IPv4 inverted in the low 32.
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::from((u32::from(s[2]) << 16) | u32::from(s[3]));
        let client = Ipv4Addr::from(!u32::from(low32));
        return v4_range(server).or_else(|| v4_range(client));
    }
    let ip = IpAddr::V6(ip);
    if let Some((_, name)) = V6_RANGES.iter().find(|(net, _)| net.contains(&ip)) {
        return Some(name);
    }
    // Only 2000::/3 is allocated as global unicast; everything else is reserved.
    let global_unicast: IpNet = "2000::/3".parse().expect("valid CIDR");
    (!global_unicast.contains(&ip)).then_some("reserved")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_table() {
        let cases: &[(&str, Option<&str>)] = &[
            // IPv4 edges on both sides of each range.
            ("0.0.0.0", Some("unspecified")),
            ("0.255.255.255", Some("unspecified")),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some("private")),
            ("10.0.0.7", Some("private")),
            ("10.255.255.255", Some("private")),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some("carrier-grade NAT")),
            ("100.127.255.255", Some("carrier-grade NAT")),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.255", Some("loopback")),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.0", Some("link-local")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.255.255", Some("link-local")),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.0", None),
            ("192.0.0.0", Some("reserved")),
            ("192.0.0.255", Some("reserved")),
            ("192.0.1.0", None),
            ("192.0.2.0", Some("documentation")),
            ("192.0.2.255", Some("documentation")),
            ("192.0.3.0", None),
            ("192.88.99.1", Some("reserved")),
            ("192.167.255.255", None),
            ("192.168.0.0", Some("private")),
            ("192.168.255.255", Some("private")),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("198.20.0.0", None),
            ("198.51.100.1", Some("documentation")),
            ("203.0.113.1", Some("documentation")),
            ("203.0.114.0", None),
            ("223.255.255.255", None),
            ("224.0.0.0", Some("multicast")),
            ("239.255.255.255", Some("multicast")),
            ("240.0.0.0", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("255.255.255.255", Some("broadcast")),
            ("8.8.8.8", None),
            ("93.184.215.14", None),
            // IPv6.
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("::2", Some("unspecified")),
            ("fc00::1", Some("unique-local")),
            ("fdff:ffff::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("3fff::1", Some("documentation")),
            ("100::1", Some("discard")),
            ("64:ff9b:1::1", Some("NAT64 local-use")),
            ("2001:2::1", Some("reserved")),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::1", None),
            ("4000::1", Some("reserved")),
            // IPv6 forms that embed an IPv4 address are judged by it.
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            ("::10.1.2.3", Some("private")),
            ("64:ff9b::127.0.0.1", Some("loopback")),
            ("64:ff9b::192.168.1.1", Some("private")),
            ("64:ff9b::8.8.8.8", None),
            ("2002:7f00:1::", Some("loopback")),
            ("2002:a9fe:a9fe::1", Some("link-local")),
            ("2002:0808:0808::1", None),
            // Teredo: server 65.54.227.120, client 127.0.0.1 inverted (0x80fffffe).
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some("loopback")),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            ("2001:0:0a00:0001::", Some("private")),
        ];
        for (addr, want) in cases {
            assert_eq!(special_range(ip(addr)), *want, "{addr}");
        }
    }

    fn policy(dev: bool, allowed: &[&str]) -> Policy {
        Policy {
            dev,
            allowed: allowed.iter().map(|s| s.parse().unwrap()).collect(),
            dns_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn public_addresses_need_https_unless_dev() {
        let strict = policy(false, &[]);
        assert_eq!(strict.check_ip(ip("8.8.8.8"), true), Ok(()));
        assert_eq!(strict.check_ip(ip("8.8.8.8"), false), Err(Refusal::InsecureScheme { ip: ip("8.8.8.8") }));
        assert_eq!(policy(true, &[]).check_ip(ip("8.8.8.8"), false), Ok(()));
    }

    #[test]
    fn dev_allows_loopback_but_not_private_ranges() {
        let dev = policy(true, &[]);
        assert_eq!(dev.check_ip(ip("127.0.0.1"), false), Ok(()));
        assert_eq!(dev.check_ip(ip("::1"), false), Ok(()));
        assert_eq!(dev.check_ip(ip("::ffff:127.0.0.1"), true), Ok(()));
        assert!(dev.check_ip(ip("10.0.0.7"), true).is_err());
        assert!(dev.check_ip(ip("169.254.169.254"), false).is_err());
    }

    #[test]
    fn an_allowed_range_opens_exactly_that_range_over_http_too() {
        let p = policy(false, &["127.0.0.1/32", "10.1.0.0/16"]);
        assert_eq!(p.check_ip(ip("127.0.0.1"), false), Ok(()));
        assert_eq!(p.check_ip(ip("::ffff:127.0.0.1"), false), Ok(()));
        assert_eq!(p.check_ip(ip("10.1.255.255"), false), Ok(()));
        assert_eq!(p.check_ip(ip("127.0.0.2"), true), Err(Refusal::Blocked { ip: ip("127.0.0.2"), range: "loopback" }));
        assert!(p.check_ip(ip("10.2.0.0"), true).is_err());
    }

    #[test]
    fn refusals_explain_themselves() {
        let e = policy(false, &[]).check_ip(ip("10.0.0.7"), true).unwrap_err();
        assert_eq!(e.to_string(), "target resolves to a private address 10.0.0.7");
        assert_eq!(e.class(), "blocked");
    }

    #[tokio::test]
    async fn literal_hosts_are_checked_without_a_resolver() {
        let p = policy(false, &[]);
        let host = Host::Ipv4(Ipv4Addr::new(169, 254, 169, 254));
        assert!(matches!(p.resolve(&host, 443, true).await, Err(Refusal::Blocked { .. })));
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_blocked() {
        let p = policy(false, &[]);
        let got = p.resolve(&Host::Domain("localhost"), 443, true).await;
        assert_eq!(got, Err(Refusal::NameBlocked { host: "localhost".into(), range: "loopback" }));
        assert_eq!(got.unwrap_err().to_string(), "target host localhost resolves to a loopback address");
    }

    /// A lookup that hangs until told to answer, as a dead resolver does.
    fn hung_lookup() -> (Resolver, std::sync::mpsc::Sender<()>) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let resolver = Resolver::with_lookup(1, move |_, port| {
            let _ = released.lock().unwrap().recv();
            Ok(vec![SocketAddr::new(ip("93.184.215.14"), port)])
        });
        (resolver, release)
    }

    #[tokio::test]
    async fn a_hung_lookup_holds_its_permit_until_it_really_ends() {
        let (resolver, release) = hung_lookup();
        let p = Policy { dns_timeout: Duration::from_millis(100), ..policy(false, &[]) };
        let host = Host::Domain("hangs.example");

        let first = p.resolve_with(&resolver, &host, 443, true).await;
        assert!(matches!(&first, Err(Refusal::Dns { reason, .. }) if reason == "timed out"), "{first:?}");
        assert_eq!(resolver.free_permits(), 0, "the timed-out lookup still runs");

        // No permit is free: the next lookup waits its timeout and fails as DNS, starting no thread.
        let second = p.resolve_with(&resolver, &host, 443, true).await;
        assert!(
            matches!(&second, Err(e @ Refusal::Dns { reason, .. }) if reason == "too many lookups in progress" && e.class() == "dns"),
            "{second:?}"
        );

        // The hung lookup ends: its permit is free again and lookups work.
        release.send(()).unwrap();
        while resolver.free_permits() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        let third = p.resolve_with(&resolver, &host, 443, true).await;
        assert_eq!(third, Ok(vec!["93.184.215.14:443".parse().unwrap()]));
    }

    #[tokio::test]
    async fn names_resolving_to_a_blocked_address_are_refused_whatever_the_resolver() {
        let resolver = Resolver::with_lookup(4, |_, port| {
            Ok(vec![SocketAddr::new(ip("93.184.215.14"), port), SocketAddr::new(ip("10.0.0.7"), port)])
        });
        let got = policy(false, &[]).resolve_with(&resolver, &Host::Domain("mixed.example"), 443, true).await;
        assert_eq!(got, Err(Refusal::NameBlocked { host: "mixed.example".into(), range: "private" }));
    }

    #[tokio::test]
    async fn names_that_do_not_resolve_are_a_dns_refusal() {
        let p = policy(false, &[]);
        let got = p.resolve(&Host::Domain("no-such-host.invalid"), 443, true).await;
        assert!(matches!(&got, Err(Refusal::Dns { host, .. }) if host == "no-such-host.invalid"), "{got:?}");
        assert_eq!(got.unwrap_err().class(), "dns");
    }
}
