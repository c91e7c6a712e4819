//! Encryption of signing secrets at rest.
//!
//! Signing secrets must be usable (HMAC needs the secret itself), so unlike API
//! keys they cannot be hashed. They are sealed with ChaCha20-Poly1305 under a
//! key from configuration (`--secret-key`), with the owning project's id as
//! associated data, so a ciphertext copied to another project's row fails to open.
//! A copy of the database alone does not reveal any secret.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;

/// Format byte of a sealed value, so the scheme can change without ambiguity.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

pub struct Vault {
    cipher: ChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
#[error("a stored secret could not be decrypted: wrong --secret-key, or the row was tampered with")]
pub struct OpenError;

impl Vault {
    /// `key_b64`: base64 of 32 bytes, as printed by `hookline secret-key` or
    /// written to the key file.
    pub fn from_base64(key_b64: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD.decode(key_b64.trim()).context("the secret key is not base64")?;
        anyhow::ensure!(bytes.len() == 32, "the secret key must be 32 bytes (base64 of 32 random bytes)");
        Ok(Self { cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)) })
    }

    /// A fresh random key, base64.
    pub fn generate_key() -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        STANDARD.encode(bytes)
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh key: the
    /// zero-setup default beside a SQLite database. `may_create` is false when
    /// the database already holds secrets sealed with some key: a fresh key
    /// could open none of them, so a missing file is an error to fix, not a
    /// file to replace.
    pub fn load_or_create(path: &Path, may_create: bool) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                #[cfg(unix)]
                if let Ok(meta) = std::fs::metadata(path) {
                    use std::os::unix::fs::PermissionsExt as _;
                    if meta.permissions().mode() & 0o077 != 0 {
                        tracing::warn!(
                            path = %path.display(),
                            "the key file is readable by other users; restrict it with chmod 600"
                        );
                    }
                }
                Self::from_base64(&text).with_context(|| format!("key file {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !may_create => Err(e).with_context(|| {
                format!(
                    "the key file {} is missing, but the database holds signing secrets sealed with it: \
                     restore the file from your backup, or pass the key with --secret-key",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate_key();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(path) {
                    Ok(mut file) => {
                        file.write_all(key.as_bytes())?;
                        file.sync_all()?;
                        Self::from_base64(&key)
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path, may_create),
                    Err(e) => Err(e).with_context(|| format!("creating key file {}", path.display())),
                }
            }
            Err(e) => Err(e).with_context(|| format!("reading key file {}", path.display())),
        }
    }

    /// Encrypts `plaintext`, bound to `context` (the owning project's id).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .expect("encryption of a short buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: context.as_bytes() })
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_project() {
        let vault = Vault::from_base64(&Vault::generate_key()).unwrap();
        let sealed = vault.seal(b"whsec_abc", "prj_1");
        assert!(!sealed.windows(9).any(|w| w == b"whsec_abc"));
        assert_eq!(vault.open(&sealed, "prj_1").unwrap(), b"whsec_abc");
        assert!(vault.open(&sealed, "prj_2").is_err());
        let other = Vault::from_base64(&Vault::generate_key()).unwrap();
        assert!(other.open(&sealed, "prj_1").is_err());
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookline.key");
        let sealed = Vault::load_or_create(&path, true).unwrap().seal(b"x", "p");
        assert_eq!(Vault::load_or_create(&path, false).unwrap().open(&sealed, "p").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_missing_key_file_is_not_replaced_when_secrets_depend_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookline.key");
        let err = Vault::load_or_create(&path, false).err().unwrap();
        assert!(format!("{err:#}").contains("is missing"), "{err:#}");
        assert!(!path.exists());
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(Vault::from_base64("not base64!").is_err());
        assert!(Vault::from_base64("c2hvcnQ=").is_err());
    }
}
