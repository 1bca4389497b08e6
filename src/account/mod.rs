//! `Accounts`: registration and login (argon2id through the bounded `HashQueue`, after the
//! `LoginLimits`), per-device bearer tokens (random, stored hashed, revocable, expiring after
//! `token_ttl_days` without use) and token authentication.
//!
//! Submodules: `limits` (login/registration rate limits), `hash_queue` (bounded password
//! hashing), `expiry` (the sliding token expiry decision and the last-use notes).

pub mod expiry;
pub mod hash_queue;
pub mod limits;

use crate::config::SecurityConfig;
use crate::crypto;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{Device, DeviceId, Millis, User, UserId, now_millis};
use crate::store::{AccountStore, StoreError};
use expiry::{RecentUse, TokenUse};
use hash_queue::HashQueue;
use limits::LoginLimits;
use std::net::IpAddr;
use std::sync::Arc;

/// Who a valid token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub device_id: DeviceId,
}

/// What register and login return: the token is shown once and never stored in clear.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub user: User,
    pub device_id: DeviceId,
    pub token: String,
}

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
const PASSWORD_MAX_BYTES: usize = 1024;
const DEVICE_NAME_MAX: usize = 64;

#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    min_password_len: usize,
    /// Password hashes: one per core at once, a bounded line waiting.
    hashing: Arc<HashQueue>,
    /// Login and registration attempts per client address and per username.
    limits: Arc<LoginLimits>,
    /// A token expires after this long without use.
    token_ttl_ms: Millis,
    /// Last recorded use per device, so a use is written about once an hour.
    recent_use: Arc<RecentUse>,
}

/// Usernames: 3–32 ASCII letters, digits, `_`, `.` or `-`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<()> {
    let ok_len = (USERNAME_MIN..=USERNAME_MAX).contains(&name.len());
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "username must be {USERNAME_MIN}-{USERNAME_MAX} characters of letters, digits, '_', '.', '-', starting with a letter or digit"
        )))
    }
}

impl Accounts {
    /// Accounts with the `[security]` settings: password length, login and registration
    /// limits, hash queue, token TTL.
    pub fn from_config(store: Arc<dyn AccountStore>, security: &SecurityConfig) -> Accounts {
        Accounts {
            store,
            min_password_len: security.min_password_len as usize,
            hashing: Arc::new(HashQueue::per_core(security.hash_queue_max as usize)),
            limits: Arc::new(LoginLimits::new(security)),
            token_ttl_ms: i64::from(security.token_ttl_days.max(1)) * expiry::DAY_MS,
            recent_use: Arc::new(RecentUse::default()),
        }
    }

    /// Accounts with this minimum password length and the default `[security]` settings.
    pub fn new(store: Arc<dyn AccountStore>, min_password_len: usize) -> Accounts {
        let security = SecurityConfig {
            min_password_len: min_password_len.try_into().unwrap_or(u32::MAX),
            ..SecurityConfig::default()
        };
        Accounts::from_config(store, &security)
    }

    fn validate_password(&self, password: &str) -> Result<()> {
        let chars = password.chars().count();
        if chars < self.min_password_len || password.len() > PASSWORD_MAX_BYTES {
            return Err(Error::bad_request(format!(
                "password must be at least {} characters (and at most {PASSWORD_MAX_BYTES} bytes)",
                self.min_password_len
            )));
        }
        Ok(())
    }

    /// Creates an account and its first device. `client` is the caller's address: validation
    /// comes first (a 400 costs no attempt), then its registration limit, then the hash.
    pub async fn register(
        &self,
        client: IpAddr,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<NewSession> {
        validate_username(username)?;
        self.validate_password(password)?;
        self.limits.check_register(client)?;
        let password = password.to_owned();
        let phc = self
            .hashing
            .run(move || crypto::hash_password(&password))
            .await?
            .map_err(|e| Error::internal(e.to_string()))?;
        let user = User { id: UserId::generate(), username: username.to_owned(), created_at: now_millis() };
        match self.store.create_user(&user, &phc).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Error::new(ErrorCode::UsernameTaken, "that username is taken"));
            }
            Err(e) => return Err(e.into()),
        }
        self.new_device(user, device_name).await
    }

    /// A new device of an existing user. `client` is the caller's address; the attempt is
    /// counted against its limit and the username's (good or bad, before any hashing).
    pub async fn login(
        &self,
        client: IpAddr,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<NewSession> {
        let wrong = || Error::new(ErrorCode::Unauthorized, "wrong username or password");
        let valid_name = validate_username(username).is_ok();
        self.limits.check_login(client, valid_name.then_some(username))?;
        if !valid_name {
            // No such account can exist (registration validates), and that is no secret.
            return Err(wrong());
        }
        let user = self.store.user_by_name(username).await?;
        let phc = match &user {
            Some(u) => self.store.password_hash(u.id).await?,
            None => None,
        };
        let password = password.to_owned();
        // Verify even for unknown users so timing does not reveal which usernames exist.
        let ok = self
            .hashing
            .run(move || {
                let phc = phc.unwrap_or_else(dummy_hash);
                crypto::verify_password(&password, &phc)
            })
            .await?;
        match user {
            Some(user) if ok => self.new_device(user, device_name).await,
            _ => Err(wrong()),
        }
    }

    async fn new_device(&self, user: User, device_name: Option<&str>) -> Result<NewSession> {
        let name: String = device_name.unwrap_or("device").chars().take(DEVICE_NAME_MAX).collect();
        let (token, hash) = crypto::new_device_token();
        let device = Device {
            id: DeviceId::generate(),
            user_id: user.id,
            name,
            created_at: now_millis(),
            revoked: false,
        };
        self.store.create_device(&device, &hash).await?;
        Ok(NewSession { user, device_id: device.id, token })
    }

    /// The identity of a bearer token, or `unauthorized` (also when it expired).
    pub async fn authenticate(&self, token: &str) -> Result<Identity> {
        self.authenticate_at(token, now_millis()).await
    }

    /// `authenticate` at `now`: a token unused for longer than the TTL (last recorded use, or
    /// the device's creation) is refused; otherwise this use is recorded when none is yet or
    /// the recorded one is an hour old or more (`expiry::decide`).
    pub async fn authenticate_at(&self, token: &str, now: Millis) -> Result<Identity> {
        if token.is_empty() || token.len() > 256 {
            return Err(Error::unauthorized());
        }
        let Some(device) = self.store.device_by_token(&crypto::token_hash(token)).await? else {
            return Err(Error::unauthorized());
        };
        let identity = Identity { user_id: device.user_id, device_id: device.id };
        let recorded = match self.recent_use.fresh(device.id, now) {
            Some(at) => Some(at),
            None => self.store.device_last_used(device.id).await?,
        };
        match expiry::decide(recorded, device.created_at, now, self.token_ttl_ms) {
            TokenUse::Expired => {
                Err(Error::new(ErrorCode::Unauthorized, "the token expired (unused too long); log in again"))
            }
            TokenUse::Valid { record: false } => {
                if let Some(at) = recorded {
                    self.recent_use.note(device.id, at, now);
                }
                Ok(identity)
            }
            TokenUse::Valid { record: true } => {
                match self.store.touch_device(device.id, now).await {
                    Ok(()) => self.recent_use.note(device.id, now, now),
                    // Not fatal: the next request tries again.
                    Err(e) => tracing::warn!(error = %e, "could not record a token's use"),
                }
                Ok(identity)
            }
        }
    }

    pub async fn logout(&self, device: DeviceId) -> Result<()> {
        self.store.revoke_device(device).await?;
        self.recent_use.forget(device);
        Ok(())
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>> {
        Ok(self.store.user(id).await?)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self.store.user_by_name(name).await?)
    }
}

/// A real argon2id hash of a random password, verified against when the user is unknown.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let (random, _) = crypto::new_device_token();
            crypto::hash_password(&random).unwrap_or_default()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreResult;
    use crate::store::embedded::EmbeddedStore;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The embedded store, counting `touch_device` calls.
    struct Counting {
        inner: EmbeddedStore,
        touches: AtomicUsize,
    }

    #[async_trait]
    impl AccountStore for Counting {
        async fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()> {
            self.inner.create_user(user, password_hash).await
        }
        async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
            self.inner.user(id).await
        }
        async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
            self.inner.user_by_name(username).await
        }
        async fn password_hash(&self, id: UserId) -> StoreResult<Option<String>> {
            self.inner.password_hash(id).await
        }
        async fn create_device(&self, device: &Device, token_hash: &[u8; 32]) -> StoreResult<()> {
            self.inner.create_device(device, token_hash).await
        }
        async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Device>> {
            self.inner.device_by_token(token_hash).await
        }
        async fn revoke_device(&self, id: DeviceId) -> StoreResult<()> {
            self.inner.revoke_device(id).await
        }
        async fn touch_device(&self, id: DeviceId, at: Millis) -> StoreResult<()> {
            self.touches.fetch_add(1, Ordering::SeqCst);
            self.inner.touch_device(id, at).await
        }
        async fn device_last_used(&self, id: DeviceId) -> StoreResult<Option<Millis>> {
            self.inner.device_last_used(id).await
        }
    }

    const HOUR: Millis = expiry::TOUCH_EVERY_MS;
    const DAY: Millis = expiry::DAY_MS;

    /// Accounts with a 30-day TTL, and a device (with its token) created at `created`.
    async fn setup(dir: &std::path::Path, created: Millis) -> (Accounts, Arc<Counting>, Device, String) {
        let store =
            Arc::new(Counting { inner: EmbeddedStore::open(dir).unwrap(), touches: AtomicUsize::new(0) });
        let accounts = Accounts::from_config(store.clone(), &SecurityConfig::default());
        let user = User { id: UserId::generate(), username: "alice".into(), created_at: created };
        store.create_user(&user, "not a real hash").await.unwrap();
        let (token, hash) = crypto::new_device_token();
        let device = Device {
            id: DeviceId::generate(),
            user_id: user.id,
            name: "d".into(),
            created_at: created,
            revoked: false,
        };
        store.create_device(&device, &hash).await.unwrap();
        (accounts, store, device, token)
    }

    #[tokio::test]
    async fn tokens_expire_without_use_and_use_is_recorded_hourly() {
        let dir = tempfile::tempdir().unwrap();
        let t0: Millis = 1_700_000_000_000;
        let (accounts, store, device, token) = setup(dir.path(), t0).await;
        let touches = || store.touches.load(Ordering::SeqCst);

        // The first use is recorded.
        let who = accounts.authenticate_at(&token, t0 + 1).await.unwrap();
        assert_eq!(who.device_id, device.id);
        assert_eq!((touches(), store.device_last_used(device.id).await.unwrap()), (1, Some(t0 + 1)));
        // Then a request a minute for two hours: a write an hour (at the 61st and 121st).
        for minute in 1..=121 {
            accounts.authenticate_at(&token, t0 + minute * 60_000).await.unwrap();
        }
        assert_eq!(touches(), 3, "the first use, then at t0+1h+1min and t0+2h+1min");
        assert_eq!(store.device_last_used(device.id).await.unwrap(), Some(t0 + 2 * HOUR + 60_000));
        // Sliding: 29 days after the last use still valid, and that use recorded.
        let day29 = t0 + 2 * HOUR + 29 * DAY;
        accounts.authenticate_at(&token, day29).await.unwrap();
        assert_eq!(store.device_last_used(device.id).await.unwrap(), Some(day29));
        // 30 days and a bit after the last use: refused, and not recorded.
        let e = accounts.authenticate_at(&token, day29 + 30 * DAY + 1).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert_eq!(store.device_last_used(device.id).await.unwrap(), Some(day29));
        // Another node's (or a restarted node's) view: the stored use counts.
        let again = Accounts::from_config(store.clone(), &SecurityConfig::default());
        again.authenticate_at(&token, day29 + 30 * DAY).await.unwrap();
        assert!(again.authenticate_at(&token, day29 + 61 * DAY).await.is_err());
    }

    #[tokio::test]
    async fn a_device_never_used_expires_from_its_creation_and_logout_still_wins() {
        let dir = tempfile::tempdir().unwrap();
        let t0: Millis = 1_700_000_000_000;
        let (accounts, store, device, token) = setup(dir.path(), t0).await;
        let e = accounts.authenticate_at(&token, t0 + 30 * DAY + 1).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert_eq!(store.touches.load(Ordering::SeqCst), 0);
        assert_eq!(store.device_last_used(device.id).await.unwrap(), None);
        // A remembered recent use does not outlive a logout.
        accounts.authenticate_at(&token, t0 + 2 * HOUR).await.unwrap();
        accounts.logout(device.id).await.unwrap();
        let e = accounts.authenticate_at(&token, t0 + 2 * HOUR + 1).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }

    #[test]
    fn usernames() {
        for ok in ["bob", "alice_1", "a.b-c", "X9z"] {
            validate_username(ok).unwrap();
        }
        for bad in ["", "ab", "_bob", "bob!", "bö b", &"x".repeat(33)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }
}
