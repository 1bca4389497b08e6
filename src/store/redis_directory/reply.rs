//! Mapping fred's errors and replies onto the store's: `Unavailable` for a failed command,
//! `Corrupt` for an unexpected reply, and the decoders of the script replies' values.

use crate::store::StoreError;
use fred::prelude::Error as RedisError;
use fred::types::Value;

pub(super) fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

pub(super) fn unexpected(what: &str, v: &Value) -> StoreError {
    StoreError::Corrupt(format!("redis: unexpected reply to {what}: {v:?}"))
}

pub(super) fn value_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(super) fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// An array reply; Redis sends an empty Lua table as an empty array (fred may give `Null`).
pub(super) fn value_array(v: Value) -> Result<Vec<Value>, Value> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(Vec::new()),
        other => Err(other),
    }
}
