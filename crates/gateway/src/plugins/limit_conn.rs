//! `limit-conn`: at most `conn` requests of a key in progress at once. The access
//! phase takes a slot; the slot is a guard held in the request's context
//! ([`PhaseCtx::hold`]), so it is given back when the request ends however it ends
//! (answered, refused later in the chain, client gone).

use std::sync::{Arc, Mutex};

use super::keys::{Key, KeySpec, SHARDS};
use crate::core::phase::{PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

type Table = Vec<Mutex<HashMap<Key, u32>>>;

#[derive(Debug)]
pub struct LimitConn {
    conn: u32,
    key: KeySpec,
    status: u16,
    message: Arc<str>,
    /// Requests in progress by key; shared with the slots.
    table: Arc<Table>,
}

/// One request's slot; given back on drop.
struct Slot {
    table: Arc<Table>,
    key: Key,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self.table[self.key.shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = shard.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

impl LimitConn {
    pub fn compile(config: &model::plugin::LimitConn) -> Result<Self, String> {
        Ok(Self {
            conn: config.conn,
            key: KeySpec::new(config.key_type, &config.header)?,
            status: config.rejected_code,
            message: config
                .rejected_msg
                .as_deref()
                .unwrap_or("Too many requests in progress")
                .into(),
            table: Arc::new((0..SHARDS).map(|_| Mutex::default()).collect()),
        })
    }

    /// A slot for `key`, or `None` when all are taken.
    fn take(&self, key: Key) -> Option<Slot> {
        let mut shard = self.table[key.shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = shard.entry(key.clone()).or_insert(0);
        if *count >= self.conn {
            return None;
        }
        *count += 1;
        Some(Slot {
            table: self.table.clone(),
            key,
        })
    }
}

impl Plugin for LimitConn {
    fn name(&self) -> &'static str {
        model::plugin::LIMIT_CONN.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        self.key.reads_headers()
    }

    fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        match self.take(self.key.of(req, ctx)) {
            Some(slot) => {
                ctx.hold(slot);
                Ok(())
            }
            None => Err(Refusal::denied(
                self.status,
                "rate_limited",
                self.message.clone(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back_when_dropped() {
        let plugin = LimitConn::compile(&serde_json::from_str(r#"{"conn":2}"#).unwrap()).unwrap();
        let a = plugin.take(Key::Constant).unwrap();
        let b = plugin.take(Key::Constant).unwrap();
        assert!(plugin.take(Key::Constant).is_none());
        assert!(plugin.take(Key::Text("other".into())).is_some());
        drop(a);
        let c = plugin.take(Key::Constant).unwrap();
        drop((b, c));
        assert!(plugin.table.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
