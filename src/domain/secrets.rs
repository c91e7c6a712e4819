//! Credentials: project API keys and webhook signing secrets.
//!
//! Both print as `***` in `Debug`, and expose their text only through a method
//! whose name says so, so a secret cannot slip into a log line by formatting.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Every API key starts with this, so leaked keys are easy to scan for.
const API_KEY_PREFIX: &str = "hlk_";
/// Standard Webhooks' prefix for a base64 signing secret.
const SECRET_PREFIX: &str = "whsec_";
/// 256 bits: enough that a fast hash at rest is as good as a slow one.
const KEY_BYTES: usize = 32;

/// A project API key: `hlk_` + 43 base64url characters (32 random bytes).
#[derive(Clone)]
pub struct ApiKey(String);

/// SHA-256 of an API key: what the database stores and looks keys up by.
///
/// A fast hash is enough because keys carry 256 random bits; nothing can be
/// brute-forced. Looking a key up by its hash also means the lookup compares
/// hashes, never key text, so response timing reveals nothing about valid keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash(pub [u8; 32]);

impl ApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts text shaped like a key; whether it exists is the store's question.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(API_KEY_PREFIX)?;
        (body.len() == 43 && URL_SAFE_NO_PAD.decode(body).is_ok()).then(|| Self(s.to_owned()))
    }

    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The first characters, safe to show in key listings to tell keys apart.
    pub fn display_prefix(&self) -> String {
        self.0[..API_KEY_PREFIX.len() + 6].to_owned()
    }

    /// The key itself: only to hand it to its owner, once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyHash(***)")
    }
}

/// A signing secret in Standard Webhooks form: `whsec_` + base64 of 32 random bytes.
///
/// It is generated independently of any API key, so knowing a key reveals nothing
/// about the secret and the other way round.
#[derive(Clone)]
pub struct SigningSecret {
    /// The text users configure in their receivers; the `X-Signature` key.
    text: String,
    /// The decoded bytes after `whsec_`; the `webhook-signature` key.
    key: Vec<u8>,
}

impl SigningSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self { text: format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)), key: bytes.to_vec() }
    }

    /// Accepts `whsec_<base64>` (any length, as other senders' secrets vary).
    pub fn parse(s: &str) -> Option<Self> {
        let key = STANDARD.decode(s.strip_prefix(SECRET_PREFIX)?).ok()?;
        (!key.is_empty()).then(|| Self { text: s.to_owned(), key })
    }

    /// The secret text: to hand it to its owner once, or to encrypt it at rest.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The decoded key bytes (Standard Webhooks' HMAC key).
    pub fn key_bytes(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_prefixed_random_and_parse_back() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert!(a.expose().starts_with("hlk_"));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(ApiKey::parse(a.expose()).unwrap().hash(), a.hash());
        assert!(ApiKey::parse("hlk_short").is_none());
        assert!(ApiKey::parse(&a.expose().replace("hlk_", "sk_")).is_none());
    }

    #[test]
    fn signing_secrets_follow_the_standard_webhooks_format() {
        let s = SigningSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(s.key_bytes().len(), 32);
        let parsed = SigningSecret::parse(s.expose()).unwrap();
        assert_eq!(parsed.key_bytes(), s.key_bytes());
        assert!(SigningSecret::parse("whsec_!!!").is_none());
        assert!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
    }

    #[test]
    fn debug_never_shows_secret_material() {
        let key = ApiKey::generate();
        let secret = SigningSecret::generate();
        let shown = format!("{key:?} {:?} {secret:?}", key.hash());
        assert!(!shown.contains(key.expose()));
        assert!(!shown.contains(secret.expose()));
        assert!(shown.contains("***"));
    }
}
