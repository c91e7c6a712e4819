//! When hookline gives up on a webhook (SPEC §9): what an attempt says about
//! its endpoint, how long the endpoint has been failing, and whether to
//! disable it.
//!
//! Pure: the results, the stored state and the time come in as arguments. The
//! store applies the judgement in the transaction that records the attempts
//! (`Backend::complete`), so the streak of failures (`failing_since`) never
//! disagrees with the attempts kept, and the `webhook.disabled` event is
//! committed with the disabling (see [`super::operational`]).

use std::time::Duration;

use super::UnixMs;
use super::time::to_rfc3339;

/// What one attempt says about its webhook's endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx: the endpoint works. Ends a streak of failures.
    Succeeded,
    /// Any other answer, or no answer (timeout, connection, DNS, TLS, a
    /// blocked address). Starts a streak of failures, or continues one.
    Failed,
    /// 410 Gone: the receiver asked to stop. Disables the webhook at once.
    Gone,
}

/// Why hookline disabled a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisableReason {
    /// The receiver answered 410 Gone.
    Gone,
    /// Every attempt since `since` failed, for longer than `limit`.
    Failing { since: UnixMs, limit: Duration },
}

impl DisableReason {
    /// The sentence shown as the webhook's `disabled_reason` and sent in the
    /// `webhook.disabled` event.
    pub fn sentence(&self) -> String {
        match self {
            Self::Gone => "The receiver answered 410 Gone, which asks senders to stop.".to_owned(),
            Self::Failing { since, limit } => format!(
                "Every delivery attempt since {} failed, for longer than {}.",
                to_rfc3339(*since),
                humantime::format_duration(*limit)
            ),
        }
    }

    /// The `last_error` of a pending delivery failed because of it.
    pub fn not_sent(&self) -> String {
        format!("Not sent: hookline disabled the webhook. {}", self.sentence())
    }

    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::Failing { .. } => "failing",
        }
    }
}

/// A webhook as the judgement needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointState {
    pub is_active: bool,
    /// When the current streak of failed attempts began; `None` when the
    /// last attempt (or every attempt so far) succeeded.
    pub failing_since: Option<UnixMs>,
}

/// What a batch of results does to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// The new `failing_since`.
    pub failing_since: Option<UnixMs>,
    /// Set when the webhook is to be disabled now.
    pub disable: Option<DisableReason>,
}

/// `--disable-after`: how long a webhook may fail, with no success in
/// between, before hookline disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisablePolicy {
    pub after: Duration,
}

impl DisablePolicy {
    /// Applies the results of attempts to one webhook, each `(started_at,
    /// verdict)`, to its stored state.
    ///
    /// The streak is counted from the first failure after the last success:
    /// a success ends the streak unless the streak began after it (results of
    /// several workers may be recorded out of order), and a failure starts
    /// one. An inactive webhook is never disabled again.
    pub fn judge(&self, state: EndpointState, results: &[(UnixMs, Verdict)], now: UnixMs) -> Judgement {
        let mut results = results.to_vec();
        results.sort_by_key(|(at, _)| *at);
        let mut failing_since = state.failing_since;
        for (at, verdict) in &results {
            match verdict {
                Verdict::Succeeded => {
                    if failing_since.is_some_and(|since| since <= *at) {
                        failing_since = None;
                    }
                }
                Verdict::Failed | Verdict::Gone => {
                    failing_since = Some(failing_since.map_or(*at, |since| since.min(*at)));
                }
            }
        }
        let disable = if !state.is_active {
            None
        } else if results.iter().any(|(_, v)| *v == Verdict::Gone) {
            Some(DisableReason::Gone)
        } else {
            failing_since
                .filter(|since| now - since > self.after.as_millis() as i64)
                .map(|since| DisableReason::Failing { since, limit: self.after })
        };
        Judgement { failing_since, disable }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    const DAY: i64 = 86_400_000;

    fn policy() -> DisablePolicy {
        DisablePolicy { after: Duration::from_millis(5 * DAY as u64) }
    }

    fn active(failing_since: Option<UnixMs>) -> EndpointState {
        EndpointState { is_active: true, failing_since }
    }

    #[test]
    fn the_streak_starts_at_the_first_failure_and_ends_at_a_success() {
        // (stored failing_since, results, failing_since after)
        type Case<'a> = (Option<UnixMs>, &'a [(UnixMs, Verdict)], Option<UnixMs>);
        let cases: &[Case] = &[
            (None, &[(10, Failed)], Some(10)),
            (Some(5), &[(10, Failed)], Some(5)),
            (Some(5), &[(10, Succeeded)], None),
            (None, &[(10, Succeeded)], None),
            // In order: fail, succeed, fail: the streak begins at the last failure.
            (None, &[(10, Failed), (20, Succeeded), (30, Failed)], Some(30)),
            // Recorded out of order, judged in order.
            (None, &[(30, Failed), (20, Succeeded), (10, Failed)], Some(30)),
            // A success older than the stored streak does not end it.
            (Some(50), &[(20, Succeeded)], Some(50)),
            // A failure older than the stored streak moves its start back.
            (Some(50), &[(20, Failed)], Some(20)),
        ];
        for (stored, results, expected) in cases {
            let j = policy().judge(active(*stored), results, 100);
            assert_eq!(j.failing_since, *expected, "{stored:?} + {results:?}");
            assert_eq!(j.disable, None);
        }
    }

    #[test]
    fn a_webhook_is_disabled_only_after_failing_for_longer_than_the_limit() {
        let now = 10 * DAY;
        let exactly = policy().judge(active(Some(now - 5 * DAY)), &[(now, Failed)], now);
        assert_eq!(exactly.disable, None, "not longer than the limit yet");
        let longer = policy().judge(active(Some(now - 5 * DAY - 1)), &[(now, Failed)], now);
        assert_eq!(longer.disable, Some(DisableReason::Failing { since: now - 5 * DAY - 1, limit: policy().after }));
        let recovered = policy().judge(active(Some(now - 6 * DAY)), &[(now, Succeeded)], now);
        assert_eq!(recovered, Judgement { failing_since: None, disable: None });
    }

    #[test]
    fn a_410_disables_at_once_and_an_inactive_webhook_is_not_disabled_again() {
        let gone = policy().judge(active(None), &[(5, Gone)], 6);
        assert_eq!(gone, Judgement { failing_since: Some(5), disable: Some(DisableReason::Gone) });
        let inactive = EndpointState { is_active: false, failing_since: Some(0) };
        assert_eq!(policy().judge(inactive, &[(10 * DAY, Gone)], 10 * DAY).disable, None);
    }

    #[test]
    fn reasons_are_sentences_naming_the_start_and_the_limit() {
        let r = DisableReason::Failing { since: 0, limit: Duration::from_secs(5 * 86_400) };
        assert_eq!(
            r.sentence(),
            "Every delivery attempt since 1970-01-01T00:00:00.000Z failed, for longer than 5days."
        );
        assert!(DisableReason::Gone.sentence().contains("410 Gone"));
    }
}
