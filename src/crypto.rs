//! Secrets at rest: the master key (config or a generated file in the data dir), conversation
//! keys wrapped by it, message bodies sealed with XChaCha20-Poly1305, device tokens (random,
//! stored as SHA-256) and argon2id password hashes.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

/// Failure to seal or open: a wrong key, tampered or truncated ciphertext.
#[derive(Debug, thiserror::Error)]
#[error("cryptographic failure: {0}")]
pub struct CryptoError(&'static str);

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random source failed");
    out
}

fn seal(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    let nonce_bytes = random_bytes::<NONCE_LEN>();
    let nonce = XNonce::from(nonce_bytes);
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad })
        .expect("encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ciphertext);
    out
}

fn open(key: &[u8; KEY_LEN], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError("ciphertext too short"));
    }
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    let (nonce_bytes, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce_arr: [u8; NONCE_LEN] = nonce_bytes.try_into().expect("split at NONCE_LEN");
    cipher
        .decrypt(&XNonce::from(nonce_arr), Payload { msg: ciphertext, aad })
        .map_err(|_| CryptoError("authentication failed"))
}

/// The key that wraps every conversation key. Never logged.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_hex(hex_key: &str) -> Result<MasterKey, CryptoError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError("not hex"))?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError("not 32 bytes"))?;
        Ok(MasterKey(key))
    }

    /// The configured key, or the one in `data_dir/master.key`, created (mode 0600) on first
    /// start. Losing that file makes every stored message unreadable: back it up.
    pub fn load_or_create(configured: &str, data_dir: &Path) -> std::io::Result<MasterKey> {
        if !configured.is_empty() {
            return MasterKey::from_hex(configured)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()));
        }
        let path = data_dir.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => MasterKey::from_hex(&text).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir)?;
                let key = random_bytes::<KEY_LEN>();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(&path)?;
                file.write_all(hex::encode(key).as_bytes())?;
                file.sync_all()?;
                Ok(MasterKey(key))
            }
            Err(e) => Err(e),
        }
    }

    pub fn generate() -> MasterKey {
        MasterKey(random_bytes())
    }

    /// A new random conversation key and its wrapped form for storage; `context` (the
    /// conversation id) is bound into the wrapping so a wrapped key cannot be moved.
    pub fn new_conversation_key(&self, context: &[u8]) -> (ConversationKey, Vec<u8>) {
        let key = random_bytes::<KEY_LEN>();
        (ConversationKey(key), seal(&self.0, &key, context))
    }

    pub fn unwrap_conversation_key(
        &self,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<ConversationKey, CryptoError> {
        let key = open(&self.0, wrapped, context)?;
        let key: [u8; KEY_LEN] = key.try_into().map_err(|_| CryptoError("bad key length"))?;
        Ok(ConversationKey(key))
    }
}

/// One conversation's key: seals and opens its message bodies.
#[derive(Clone)]
pub struct ConversationKey([u8; KEY_LEN]);

impl std::fmt::Debug for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConversationKey(<redacted>)")
    }
}

impl ConversationKey {
    /// Seals a body; `aad` binds it to its place (conversation and seq).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal(&self.0, plaintext, aad)
    }
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.0, sealed, aad)
    }
}

/// A new device token (shown to the client once) and the hash the store keeps.
pub fn new_device_token() -> (String, [u8; 32]) {
    use base64::Engine;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let hash = token_hash(&token);
    (token, hash)
}

/// What the store keeps of a token: its SHA-256 (tokens are 256-bit random, so no salt or
/// slow hash is needed).
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

/// An argon2id PHC string for `password` (slow on purpose: call off the async workers).
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| CryptoError("password hashing failed"))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_are_bound_to_their_place() {
        let master = MasterKey::generate();
        let (key, wrapped) = master.new_conversation_key(b"conv-1");
        let again = master.unwrap_conversation_key(&wrapped, b"conv-1").unwrap();
        let sealed = key.seal(b"hello", b"conv-1/1");
        assert_ne!(&sealed[NONCE_LEN..], b"hello");
        assert_eq!(again.open(&sealed, b"conv-1/1").unwrap(), b"hello");
        assert!(again.open(&sealed, b"conv-1/2").is_err());
        assert!(master.unwrap_conversation_key(&wrapped, b"conv-2").is_err());
        assert!(MasterKey::generate().unwrap_conversation_key(&wrapped, b"conv-1").is_err());
    }

    #[test]
    fn passwords_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
    }

    #[test]
    fn master_key_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load_or_create("", dir.path()).unwrap();
        let b = MasterKey::load_or_create("", dir.path()).unwrap();
        assert_eq!(a.0, b.0);
    }
}
