//! What happens after an attempt: the outcome rules and the retry schedule.
//!
//! Pure functions of (attempt number, outcome, now, rng), so every rule is a
//! row in a table test and no test waits on a clock.
//!
//! | outcome | result |
//! |---|---|
//! | 2xx | `sent` |
//! | 3xx | `failed`, no retry (redirects are never followed) |
//! | 408, 425, 429 | retry (429 waits for `Retry-After`, capped) |
//! | 410 | `failed`, no retry, and the webhook is deactivated |
//! | other 4xx | `failed`, no retry |
//! | 5xx | retry (503 waits for `Retry-After`, capped) |
//! | timeout, connect, DNS, TLS error, blocked address | retry |
//!
//! A retry waits the schedule's delay for that attempt, jittered by ±20% so
//! that a receiver coming back up is not hit by every queued delivery at once.

use std::time::Duration;

use rand::Rng;

use crate::config::RetrySettings;
use crate::domain::UnixMs;
/// How far each delay is randomly stretched or shrunk.
const JITTER: f64 = 0.2;

/// Why an attempt produced no HTTP status. The string form is stored on the
/// attempt and shown in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Timeout,
    Connect,
    Dns,
    Tls,
    /// The SSRF policy refused the address; no connection was made.
    Blocked,
    /// The request could not be sent or the response was not HTTP.
    Protocol,
    /// The project's signing secret could not be decrypted (wrong `--secret-key`).
    Signing,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Dns => "dns",
            ErrorClass::Tls => "tls",
            ErrorClass::Blocked => "blocked",
            ErrorClass::Protocol => "protocol",
            ErrorClass::Signing => "signing",
        }
    }
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered.
    Status { code: u16, retry_after: Option<Duration> },
    /// No answer.
    Error(ErrorClass),
}

/// What to do with the delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Sent,
    /// Final failure; `deactivate` turns the webhook off (410 Gone).
    Failed {
        deactivate: bool,
    },
    RetryAt(UnixMs),
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delays before the 2nd, 3rd, … attempt; the last one repeats.
    pub schedule: Vec<Duration>,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured; a receiver cannot park a delivery for a week.
    pub retry_after_cap: Duration,
}

impl From<&RetrySettings> for RetryPolicy {
    fn from(s: &RetrySettings) -> Self {
        Self {
            schedule: s.schedule.delays().to_vec(),
            max_attempts: s.max_attempts,
            retry_after_cap: s.retry_after_cap,
        }
    }
}

impl RetryPolicy {
    /// `attempt` is the 1-based number of the attempt that produced `outcome`.
    pub fn decide(&self, attempt: u32, outcome: &Outcome, now: UnixMs, rng: &mut impl Rng) -> Decision {
        let retry_after = match outcome {
            Outcome::Status { code: 200..=299, .. } => return Decision::Sent,
            Outcome::Status { code: 410, .. } => return Decision::Failed { deactivate: true },
            Outcome::Status { code: 429 | 503, retry_after } => *retry_after,
            Outcome::Status { code: 408 | 425 | 500..=599, .. } => None,
            Outcome::Status { .. } => return Decision::Failed { deactivate: false },
            Outcome::Error(_) => None,
        };
        if attempt >= self.max_attempts {
            return Decision::Failed { deactivate: false };
        }
        let delay = match retry_after {
            Some(asked) => asked.min(self.retry_after_cap),
            None => jitter(self.delay_before(attempt + 1), rng),
        };
        Decision::RetryAt(now + delay.as_millis() as i64)
    }

    /// The scheduled delay before attempt `n` (n ≥ 2).
    fn delay_before(&self, n: u32) -> Duration {
        let i = (n as usize).saturating_sub(2).min(self.schedule.len().saturating_sub(1));
        self.schedule.get(i).copied().unwrap_or(Duration::ZERO)
    }
}

fn jitter(d: Duration, rng: &mut impl Rng) -> Duration {
    d.mul_f64(rng.random_range(1.0 - JITTER..=1.0 + JITTER))
}

/// Reads `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: UnixMs) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(Duration::from_millis(at_ms.saturating_sub(now).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy::from(&RetrySettings::default())
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status { code, retry_after: None }
    }

    #[test]
    fn outcome_table() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        let retry = |d: Decision| matches!(d, Decision::RetryAt(_));
        let cases: &[(Outcome, &str)] = &[
            (status(200), "sent"),
            (status(204), "sent"),
            (status(299), "sent"),
            (status(301), "failed"),
            (status(302), "failed"),
            (status(307), "failed"),
            (status(400), "failed"),
            (status(401), "failed"),
            (status(404), "failed"),
            (status(408), "retry"),
            (status(410), "deactivate"),
            (status(422), "failed"),
            (status(425), "retry"),
            (status(429), "retry"),
            (status(500), "retry"),
            (status(502), "retry"),
            (status(503), "retry"),
            (status(599), "retry"),
            (status(100), "failed"),
            (Outcome::Error(ErrorClass::Timeout), "retry"),
            (Outcome::Error(ErrorClass::Connect), "retry"),
            (Outcome::Error(ErrorClass::Dns), "retry"),
            (Outcome::Error(ErrorClass::Tls), "retry"),
            (Outcome::Error(ErrorClass::Blocked), "retry"),
            (Outcome::Error(ErrorClass::Protocol), "retry"),
        ];
        for (outcome, want) in cases {
            let got = p.decide(1, outcome, 0, &mut rng);
            let label = match got {
                Decision::Sent => "sent",
                Decision::Failed { deactivate: true } => "deactivate",
                Decision::Failed { deactivate: false } => "failed",
                d if retry(d) => "retry",
                _ => unreachable!(),
            };
            assert_eq!(label, *want, "{outcome:?}");
        }
    }

    #[test]
    fn the_default_schedule_follows_standard_webhooks_within_jitter() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        let expected_s = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];
        for (i, want) in expected_s.iter().enumerate() {
            let attempt = i as u32 + 1;
            let Decision::RetryAt(at) = p.decide(attempt, &status(500), 1_000, &mut rng) else {
                panic!("attempt {attempt} should be retried");
            };
            let delay = (at - 1_000) as f64 / 1000.0;
            let want = *want as f64;
            assert!(delay >= want * 0.8 && delay <= want * 1.2, "attempt {attempt}: {delay} vs {want}");
        }
        assert_eq!(p.decide(10, &status(500), 0, &mut rng), Decision::Failed { deactivate: false });
    }

    #[test]
    fn the_last_delay_repeats_when_more_attempts_are_asked() {
        let schedule = vec![Duration::from_millis(100), Duration::from_millis(200)];
        let p = RetryPolicy { schedule, max_attempts: 5, ..policy() };
        let mut rng = StdRng::seed_from_u64(3);
        for attempt in 2..5 {
            let Decision::RetryAt(at) = p.decide(attempt, &status(503), 0, &mut rng) else { panic!() };
            assert!((160..=240).contains(&at), "attempt {attempt}: {at}");
        }
        assert!(matches!(p.decide(5, &status(503), 0, &mut rng), Decision::Failed { .. }));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = RetryPolicy { retry_after_cap: Duration::from_secs(60), ..policy() };
        let mut rng = StdRng::seed_from_u64(3);
        let asked = |s| Outcome::Status { code: 429, retry_after: Some(Duration::from_secs(s)) };
        assert_eq!(p.decide(1, &asked(2), 0, &mut rng), Decision::RetryAt(2_000));
        assert_eq!(p.decide(1, &asked(86_400), 0, &mut rng), Decision::RetryAt(60_000));
        let busy = Outcome::Status { code: 503, retry_after: Some(Duration::from_secs(7)) };
        assert_eq!(p.decide(1, &busy, 0, &mut rng), Decision::RetryAt(7_000));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let now = 1_445_412_470_000; // 2015-10-21T07:27:50Z
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
