//! Webhook signatures, both schemes hookline sends on every delivery.
//!
//! - `X-Signature: sha256=<hex>`: HMAC-SHA256 of the raw body, keyed with the
//!   secret *text* (`whsec_…` as UTF-8), exactly like GitHub's
//!   `X-Hub-Signature-256`, so GitHub verification code works unchanged.
//! - Standard Webhooks: `webhook-signature: v1,<base64>`, HMAC-SHA256 of
//!   `{webhook-id}.{webhook-timestamp}.{body}` keyed with the base64-decoded
//!   secret. Binding the id and timestamp lets receivers reject replays.
//!
//! Verification compares in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::domain::SigningSecret;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The `X-Signature` value: `sha256=<lowercase hex>`.
pub fn x_signature(secret_text: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac(secret_text.as_bytes(), &[body])))
}

/// One Standard Webhooks signature: `v1,<base64>`.
pub fn standard_signature(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac(key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(mac))
}

/// The `webhook-signature` header: one `v1,…` per secret, space-separated, the
/// newest first. During a rotation overlap a receiver holding either secret
/// finds a match.
pub fn webhook_signature_header(secrets: &[SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(secrets.len() * 48);
    for (i, s) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&standard_signature(s.key_bytes(), msg_id, timestamp, body));
    }
    out
}

/// Standard Webhooks' suggested tolerance for `webhook-timestamp`: 5 minutes
/// either way. Older requests are refused as possible replays.
pub const TOLERANCE_S: i64 = 300;

/// Why a signature check failed. The messages are for the developer of a receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is missing or has no sha256=/v1, entry")]
    Missing,
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a whole number of seconds")]
    BadTimestamp,
    #[error("no signature matches this secret and body")]
    Mismatch,
    #[error("the signature matches, but the timestamp is {0} s away from now, more than the tolerance")]
    Stale(i64),
}

/// Checks an `X-Signature` header value.
pub fn verify_x_signature(secret_text: &str, body: &[u8], header: &str) -> Result<(), VerifyError> {
    let hex_sig = header.trim().strip_prefix("sha256=").ok_or(VerifyError::Missing)?;
    let given = hex::decode(hex_sig).map_err(|_| VerifyError::Mismatch)?;
    let want = hmac(secret_text.as_bytes(), &[body]);
    if bool::from(want.as_slice().ct_eq(&given)) { Ok(()) } else { Err(VerifyError::Mismatch) }
}

/// Checks a `webhook-signature` header with its id and timestamp, allowing
/// `tolerance_s` seconds of clock difference (Standard Webhooks suggests 300).
pub fn verify_standard(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    standard_match(secret, msg_id, timestamp, body, header, now_s, tolerance_s).map(drop)
}

/// Which of the header's `v1,` signatures matched (0-based) and how many there are.
fn standard_match(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now_s: i64,
    tolerance_s: i64,
) -> Result<(usize, usize), VerifyError> {
    let want = hmac(secret.key_bytes(), &[msg_id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body]);
    let mut seen = 0;
    let mut matched = None;
    // Every entry is compared, in constant time, whatever matched before it.
    for entry in header.split_whitespace() {
        let Some(b64) = entry.strip_prefix("v1,") else { continue };
        if let Ok(given) = STANDARD.decode(b64)
            && bool::from(want.as_slice().ct_eq(&given))
        {
            matched = matched.or(Some(seen));
        }
        seen += 1;
    }
    if seen == 0 {
        return Err(VerifyError::Missing);
    }
    let index = matched.ok_or(VerifyError::Mismatch)?;
    let skew = (now_s - timestamp).abs();
    if skew > tolerance_s {
        return Err(VerifyError::Stale(now_s - timestamp));
    }
    Ok((index, seen))
}

/// The result of checking one signature scheme of a received request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The request carries none of this scheme's headers.
    Absent,
    /// Signature `index` (0-based) of `of` matches.
    Verified {
        index: usize,
        of: usize,
    },
    Failed(VerifyError),
}

/// Both schemes of one received request, as a receiver would check them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCheck {
    pub x_signature: Check,
    pub standard: Check,
}

impl RequestCheck {
    /// Authentic: at least one scheme verifies and no scheme that is present
    /// fails. A present signature that does not verify means the request was
    /// changed, replayed or signed with another secret, even if the other
    /// scheme verifies.
    pub fn is_authentic(&self) -> bool {
        let checks = [&self.x_signature, &self.standard];
        checks.iter().any(|c| matches!(c, Check::Verified { .. }))
            && !checks.iter().any(|c| matches!(c, Check::Failed(_)))
    }
}

/// Checks both signatures of a received request against `secret`, at time
/// `now_s` (unix seconds). `header` looks a header up by its lower-case name.
/// Shared by `hookline listen` and `hookline verify`.
pub fn check_request<'h>(
    secret: &SigningSecret,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
    now_s: i64,
) -> RequestCheck {
    let x_signature = match header("x-signature") {
        None => Check::Absent,
        Some(h) => match verify_x_signature(secret.expose(), body, h) {
            Ok(()) => Check::Verified { index: 0, of: 1 },
            Err(e) => Check::Failed(e),
        },
    };
    let names = ["webhook-id", "webhook-timestamp", "webhook-signature"];
    let standard = match names.map(&header) {
        [None, None, None] => Check::Absent,
        [Some(id), Some(ts), Some(sig)] => match ts.trim().parse::<i64>() {
            Err(_) => Check::Failed(VerifyError::BadTimestamp),
            Ok(ts) => match standard_match(secret, id.trim(), ts, body, sig, now_s, TOLERANCE_S) {
                Ok((index, of)) => Check::Verified { index, of },
                Err(e) => Check::Failed(e),
            },
        },
        found => {
            let missing = names.iter().zip(found).find(|(_, v)| v.is_none()).map(|(n, _)| *n);
            Check::Failed(VerifyError::MissingHeader(missing.expect("one is missing")))
        }
    };
    RequestCheck { x_signature, standard }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published test vector of the Standard Webhooks specification.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn standard_webhooks_test_vector() {
        let secret = SigningSecret::parse(SW_SECRET).unwrap();
        assert_eq!(standard_signature(secret.key_bytes(), SW_ID, SW_TS, SW_BODY), SW_SIG);
        assert_eq!(verify_standard(&secret, SW_ID, SW_TS, SW_BODY, SW_SIG, SW_TS + 10, 300), Ok(()));
    }

    #[test]
    fn github_test_vector() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let sig = x_signature("It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(sig, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
        assert_eq!(verify_x_signature("It's a Secret to Everybody", b"Hello, World!", &sig), Ok(()));
        assert_eq!(
            verify_x_signature("It's a Secret to Everybody", b"Hello, World?", &sig),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn the_header_carries_one_signature_per_secret_and_either_verifies() {
        let new = SigningSecret::generate();
        let old = SigningSecret::generate();
        let header = webhook_signature_header(&[new.clone(), old.clone()], "dlv_1", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.starts_with(&standard_signature(new.key_bytes(), "dlv_1", 100, b"{}")));
        for s in [&new, &old] {
            assert_eq!(verify_standard(s, "dlv_1", 100, b"{}", &header, 100, 300), Ok(()));
        }
        let stranger = SigningSecret::generate();
        assert_eq!(verify_standard(&stranger, "dlv_1", 100, b"{}", &header, 100, 300), Err(VerifyError::Mismatch));
    }

    #[test]
    fn stale_timestamps_and_missing_headers_are_refused() {
        let s = SigningSecret::parse(SW_SECRET).unwrap();
        assert_eq!(verify_standard(&s, SW_ID, SW_TS, SW_BODY, SW_SIG, SW_TS + 301, 300), Err(VerifyError::Stale(301)));
        assert_eq!(verify_standard(&s, SW_ID, SW_TS, SW_BODY, "v2,abc", SW_TS, 300), Err(VerifyError::Missing));
        assert_eq!(verify_x_signature("k", b"", "md5=00"), Err(VerifyError::Missing));
    }

    /// A request as hookline sends it, signed with `secrets` (newest first).
    fn signed_request(secrets: &[SigningSecret], body: &[u8], ts: i64) -> Vec<(&'static str, String)> {
        vec![
            ("x-signature", x_signature(secrets[0].expose(), body)),
            ("webhook-id", "dlv_1".to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", webhook_signature_header(secrets, "dlv_1", ts, body)),
        ]
    }

    fn check(secret: &SigningSecret, headers: &[(&'static str, String)], body: &[u8], now: i64) -> RequestCheck {
        check_request(secret, |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()), body, now)
    }

    #[test]
    fn a_request_verifies_by_both_schemes_and_a_tampered_one_by_neither() {
        let secret = SigningSecret::generate();
        let body = br#"{"id":"evt_1"}"#;
        let headers = signed_request(std::slice::from_ref(&secret), body, 1000);
        let ok = check(&secret, &headers, body, 1010);
        assert_eq!(ok.x_signature, Check::Verified { index: 0, of: 1 });
        assert_eq!(ok.standard, Check::Verified { index: 0, of: 1 });
        assert!(ok.is_authentic());

        let tampered = check(&secret, &headers, br#"{"id":"evt_2"}"#, 1010);
        assert_eq!(tampered.x_signature, Check::Failed(VerifyError::Mismatch));
        assert_eq!(tampered.standard, Check::Failed(VerifyError::Mismatch));
        assert!(!tampered.is_authentic());

        let stranger = check(&SigningSecret::generate(), &headers, body, 1010);
        assert!(!stranger.is_authentic());
    }

    #[test]
    fn the_timestamp_tolerance_is_five_minutes_either_way() {
        let secret = SigningSecret::generate();
        let headers = signed_request(std::slice::from_ref(&secret), b"{}", 1000);
        for (now, ok) in [(1300, true), (700, true), (1301, false), (699, false)] {
            let got = check(&secret, &headers, b"{}", now);
            assert_eq!(got.is_authentic(), ok, "now {now}: {got:?}");
        }
        assert_eq!(check(&secret, &headers, b"{}", 1301).standard, Check::Failed(VerifyError::Stale(301)));
        // A stale request fails even though X-Signature, which has no timestamp, verifies.
        assert_eq!(check(&secret, &headers, b"{}", 1301).x_signature, Check::Verified { index: 0, of: 1 });
    }

    #[test]
    fn during_a_rotation_either_secret_verifies_the_standard_signature() {
        let (new, old) = (SigningSecret::generate(), SigningSecret::generate());
        let headers = signed_request(&[new.clone(), old.clone()], b"{}", 1000);
        assert_eq!(check(&new, &headers, b"{}", 1000).standard, Check::Verified { index: 0, of: 2 });
        let with_old = check(&old, &headers, b"{}", 1000);
        assert_eq!(with_old.standard, Check::Verified { index: 1, of: 2 });
        // X-Signature carries the new secret's signature only.
        assert_eq!(with_old.x_signature, Check::Failed(VerifyError::Mismatch));
    }

    #[test]
    fn missing_or_malformed_headers_are_named() {
        let secret = SigningSecret::generate();
        let all = signed_request(std::slice::from_ref(&secret), b"{}", 1000);
        let without = |name: &str| all.iter().filter(|(n, _)| *n != name).cloned().collect::<Vec<_>>();

        let only_x = check(&secret, &all[..1], b"{}", 1000);
        assert_eq!(only_x.standard, Check::Absent);
        assert!(only_x.is_authentic());
        let only_standard = check(&secret, &without("x-signature"), b"{}", 1000);
        assert_eq!(only_standard.x_signature, Check::Absent);
        assert!(only_standard.is_authentic());

        let no_id = check(&secret, &without("webhook-id"), b"{}", 1000);
        assert_eq!(no_id.standard, Check::Failed(VerifyError::MissingHeader("webhook-id")));
        assert!(!no_id.is_authentic());
        let mut bad_ts = all.clone();
        bad_ts[2].1 = "yesterday".into();
        assert_eq!(check(&secret, &bad_ts, b"{}", 1000).standard, Check::Failed(VerifyError::BadTimestamp));
        assert!(!check(&secret, &[], b"{}", 1000).is_authentic(), "no signature at all");
    }
}
