//! The benchmark's receiver: a minimal HTTP/1.1 server that answers 200 at
//! once and measures, for each delivery, the time since its event was sent.
//! And, for the noisy scenario, receivers that never answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// When each event was sent, in µs since the run started, indexed by the
/// sequence number the bench puts in its `order_id` (`b<seq>`).
pub struct SendTimes {
    start: Instant,
    sent_us: Vec<AtomicU64>,
}

impl SendTimes {
    pub fn new(start: Instant, capacity: usize) -> Self {
        Self { start, sent_us: (0..capacity).map(|_| AtomicU64::new(u64::MAX)).collect() }
    }

    pub fn capacity(&self) -> usize {
        self.sent_us.len()
    }

    pub fn mark(&self, seq: usize) {
        self.sent_us[seq].store(self.since_start_us(), Ordering::Relaxed);
    }

    pub fn since_start_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn sent(&self, seq: usize) -> Option<u64> {
        self.sent_us.get(seq).map(|t| t.load(Ordering::Relaxed)).filter(|t| *t != u64::MAX)
    }
}

/// What the receiver saw.
pub struct Arrivals {
    pub count: AtomicU64,
    /// µs since the run started of the first and last arrival.
    pub first_us: AtomicU64,
    pub last_us: AtomicU64,
    /// Send → arrival, µs, one per delivery.
    pub latencies_us: Mutex<Vec<u32>>,
    /// Arrivals whose event this run's send times do not know (the replay
    /// scenario numbers its steady ingest past them).
    pub unmatched: AtomicU64,
    times: Arc<SendTimes>,
}

impl Arrivals {
    fn record(&self, body: &[u8]) {
        let now = self.times.since_start_us();
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first_us.fetch_min(now, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        match sequence_of(body).and_then(|seq| self.times.sent(seq)) {
            Some(sent) => {
                let latency = now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
                self.latencies_us.lock().expect("not poisoned").push(latency);
            }
            None => {
                self.unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Finds `"order_id":"b<seq>"` in a delivery body without parsing all of it.
fn sequence_of(body: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = br#""order_id":"b"#;
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok()
}

/// Starts the receiver on 127.0.0.1 and returns its address.
pub async fn start(times: Arc<SendTimes>) -> std::io::Result<(SocketAddr, Arc<Arrivals>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let arrivals = Arc::new(Arrivals {
        count: AtomicU64::new(0),
        first_us: AtomicU64::new(u64::MAX),
        last_us: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
        unmatched: AtomicU64::new(0),
        times,
    });
    let shared = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let arrivals = shared.clone();
            tokio::spawn(async move {
                let _ = super::wire::serve_connection(stream, |body| arrivals.record(body)).await;
            });
        }
    });
    Ok((addr, arrivals))
}

/// Receivers that accept connections and read what comes, but never answer:
/// each request hangs until the server gives up on it. Dropping this closes
/// them and every connection they hold.
pub struct Hanging {
    pub addrs: Vec<SocketAddr>,
    /// Connections accepted so far, over all of them.
    pub connections: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Hanging {
    fn drop(&mut self) {
        // Each accept loop owns the JoinSet of its connections: aborting it drops them all.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts `n` hanging receivers on 127.0.0.1, each on a port of its own.
pub async fn start_hanging(n: usize) -> std::io::Result<Hanging> {
    let connections = Arc::new(AtomicU64::new(0));
    let (mut addrs, mut tasks) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let connections = connections.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                connections.fetch_add(1, Ordering::Relaxed);
                held.spawn(async move {
                    use tokio::io::AsyncReadExt as _;
                    let mut buf = vec![0u8; 8192];
                    // Read and drop until the peer closes; never write.
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                });
                while held.try_join_next().is_some() {}
            }
        }));
    }
    Ok(Hanging { addrs, connections, tasks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_number_is_found_in_a_delivery_body() {
        let body = br#"{"id":"evt_1","type":"order.created","timestamp":"t","data":{"order_id":"b1234","x":1}}"#;
        assert_eq!(sequence_of(body), Some(1234));
        assert_eq!(sequence_of(br#"{"data":{"order_id":"other"}}"#), None);
    }
}
