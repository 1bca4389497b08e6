//! Sliding device-token expiry: `decide`, the pure decision (expired, or valid and whether
//! this use must be recorded), and `RecentUse`, a bounded in-memory note of the last recorded
//! use per device, so a busy device's use is written about once per `TOUCH_EVERY_MS`, not on
//! every request.

use crate::model::{DeviceId, Millis};
use std::collections::HashMap;
use std::sync::Mutex;

pub const DAY_MS: Millis = 24 * 60 * 60 * 1000;
/// A use is recorded when the last recorded one is at least this old.
pub const TOUCH_EVERY_MS: Millis = 60 * 60 * 1000;
/// Devices `RecentUse` remembers; past this, notes older than `TOUCH_EVERY_MS` (useless
/// anyway) are dropped, and if that is not enough, all of them (costing one extra read and
/// write per device).
const RECENT_MAX: usize = 100_000;

/// What to do with a token presented at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenUse {
    /// Unused for longer than the TTL: refuse it (401).
    Expired,
    /// Valid; `record` says whether `now` must be written as its last use.
    Valid { record: bool },
}

/// The expiry decision: a token expires `ttl_ms` after its last recorded use, or after its
/// device's creation while no use is recorded (sliding). A valid use is recorded when none is
/// yet, or the recorded one is `TOUCH_EVERY_MS` old. A time in the future (another node's
/// clock ahead) counts as now.
pub fn decide(last_recorded: Option<Millis>, created_at: Millis, now: Millis, ttl_ms: Millis) -> TokenUse {
    let idle = now.saturating_sub(last_recorded.unwrap_or(created_at)).max(0);
    if idle > ttl_ms {
        TokenUse::Expired
    } else {
        TokenUse::Valid { record: last_recorded.is_none() || idle >= TOUCH_EVERY_MS }
    }
}

/// The last use recorded per device by this node (or read from the store), bounded.
pub struct RecentUse {
    seen: Mutex<HashMap<DeviceId, Millis>>,
    max: usize,
}

impl Default for RecentUse {
    fn default() -> Self {
        RecentUse { seen: Mutex::default(), max: RECENT_MAX }
    }
}

impl RecentUse {
    /// The device's last recorded use, if noted within `TOUCH_EVERY_MS` before `now` (then it
    /// need not be read from the store again).
    pub fn fresh(&self, device: DeviceId, now: Millis) -> Option<Millis> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&device).copied().filter(|at| now.saturating_sub(*at) < TOUCH_EVERY_MS)
    }

    /// Notes that the device's last recorded use is `at`.
    pub fn note(&self, device: DeviceId, at: Millis, now: Millis) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= self.max && !seen.contains_key(&device) {
            seen.retain(|_, t| now.saturating_sub(*t) < TOUCH_EVERY_MS);
            if seen.len() >= self.max {
                seen.clear();
            }
        }
        seen.insert(device, at);
    }

    pub fn forget(&self, device: DeviceId) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Millis = 30 * DAY_MS;
    const T0: Millis = 1_700_000_000_000;

    #[test]
    fn expiry_slides_with_use() {
        let used = |at| decide(Some(at), 0, at, TTL);
        assert_eq!(used(T0), TokenUse::Valid { record: false });
        let at = |now| decide(Some(T0), 0, now, TTL);
        assert_eq!(at(T0 + TOUCH_EVERY_MS - 1), TokenUse::Valid { record: false });
        assert_eq!(at(T0 + TOUCH_EVERY_MS), TokenUse::Valid { record: true });
        assert_eq!(at(T0 + TTL), TokenUse::Valid { record: true });
        assert_eq!(at(T0 + TTL + 1), TokenUse::Expired);
        // Used on day 29: good until day 59.
        let day29 = Some(T0 + 29 * DAY_MS);
        assert_eq!(decide(day29, T0, T0 + 58 * DAY_MS, TTL), TokenUse::Valid { record: true });
        assert_eq!(decide(day29, T0, T0 + 60 * DAY_MS, TTL), TokenUse::Expired);
        // A clock behind the recorded use is not "idle".
        assert_eq!(decide(Some(T0 + DAY_MS), 0, T0, TTL), TokenUse::Valid { record: false });
        assert_eq!(decide(Some(Millis::MIN), 0, T0, TTL), TokenUse::Expired);
    }

    #[test]
    fn a_device_never_used_counts_from_its_creation_and_its_first_use_is_recorded() {
        assert_eq!(decide(None, T0, T0, TTL), TokenUse::Valid { record: true });
        assert_eq!(decide(None, T0, T0 + TTL, TTL), TokenUse::Valid { record: true });
        assert_eq!(decide(None, T0, T0 + TTL + 1, TTL), TokenUse::Expired);
        // The recorded use wins over creation, even if older (it is what the store says).
        assert_eq!(decide(Some(T0 - TTL - 1), T0, T0, TTL), TokenUse::Expired);
    }

    #[test]
    fn recent_use_is_fresh_for_an_hour_and_bounded() {
        let r = RecentUse { max: 3, ..RecentUse::default() };
        let d = DeviceId::generate();
        assert_eq!(r.fresh(d, T0), None);
        r.note(d, T0, T0);
        assert_eq!(r.fresh(d, T0 + TOUCH_EVERY_MS - 1), Some(T0));
        assert_eq!(r.fresh(d, T0 + TOUCH_EVERY_MS), None);
        r.forget(d);
        assert!(r.is_empty());
        for i in 0..10 {
            r.note(DeviceId::generate(), T0 + i, T0 + i);
            assert!(r.len() <= 3);
        }
        // Old notes make room before fresh ones are dropped.
        let r = RecentUse { max: 2, ..RecentUse::default() };
        let (old, fresh, new) = (DeviceId::generate(), DeviceId::generate(), DeviceId::generate());
        r.note(old, T0, T0);
        r.note(fresh, T0 + TOUCH_EVERY_MS, T0 + TOUCH_EVERY_MS);
        r.note(new, T0 + TOUCH_EVERY_MS, T0 + TOUCH_EVERY_MS);
        assert_eq!(r.fresh(fresh, T0 + TOUCH_EVERY_MS), Some(T0 + TOUCH_EVERY_MS));
        assert_eq!(r.len(), 2);
    }
}
