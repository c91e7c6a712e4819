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

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is missing or has no sha256=/v1, entry")]
    Missing,
    #[error("no signature matches this secret and body")]
    Mismatch,
    #[error("the timestamp is {0} s away from now, more than the tolerance")]
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
    let want = hmac(secret.key_bytes(), &[msg_id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body]);
    let mut saw_v1 = false;
    let mut matched = false;
    for entry in header.split_whitespace() {
        let Some(b64) = entry.strip_prefix("v1,") else { continue };
        saw_v1 = true;
        if let Ok(given) = STANDARD.decode(b64) {
            matched |= bool::from(want.as_slice().ct_eq(&given));
        }
    }
    if !saw_v1 {
        return Err(VerifyError::Missing);
    }
    if !matched {
        return Err(VerifyError::Mismatch);
    }
    let skew = (now_s - timestamp).abs();
    if skew > tolerance_s {
        return Err(VerifyError::Stale(now_s - timestamp));
    }
    Ok(())
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
}
