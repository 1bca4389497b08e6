//! Secrets at rest: the master key (config or a generated file in the data dir), conversation
//! keys wrapped by it, message bodies sealed with XChaCha20-Poly1305, device tokens (random,
//! stored as SHA-256), argon2id password hashes, and keys derived from a conversation key
//! (attachment chunks, signed attachment links).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::Mac;
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

    /// The configured key, or the one in `data_dir/master.key`; `None` when neither exists
    /// (a first start: see [`MasterKey::write_file`]).
    pub fn load(configured: &str, data_dir: &Path) -> std::io::Result<Option<MasterKey>> {
        if !configured.is_empty() {
            return MasterKey::from_hex(configured)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()));
        }
        let path = MasterKey::file(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => MasterKey::from_hex(&text).map(Some).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where a generated key lives.
    pub fn file(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join("master.key")
    }

    /// Writes this key to `data_dir/master.key` (mode 0600, synced); fails if the file exists.
    /// Losing that file makes every stored message unreadable: back it up.
    pub fn write_file(&self, data_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(MasterKey::file(data_dir))?;
        file.write_all(hex::encode(self.0).as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    /// A check value stored with the data: it tells whether a key is the one the data was
    /// written with, and reveals nothing usable about the key.
    pub fn check_value(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"switchboard master key check v1\0");
        h.update(self.0);
        h.finalize()[..16].to_vec()
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

    /// A key for one purpose (`context`), derived from this one with HMAC-SHA256, so
    /// attachment chunks and link signatures never use the conversation key itself.
    pub fn derive(&self, context: &[u8]) -> [u8; KEY_LEN] {
        let mut mac =
            <HmacSha256 as hmac::KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"switchboard derive v1\0");
        mac.update(context);
        mac.finalize().into_bytes().into()
    }

    /// The signature of a link to `path` valid until `exp` (seconds since the epoch): 32 hex
    /// characters (128 bits of HMAC-SHA256).
    pub fn link_signature(&self, path: &str, exp: u64) -> String {
        hex::encode(&self.link_mac(path, exp).finalize().into_bytes()[..LINK_SIG_LEN])
    }

    /// Whether `signature` is this key's for `path` and `exp` (constant time).
    pub fn verify_link(&self, path: &str, exp: u64, signature: &str) -> bool {
        match hex::decode(signature) {
            Ok(bytes) if bytes.len() == LINK_SIG_LEN => {
                self.link_mac(path, exp).verify_truncated_left(&bytes).is_ok()
            }
            _ => false,
        }
    }

    fn link_mac(&self, path: &str, exp: u64) -> HmacSha256 {
        let key = self.derive(b"attachment links");
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(&exp.to_be_bytes());
        mac
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;
const LINK_SIG_LEN: usize = 16;

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

/// Argon2id working memory (19 MiB at the default cost), kept and reused rather than
/// allocated per hash: with glibc malloc, freeing such blocks raises its mmap threshold and the
/// next ones stay resident in the arenas — measured at ~13 MB of RSS kept per registration
/// (13 GB after 1,000). The pool holds at most as many buffers as hashes ran at once
/// (`Accounts` bounds that to the number of cores).
static ARGON2_MEMORY: std::sync::Mutex<Vec<Vec<argon2::Block>>> = std::sync::Mutex::new(Vec::new());

fn with_argon2_memory<R>(blocks_needed: usize, f: impl FnOnce(&mut [argon2::Block]) -> R) -> R {
    let pooled = ARGON2_MEMORY.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut blocks = match pooled {
        Some(b) if b.len() == blocks_needed => b,
        _ => vec![argon2::Block::default(); blocks_needed],
    };
    let result = f(&mut blocks);
    if blocks_needed == argon2::Params::default().block_count() {
        ARGON2_MEMORY.lock().unwrap_or_else(|p| p.into_inner()).push(blocks);
    }
    result
}

const PHC_B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

fn argon2id(params: argon2::Params) -> argon2::Argon2<'static> {
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// An argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) for `password`, at the
/// default (OWASP) cost. Slow on purpose: call off the async workers.
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    use base64::Engine;
    let params = argon2::Params::default();
    let salt = random_bytes::<16>();
    let mut out = [0u8; 32];
    with_argon2_memory(params.block_count(), |blocks| {
        argon2id(params.clone()).hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
    })
    .map_err(|_| CryptoError("password hashing failed"))?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        PHC_B64.encode(salt),
        PHC_B64.encode(out)
    ))
}

/// Checks `password` against an argon2id PHC string (ours, or any standard one).
pub fn verify_password(password: &str, phc: &str) -> bool {
    use base64::Engine;
    let parts: Vec<&str> = phc.split('$').collect();
    let ["", "argon2id", "v=19", params, salt, hash] = parts[..] else { return false };
    let mut cost = [0u32; 3];
    for (i, (name, value)) in params.split(',').filter_map(|kv| kv.split_once('=')).enumerate().take(3) {
        if name != ["m", "t", "p"][i] {
            return false;
        }
        let Ok(v) = value.parse() else { return false };
        cost[i] = v;
    }
    let (Ok(salt), Ok(expected)) = (PHC_B64.decode(salt), PHC_B64.decode(hash)) else { return false };
    let Ok(params) = argon2::Params::new(cost[0], cost[1], cost[2], Some(expected.len())) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let computed = with_argon2_memory(params.block_count(), |blocks| {
        argon2id(params.clone()).hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
    });
    // Constant time: no early exit on the first differing byte.
    computed.is_ok() && out.iter().zip(&expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
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
    fn hashes_are_standard_phc_strings() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
        // Ours verify with the argon2 crate's verifier, and its hashes verify with ours.
        let ours = hash_password("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        let theirs = argon2::Argon2::default().hash_password(b"battery staple").unwrap().to_string();
        assert!(verify_password("battery staple", &theirs));
        assert!(!verify_password("battery", &theirs));
        assert!(!verify_password("x", "$argon2id$v=19$m=8,t=1,p=1$bad$bad"));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn passwords_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
    }

    #[test]
    fn master_key_file_is_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(MasterKey::load("", dir.path()).unwrap().is_none());
        let a = MasterKey::generate();
        a.write_file(dir.path()).unwrap();
        assert!(MasterKey::generate().write_file(dir.path()).is_err());
        let b = MasterKey::load("", dir.path()).unwrap().unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.check_value(), b.check_value());
        assert_ne!(a.check_value(), MasterKey::generate().check_value());
    }
}
