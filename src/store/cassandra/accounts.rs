//! `AccountStore` and `MetaStore` on Cassandra: users (rows first, username claimed last by
//! LWT, a stale claim taken over), devices and token hashes, device last use, node settings.

use super::*;

#[async_trait]
impl AccountStore for CassandraStore {
    /// The user and credentials rows first, the username claim (LWT) last: a registration
    /// that fails half-way leaves at worst rows no name points to, never a name without a user.
    /// A name whose row points to a missing user (a claim left by an older build, or a user row
    /// lost) counts as free and is taken over with a conditional update.
    async fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()> {
        let c = self.c()?;
        let name = user.username.to_lowercase();
        c.run(&c.st.insert_credentials, (user.id.0, password_hash)).await?;
        c.run(&c.st.insert_user, (user.id.0, user.username.as_str(), user.created_at)).await?;
        let result = c
            .session
            .execute_unpaged(&c.st.claim_username, (name.as_str(), user.id.0))
            .await
            .map_err(unavailable)?;
        let mut outcome = lwt_outcome(result)?;
        // Each round either succeeds, finds a live holder, or loses the race to a taker whose
        // user exists; the bound is only a guard against a pathological store.
        for _ in 0..8 {
            if outcome.applied {
                return Ok(());
            }
            let holder = outcome
                .uuid("user_id")
                .ok_or_else(|| StoreError::Corrupt(format!("username {name} claimed without a user id")))?;
            if holder == user.id.0 {
                return Ok(());
            }
            if !c.rows::<(Uuid,)>(&c.st.user_exists, (holder,)).await?.is_empty() {
                // Taken. Our rows are reachable from no name; remove them (best effort).
                let _ = c.run(&c.st.delete_user, (user.id.0,)).await;
                let _ = c.run(&c.st.delete_credentials, (user.id.0,)).await;
                return Err(StoreError::Conflict(format!("username {} is taken", user.username)));
            }
            tracing::warn!(username = %name, stale_user = %holder, "taking over a username claimed without a user");
            let result = c
                .session
                .execute_unpaged(&c.st.reclaim_username, (user.id.0, name.as_str(), holder))
                .await
                .map_err(unavailable)?;
            outcome = lwt_outcome(result)?;
        }
        Err(unavailable(format!("username {name}: claim kept changing hands")))
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        let c = self.c()?;
        let rows = c.rows::<(Uuid, String, i64)>(&c.st.user, (id.0,)).await?;
        Ok(rows.into_iter().next().map(|(id, username, created_at)| User {
            id: UserId(id),
            username,
            created_at,
        }))
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let c = self.c()?;
        let rows = c.rows::<(Uuid,)>(&c.st.username, (username.to_lowercase(),)).await?;
        match rows.into_iter().next() {
            Some((id,)) => self.user(UserId(id)).await,
            None => Ok(None),
        }
    }

    async fn password_hash(&self, id: UserId) -> StoreResult<Option<String>> {
        let c = self.c()?;
        Ok(c.rows::<(String,)>(&c.st.credentials, (id.0,)).await?.into_iter().next().map(|(h,)| h))
    }

    async fn create_device(&self, device: &Device, token_hash: &[u8; 32]) -> StoreResult<()> {
        let c = self.c()?;
        c.run(
            &c.st.insert_device,
            (
                device.id.0,
                device.user_id.0,
                device.name.as_str(),
                device.created_at,
                device.revoked,
                token_hash.as_slice(),
            ),
        )
        .await?;
        c.run(&c.st.insert_token, (token_hash.as_slice(), device.id.0)).await
    }

    async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Device>> {
        let c = self.c()?;
        let Some((device_id,)) =
            c.rows::<(Uuid,)>(&c.st.token, (token_hash.as_slice(),)).await?.into_iter().next()
        else {
            return Ok(None);
        };
        let rows = c.rows::<(Uuid, Uuid, String, i64, bool, Vec<u8>)>(&c.st.device, (device_id,)).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(id, user_id, name, created_at, revoked, _)| Device {
                id: DeviceId(id),
                user_id: UserId(user_id),
                name,
                created_at,
                revoked,
            })
            .filter(|d| !d.revoked))
    }

    async fn revoke_device(&self, id: DeviceId) -> StoreResult<()> {
        let c = self.c()?;
        let rows = c.rows::<(Uuid, Uuid, String, i64, bool, Vec<u8>)>(&c.st.device, (id.0,)).await?;
        let Some((_, _, _, _, _, token_hash)) = rows.into_iter().next() else { return Ok(()) };
        c.run(&c.st.revoke_device, (id.0,)).await?;
        c.run(&c.st.delete_token, (token_hash,)).await
    }

    /// Written `USING TIMESTAMP <at in µs>`: last-write-wins keeps the latest time whatever
    /// order touches arrive in, without a read or an LWT.
    async fn touch_device(&self, id: DeviceId, at: Millis) -> StoreResult<()> {
        let c = self.c()?;
        c.run(&c.st.touch_device, (id.0, at, at.saturating_mul(1000))).await
    }

    async fn device_last_used(&self, id: DeviceId) -> StoreResult<Option<Millis>> {
        let c = self.c()?;
        let rows = c.rows::<(Option<i64>,)>(&c.st.device_seen, (id.0,)).await?;
        Ok(rows.into_iter().next().and_then(|(at,)| at))
    }
}

#[async_trait]
impl MetaStore for CassandraStore {
    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let c = self.c()?;
        let rows = c.rows::<(Option<Vec<u8>>,)>(&c.st.meta, (key,)).await?;
        Ok(rows.into_iter().next().map(|(value,)| value.unwrap_or_default()))
    }

    /// `INSERT ... IF NOT EXISTS`; when not applied, the answer carries the stored value.
    async fn init_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        let c = self.c()?;
        let result = c.session.execute_unpaged(&c.st.init_meta, (key, value)).await.map_err(unavailable)?;
        let outcome = lwt_outcome(result)?;
        if outcome.applied {
            return Ok(value.to_vec());
        }
        match outcome.column("value") {
            Some(CqlValue::Blob(existing)) => Ok(existing.clone()),
            None => Ok(Vec::new()),
            Some(other) => Err(StoreError::Corrupt(format!("meta {key}: unexpected value {other:?}"))),
        }
    }
}
