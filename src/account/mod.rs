//! `Accounts`: registration and login (argon2id, off the async workers), per-device bearer
//! tokens (random, stored hashed, revocable) and token authentication.

use crate::crypto;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{Device, DeviceId, User, UserId, now_millis};
use crate::store::{AccountStore, StoreError};
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
    /// Password hashes running at once: one per core (each takes 19 MiB and a core for tens of
    /// ms; more at once only queues them on the blocking pool and holds more memory).
    hashing: Arc<tokio::sync::Semaphore>,
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
    /// Runs a password hash or check on the blocking pool, at most one per core at a time.
    async fn hashing<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _permit = self.hashing.acquire().await.map_err(|_| Error::internal("hashing closed"))?;
        tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("worker failed: {e}")))
    }
}

impl Accounts {
    pub fn new(store: Arc<dyn AccountStore>, min_password_len: usize) -> Accounts {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Accounts { store, min_password_len, hashing: Arc::new(tokio::sync::Semaphore::new(cores)) }
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

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<NewSession> {
        validate_username(username)?;
        self.validate_password(password)?;
        let password = password.to_owned();
        let phc = self
            .hashing(move || crypto::hash_password(&password))
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

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<NewSession> {
        let wrong = || Error::new(ErrorCode::Unauthorized, "wrong username or password");
        let user = self.store.user_by_name(username).await?;
        let phc = match &user {
            Some(u) => self.store.password_hash(u.id).await?,
            None => None,
        };
        let password = password.to_owned();
        // Verify even for unknown users so timing does not reveal which usernames exist.
        let ok = self
            .hashing(move || {
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

    /// The identity of a bearer token, or `unauthorized`.
    pub async fn authenticate(&self, token: &str) -> Result<Identity> {
        if token.is_empty() || token.len() > 256 {
            return Err(Error::unauthorized());
        }
        match self.store.device_by_token(&crypto::token_hash(token)).await? {
            Some(d) => Ok(Identity { user_id: d.user_id, device_id: d.id }),
            None => Err(Error::unauthorized()),
        }
    }

    pub async fn logout(&self, device: DeviceId) -> Result<()> {
        Ok(self.store.revoke_device(device).await?)
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
