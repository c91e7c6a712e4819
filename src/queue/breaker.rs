//! The circuit breaker of each target (SPEC §8): a receiver that is down gets
//! a trickle of probes, not a burst, and its deliveries are not used up by the
//! outage.
//!
//! A target is a URL's scheme, host and port (its pool key). After
//! [`FAILURES_TO_OPEN`] consecutive attempts that ended in a connection error,
//! a timeout or a 5xx, the target is *open* for a cool-down. While open, due
//! deliveries to it are postponed to the end of the cool-down without using an
//! attempt. When the cool-down is over, one delivery goes as the *probe*, and
//! the others keep waiting until it ends: a successful probe closes the
//! circuit, a failed one opens it again for twice the cool-down, up to
//! [`MAX_COOLDOWN`].
//!
//! Pure state: time comes in as an argument, so every transition is a unit
//! test. The state is per process; see the README for what that means with
//! several nodes.

use std::collections::HashMap;
use std::time::Duration;

use crate::domain::UnixMs;

/// Consecutive failures that open a circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// The longest cool-down, however often probes fail.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// Closed circuits kept before the healthy ones are forgotten.
const KEPT: usize = 4_096;

/// What an attempt says about its target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The receiver answered, other than with a 5xx: it is up.
    Up,
    /// A connection error, a timeout or a 5xx.
    Down,
    /// No request reached the target (e.g. no signing secret): says nothing.
    Unknown,
}

/// Whether a delivery to the target may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Go, as the one probe of an open circuit.
    Probe,
    /// Not before this time; no attempt is used.
    Postpone(UnixMs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: UnixMs,
        cooldown_ms: i64,
    },
    /// The cool-down is over and one probe is in flight.
    Probing {
        cooldown_ms: i64,
    },
}

pub struct Breakers {
    circuits: HashMap<String, Circuit>,
    first_cooldown_ms: i64,
}

impl Breakers {
    pub fn new(first_cooldown: Duration) -> Self {
        Self { circuits: HashMap::new(), first_cooldown_ms: first_cooldown.as_millis().max(1) as i64 }
    }

    /// Whether a delivery to `target` may start at `now`. `Probe` changes the
    /// state: the caller must start that delivery and report its end.
    pub fn admit(&mut self, target: &str, now: UnixMs) -> Admission {
        let Some(circuit) = self.circuits.get_mut(target) else { return Admission::Go };
        match *circuit {
            Circuit::Closed { .. } => Admission::Go,
            Circuit::Open { until, .. } if now < until => Admission::Postpone(until),
            Circuit::Open { cooldown_ms, .. } => {
                *circuit = Circuit::Probing { cooldown_ms };
                Admission::Probe
            }
            // The probe decides; until it has, the others wait a cool-down.
            Circuit::Probing { cooldown_ms } => Admission::Postpone(now + cooldown_ms),
        }
    }

    /// When `target` is open or probing: until when a delivery to it waits.
    /// Unlike [`Breakers::admit`], it changes nothing.
    pub fn blocked_until(&self, target: &str, now: UnixMs) -> Option<UnixMs> {
        match *self.circuits.get(target)? {
            Circuit::Open { until, .. } if now < until => Some(until),
            Circuit::Probing { cooldown_ms } => Some(now + cooldown_ms),
            _ => None,
        }
    }

    /// Records how an attempt to `target` ended. Returns `true` when this
    /// opened the circuit (from closed).
    pub fn record(&mut self, target: &str, health: Health, probe: bool, now: UnixMs) -> bool {
        match health {
            Health::Up => {
                // Any answer closes the circuit, a probe's or a late one's: the receiver is back.
                if let Some(c) = self.circuits.get_mut(target) {
                    *c = Circuit::Closed { failures: 0 };
                }
                false
            }
            Health::Unknown => {
                // A probe that sent nothing: the next delivery probes instead.
                if probe && let Some(c @ Circuit::Probing { .. }) = self.circuits.get_mut(target) {
                    let Circuit::Probing { cooldown_ms } = *c else { unreachable!() };
                    *c = Circuit::Open { until: now, cooldown_ms };
                }
                false
            }
            Health::Down => {
                if self.circuits.len() >= KEPT && !self.circuits.contains_key(target) {
                    self.circuits.retain(|_, c| !matches!(c, Circuit::Closed { .. }));
                }
                let first = self.first_cooldown_ms;
                let c = self.circuits.entry(target.to_owned()).or_insert(Circuit::Closed { failures: 0 });
                match *c {
                    Circuit::Closed { failures } if failures + 1 >= FAILURES_TO_OPEN => {
                        *c = Circuit::Open { until: now + first, cooldown_ms: first };
                        true
                    }
                    Circuit::Closed { failures } => {
                        *c = Circuit::Closed { failures: failures + 1 };
                        false
                    }
                    Circuit::Probing { cooldown_ms } if probe => {
                        let next = (cooldown_ms * 2).min(MAX_COOLDOWN.as_millis() as i64);
                        *c = Circuit::Open { until: now + next, cooldown_ms: next };
                        false
                    }
                    // Requests that were in flight when it opened: already counted.
                    Circuit::Open { .. } | Circuit::Probing { .. } => false,
                }
            }
        }
    }

    /// Targets whose circuit is open or probing.
    pub fn open_count(&self) -> usize {
        self.circuits.values().filter(|c| !matches!(c, Circuit::Closed { .. })).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "https://down.example:443";

    fn open(b: &mut Breakers, now: UnixMs) {
        for i in 0..FAILURES_TO_OPEN {
            assert_eq!(b.admit(T, now), Admission::Go);
            let opened = b.record(T, Health::Down, false, now);
            assert_eq!(opened, i + 1 == FAILURES_TO_OPEN);
        }
    }

    #[test]
    fn five_consecutive_failures_open_the_circuit_for_the_cooldown() {
        let mut b = Breakers::new(Duration::from_secs(5));
        open(&mut b, 1_000);
        assert_eq!(b.admit(T, 1_001), Admission::Postpone(6_000));
        assert_eq!(b.open_count(), 1);
        assert_eq!(b.admit("https://other.example:443", 1_001), Admission::Go, "other targets are not affected");
    }

    #[test]
    fn an_answer_between_failures_resets_the_count() {
        let mut b = Breakers::new(Duration::from_secs(5));
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.record(T, Health::Down, false, 0);
        }
        b.record(T, Health::Up, false, 0);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.record(T, Health::Down, false, 0);
        }
        assert_eq!(b.admit(T, 0), Admission::Go);
    }

    #[test]
    fn after_the_cooldown_one_probe_goes_and_the_others_wait() {
        let mut b = Breakers::new(Duration::from_secs(5));
        open(&mut b, 0);
        assert_eq!(b.admit(T, 5_000), Admission::Probe);
        assert_eq!(b.admit(T, 5_001), Admission::Postpone(10_001));
        assert_eq!(b.admit(T, 5_002), Admission::Postpone(10_002));
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_five_minutes() {
        let mut b = Breakers::new(Duration::from_secs(5));
        open(&mut b, 0);
        let mut now = 0;
        let mut cooldown = 5_000;
        for _ in 0..12 {
            now += cooldown;
            assert_eq!(b.admit(T, now), Admission::Probe);
            b.record(T, Health::Down, true, now);
            cooldown = (cooldown * 2).min(300_000);
            assert_eq!(b.admit(T, now + 1), Admission::Postpone(now + cooldown));
        }
        assert_eq!(cooldown, 300_000);
    }

    #[test]
    fn a_successful_probe_closes_the_circuit() {
        let mut b = Breakers::new(Duration::from_secs(5));
        open(&mut b, 0);
        assert_eq!(b.admit(T, 5_000), Admission::Probe);
        b.record(T, Health::Up, true, 5_100);
        assert_eq!(b.admit(T, 5_101), Admission::Go);
        assert_eq!(b.open_count(), 0);
    }

    #[test]
    fn late_failures_of_requests_sent_before_it_opened_change_nothing() {
        let mut b = Breakers::new(Duration::from_secs(5));
        open(&mut b, 0);
        b.record(T, Health::Down, false, 100);
        assert_eq!(b.admit(T, 101), Admission::Postpone(5_000));
        assert_eq!(b.admit(T, 5_000), Admission::Probe);
        b.record(T, Health::Down, false, 5_001);
        assert_eq!(b.admit(T, 5_002), Admission::Postpone(10_002), "still probing");
    }

    #[test]
    fn a_probe_that_sent_nothing_lets_the_next_delivery_probe() {
        let mut b = Breakers::new(Duration::from_secs(5));
        open(&mut b, 0);
        assert_eq!(b.admit(T, 5_000), Admission::Probe);
        b.record(T, Health::Unknown, true, 5_000);
        assert_eq!(b.admit(T, 5_001), Admission::Probe);
    }
}
