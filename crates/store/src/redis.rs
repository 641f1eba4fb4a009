//! The Redis backend (`redis` crate): a second production store with etcd's guarantees.
//!
//! Every call is one Lua script (`EVALSHA`, loaded again on its own after a restart),
//! so each is atomic and all-or-nothing: a transaction checks its compares, takes the
//! next revision, writes its keys and appends its change to the log in one step, and a
//! listing reads every key under a prefix together with the revision it was read at.
//!
//! Layout, every key under the keyspace root `R` (the `{R}` hash tag keeps them in one
//! slot, so the scripts may touch them all):
//!
//! - `{R}:rev`: the store revision; `{R}:epoch`: an id made (from the server's `TIME`)
//!   when the data is created, so an emptied Redis is told apart from the one before;
//!   `{R}:compact`: every change from this revision on is still in the log.
//! - `{R}:kv`: a hash, key → `{mod_revision}:{lease}:{value}` (lease 0: none);
//!   `{R}:keys`: the same keys in a sorted set, for `ZRANGEBYLEX` prefix scans.
//! - `{R}:log`: a stream, one entry per revision with id `{revision}-0`, holding its
//!   events (`p` key, `v` value, `l` lease for a put; `d` key for a delete). The last
//!   [`HISTORY`] entries are kept (like the in-process store); [`RedisStore::compact`]
//!   trims it by `XTRIM MINID`.
//! - `{R}:leases`: a sorted set of lease ids scored by their deadline in milliseconds of
//!   the server's clock; `{R}:lease-ttl`: id → TTL; `{R}:lease-seq`: the id counter;
//!   `{R}:lease:{id}`: the keys put with the lease.
//!
//! A watch reads the log from its start revision (failing with
//! [`StoreError::Compacted`] when the log starts later), then waits on a connection of
//! its own with `XREAD BLOCK` and reads what arrived, again by a script that checks the
//! log still covers it: nothing is lost, nothing is read twice, no resync is needed.
//!
//! Leases expire by the server's clock: a reaper script, run by every store handle every
//! [`REAP_INTERVAL`] and at the start of every script that writes, deletes the keys of
//! every lease past its deadline at one new revision, so watchers see delete events as
//! with etcd. Running it twice or from many handles is harmless.
//!
//! Redis may lose data etcd would not (see `docs/decisions.md`): restarted without
//! persistence it comes back empty and its revision counter starts again at 1. A handle
//! remembers the data epoch and the server's `run_id` it last talked to; when either
//! changes it lifts the counter above every revision it handed out before and refuses
//! (with [`StoreError::Compacted`], the relist signal) a watch from any of those, so a
//! watcher that had delivered revision 500 relists instead of skipping the new 1..500.
//!
//! The connection is made on first use and again after it breaks, so a store made while
//! Redis is down works once it is up; every call is bounded by a timeout and fails with
//! [`StoreError::Unavailable`] meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script, Value};

use crate::{
    Compare, ConfigStore, KeyValue, LeaseId, Listing, Op, RawWatch, StoreError, StoreRevision, Txn,
    TxnOutcome, WatchBatch, WatchEvent,
};

/// How many past revisions the log keeps, as the in-process store does.
pub const HISTORY: usize = 10_000;

/// How often each store handle runs the lease reaper.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);

const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one `XREAD BLOCK` waits before the watch checks the data epoch again.
const BLOCK: Duration = Duration::from_secs(1);

/// Log entries one read of a watch takes.
const READ_COUNT: usize = 256;

/// Where a Redis store is and who it logs in as; `Debug` leaves the password out.
#[derive(Clone)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A handle on a Redis config store; clones share the connection and what it has seen.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("endpoint", &self.inner.endpoint)
            .field("root", &self.inner.keys.root)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: redis::Client,
    /// `host:port`, for messages (never the credentials).
    endpoint: String,
    keys: Keys,
    scripts: Scripts,
    /// The shared connection for every call but a watch's reads; `None` before the first
    /// call and after it broke (the next call connects again).
    shared: tokio::sync::Mutex<Option<Conn>>,
    /// Which data and server this handle's revisions come from.
    seen: Mutex<Seen>,
}

/// A connection and the `run_id` of the server process it reached.
#[derive(Clone)]
struct Conn {
    conn: MultiplexedConnection,
    run_id: Arc<str>,
}

/// The data epoch and server process an answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    epoch: String,
    run_id: Arc<str>,
}

#[derive(Default)]
struct Seen {
    generation: Option<Generation>,
    /// Every revision this handle handed out under an earlier generation is below it,
    /// every one under the current generation at or above it (0: one generation so far).
    floor: StoreRevision,
    /// The highest revision handed out so far, under any generation.
    highest: StoreRevision,
}

/// The Redis keys of one keyspace root.
struct Keys {
    root: String,
    /// In the order the scripts' `KEYS` expect them.
    fixed: [String; 9],
    log: String,
    /// The lease key sets are `{lease_set}{id}`.
    lease_set: String,
}

impl Keys {
    fn new(root: &str) -> Self {
        let key = |name: &str| format!("{{{root}}}:{name}");
        Self {
            root: root.to_owned(),
            fixed: [
                key("rev"),
                key("epoch"),
                key("compact"),
                key("kv"),
                key("keys"),
                key("log"),
                key("leases"),
                key("lease-ttl"),
                key("lease-seq"),
            ],
            log: key("log"),
            lease_set: key("lease:"),
        }
    }
}

/// Shared by every script: the key names, initialisation of fresh data, the revision
/// batch (records, lease sets and the log entry of one revision) and the lease reaper.
macro_rules! prelude {
    () => {
        r#"
local REV, EPOCH, COMPACT, KV, KEYSET, LOG, LEASES, TTL, LEASE_SEQ =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local LEASE_SET = ARGV[1]
local HISTORY = tonumber(ARGV[2])
-- The epoch the calling handle knows ('' if none), the revision above everything it
-- handed out, and '1' when it reached another server process than before.
local KNOWN_EPOCH, LIFT_TO, OTHER_SERVER = ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
-- Fields of one log entry before it is split in two revisions (Lua's unpack limit).
local MAX_FIELDS = 6000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function revision()
  return tonumber(redis.call('GET', REV))
end

-- Fresh data (a new or emptied Redis) starts at revision 1 with a new epoch. Data the
-- handle does not know (another epoch, or a server restarted from older persisted
-- data) has its counter lifted above every revision the handle handed out, before the
-- script does anything, so old and new revisions never overlap for that handle.
local LIFTED
local function init()
  if redis.call('EXISTS', REV) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', REV, 1)
    redis.call('SET', EPOCH, t[1] .. '.' .. t[2])
    redis.call('SET', COMPACT, 1)
  end
  local unknown = OTHER_SERVER or (KNOWN_EPOCH ~= '' and redis.call('GET', EPOCH) ~= KNOWN_EPOCH)
  if unknown and revision() < LIFT_TO then
    redis.call('SET', REV, LIFT_TO)
  end
  LIFTED = revision()
end

-- Every answer starts with the epoch, the revision and the revision right after init.
local function head()
  return {redis.call('GET', EPOCH), revision(), LIFTED}
end

local function record_lease(rec)
  local a = string.find(rec, ':', 1, true)
  local b = string.find(rec, ':', a + 1, true)
  return tonumber(string.sub(rec, a + 1, b - 1))
end

local function record_value(rec)
  local a = string.find(rec, ':', 1, true)
  local b = string.find(rec, ':', a + 1, true)
  return string.sub(rec, b + 1)
end

local function begin()
  return {rev = revision() + 1, fields = {}}
end

local function trim()
  local n = redis.call('XLEN', LOG)
  if n > HISTORY then
    local old = redis.call('XRANGE', LOG, '-', '+', 'COUNT', n - HISTORY)
    local last = old[#old][1]
    local keep = tonumber(string.sub(last, 1, string.find(last, '-', 1, true) - 1)) + 1
    redis.call('XTRIM', LOG, 'MINID', keep .. '-0')
    if keep > tonumber(redis.call('GET', COMPACT)) then
      redis.call('SET', COMPACT, keep)
    end
  end
end

-- Commits the batch's revision if it changed anything; returns a fresh batch.
local function finish(b)
  if #b.fields > 0 then
    redis.call('SET', REV, b.rev)
    redis.call('XADD', LOG, b.rev .. '-0', unpack(b.fields))
    trim()
  end
  return begin()
end

local function put(b, key, value, lease)
  local old = redis.call('HGET', KV, key)
  if old then
    local was = record_lease(old)
    if was ~= 0 then redis.call('SREM', LEASE_SET .. was, key) end
  else
    redis.call('ZADD', KEYSET, 0, key)
  end
  redis.call('HSET', KV, key, b.rev .. ':' .. lease .. ':' .. value)
  if tonumber(lease) ~= 0 then redis.call('SADD', LEASE_SET .. lease, key) end
  local f = b.fields
  f[#f + 1] = 'p'; f[#f + 1] = key; f[#f + 1] = 'v'; f[#f + 1] = value
  f[#f + 1] = 'l'; f[#f + 1] = lease
end

local function del(b, key)
  local old = redis.call('HGET', KV, key)
  if not old then return end
  local was = record_lease(old)
  if was ~= 0 then redis.call('SREM', LEASE_SET .. was, key) end
  redis.call('HDEL', KV, key)
  redis.call('ZREM', KEYSET, key)
  local f = b.fields
  f[#f + 1] = 'd'; f[#f + 1] = key
end

-- Deletes the lease and the keys still attached to it; a lease with very many keys
-- takes several revisions (still in this one script).
local function drop_lease(b, id)
  local set = LEASE_SET .. id
  for _, key in ipairs(redis.call('SMEMBERS', set)) do
    local rec = redis.call('HGET', KV, key)
    if rec and record_lease(rec) == id then del(b, key) end
    if #b.fields >= MAX_FIELDS then b = finish(b) end
  end
  redis.call('DEL', set)
  redis.call('ZREM', LEASES, id)
  redis.call('HDEL', TTL, id)
  return b
end

-- Expires every lease past its deadline, their keys deleted at one new revision.
local function reap(now)
  local due = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 1000)
  if #due == 0 then return 0 end
  local b = begin()
  for _, id in ipairs(due) do b = drop_lease(b, tonumber(id)) end
  finish(b)
  return #due
end
"#
    };
}

/// ARGV[6] the number of compares, then three values per compare (`a`bsent or
/// `v`alue, key, value), then four per operation (`p`ut or `d`elete, key, value,
/// lease). Answers the head and 1 (applied), 0 (a compare failed) or -1 (unknown lease).
const TXN: &str = concat!(
    prelude!(),
    r#"
init()
reap(now_ms())
local nc = tonumber(ARGV[6])
local first_op = 7 + nc * 3
for i = first_op, #ARGV, 4 do
  if ARGV[i] == 'p' and ARGV[i + 3] ~= '0' and not redis.call('ZSCORE', LEASES, ARGV[i + 3]) then
    local h = head(); h[4] = -1; return h
  end
end
for i = 7, first_op - 1, 3 do
  local rec = redis.call('HGET', KV, ARGV[i + 1])
  local holds
  if ARGV[i] == 'a' then holds = not rec else holds = rec and record_value(rec) == ARGV[i + 2] end
  if not holds then local h = head(); h[4] = 0; return h end
end
local b = begin()
for i = first_op, #ARGV, 4 do
  if ARGV[i] == 'p' then put(b, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) else del(b, ARGV[i + 1]) end
end
finish(b)
local h = head(); h[4] = 1; return h
"#
);

/// ARGV[6] the key; answers the head and the record (nil when absent).
const GET: &str = concat!(
    prelude!(),
    r#"
init()
local h = head(); h[4] = redis.call('HGET', KV, ARGV[6]); return h
"#
);

/// ARGV[6], ARGV[7]: the `ZRANGEBYLEX` bounds; answers the head, then key and record of
/// every key in the range, in key order.
const LIST: &str = concat!(
    prelude!(),
    r#"
init()
local h = head()
for _, key in ipairs(redis.call('ZRANGEBYLEX', KEYSET, ARGV[6], ARGV[7])) do
  h[#h + 1] = key
  h[#h + 1] = redis.call('HGET', KV, key)
end
return h
"#
);

/// ARGV[6] the TTL in seconds; answers the head and the new lease id.
const GRANT: &str = concat!(
    prelude!(),
    r#"
init()
local now = now_ms()
reap(now)
local id = redis.call('INCR', LEASE_SEQ)
local ttl = tonumber(ARGV[6])
redis.call('ZADD', LEASES, now + ttl * 1000, id)
redis.call('HSET', TTL, id, ttl)
local h = head(); h[4] = id; return h
"#
);

/// ARGV[6] the lease id; answers the head and 1, or 0 when the lease is gone.
const KEEP_ALIVE: &str = concat!(
    prelude!(),
    r#"
init()
local now = now_ms()
reap(now)
local h = head()
if not redis.call('ZSCORE', LEASES, ARGV[6]) then h[4] = 0; return h end
local ttl = tonumber(redis.call('HGET', TTL, ARGV[6]))
redis.call('ZADD', LEASES, now + ttl * 1000, ARGV[6])
h[4] = 1; return h
"#
);

/// ARGV[6] the lease id; answers the head and 1, or 0 when the lease is gone.
const REVOKE: &str = concat!(
    prelude!(),
    r#"
init()
reap(now_ms())
if not redis.call('ZSCORE', LEASES, ARGV[6]) then local h = head(); h[4] = 0; return h end
finish(drop_lease(begin(), tonumber(ARGV[6])))
local h = head(); h[4] = 1; return h
"#
);

/// Answers the head and the number of leases expired.
const REAP: &str = concat!(
    prelude!(),
    r#"
init()
local n = reap(now_ms())
local h = head(); h[4] = n; return h
"#
);

/// ARGV[6] the first revision to read (0: the next one), ARGV[7] how many entries;
/// answers the head, the compact revision, the first revision read and the entries.
const READ_LOG: &str = concat!(
    prelude!(),
    r#"
init()
local h = head()
local from = tonumber(ARGV[6])
if from <= 0 then from = h[2] + 1 end
h[4] = tonumber(redis.call('GET', COMPACT))
h[5] = from
h[6] = redis.call('XRANGE', LOG, from .. '-0', '+', 'COUNT', ARGV[7])
return h
"#
);

/// ARGV[6] a revision: the log keeps nothing before it (capped at the current one).
const COMPACT: &str = concat!(
    prelude!(),
    r#"
init()
local c = math.min(revision(), tonumber(ARGV[6]))
if c > tonumber(redis.call('GET', COMPACT)) then
  redis.call('SET', COMPACT, c)
  redis.call('XTRIM', LOG, 'MINID', c .. '-0')
end
return head()
"#
);

struct Scripts {
    txn: Script,
    get: Script,
    list: Script,
    grant: Script,
    keep_alive: Script,
    revoke: Script,
    reap: Script,
    read_log: Script,
    compact: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            txn: Script::new(TXN),
            get: Script::new(GET),
            list: Script::new(LIST),
            grant: Script::new(GRANT),
            keep_alive: Script::new(KEEP_ALIVE),
            revoke: Script::new(REVOKE),
            reap: Script::new(REAP),
            read_log: Script::new(READ_LOG),
            compact: Script::new(COMPACT),
        }
    }
}

/// An argument of a script call.
#[derive(Clone)]
enum Arg<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

impl RedisStore {
    /// Prepares a store on `target` whose keys all live under `root` (the keyspace
    /// root); does not wait for Redis. Starts the lease reaper on the current runtime.
    pub fn connect(target: &RedisTarget, root: &str) -> Result<Self, StoreError> {
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(target.host.clone(), target.port),
            redis: redis::RedisConnectionInfo {
                db: 0,
                username: target.username.clone(),
                password: target.password.clone(),
                protocol: redis::ProtocolVersion::RESP2,
            },
        };
        let endpoint = format!("{}:{}", target.host, target.port);
        let client = redis::Client::open(info).map_err(|e| StoreError::InvalidUrl {
            url: format!("redis://{endpoint}{root}"),
            reason: e.to_string(),
        })?;
        let store = Self {
            inner: Arc::new(Inner {
                client,
                endpoint,
                keys: Keys::new(root),
                scripts: Scripts::new(),
                shared: tokio::sync::Mutex::new(None),
                seen: Mutex::new(Seen::default()),
            }),
        };
        spawn_reaper(Arc::downgrade(&store.inner));
        Ok(store)
    }

    /// Forgets the log before `revision` (capped at the current one), as
    /// `etcdctl compact` does: a watch may start at `revision`, not before.
    pub async fn compact(&self, revision: StoreRevision) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .call(&inner.scripts.compact, &[Arg::Int(revision)])
            .await
            .map(drop)
    }
}

/// Runs the reaper every [`REAP_INTERVAL`] while the store is alive.
fn spawn_reaper(inner: Weak<Inner>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        loop {
            tokio::time::sleep(REAP_INTERVAL).await;
            let Some(inner) = inner.upgrade() else { return };
            if let Err(e) = inner.call(&inner.scripts.reap, &[]).await {
                tracing::debug!(error = %e, "redis lease reaper");
            }
        }
    });
}

impl Inner {
    /// The shared connection, made if there is none.
    async fn connection(&self) -> Result<Conn, StoreError> {
        let mut shared = self.shared.lock().await;
        if let Some(conn) = shared.as_ref() {
            return Ok(conn.clone());
        }
        let conn = connect(&self.client, &self.endpoint, CALL_TIMEOUT).await?;
        *shared = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `script` with `args` on the shared connection, forgetting the connection
    /// when it failed in a way that may have broken it; answers the revision and the
    /// answer after the head.
    async fn call(
        &self,
        script: &Script,
        args: &[Arg<'_>],
    ) -> Result<(StoreRevision, VecDeque<Value>), StoreError> {
        let mut conn = self.connection().await?;
        match self.call_on(&mut conn, script, args).await {
            Err(e @ StoreError::Unavailable(_)) => {
                *self.shared.lock().await = None;
                Err(e)
            }
            other => other,
        }
    }

    /// Runs `script` on `conn`, telling it which data and server this handle knows and
    /// the revision above every one it handed out (so a script reaching data it does
    /// not know lifts the counter first), then records what the answer showed.
    async fn call_on(
        &self,
        conn: &mut Conn,
        script: &Script,
        args: &[Arg<'_>],
    ) -> Result<(StoreRevision, VecDeque<Value>), StoreError> {
        let (known_epoch, lift_to, other_server) = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            match &seen.generation {
                Some(known) => (
                    known.epoch.clone(),
                    seen.highest + 1,
                    known.run_id != conn.run_id,
                ),
                None => (String::new(), 0, false),
            }
        };
        let mut all = vec![
            Arg::Bytes(known_epoch.as_bytes()),
            Arg::Int(lift_to),
            Arg::Int(i64::from(other_server)),
        ];
        all.extend(args.iter().map(Arg::clone));
        let answer = self.invoke(&mut conn.conn, script, &all).await?;
        let mut items = array(answer)?;
        let generation = Generation {
            epoch: text(items.pop_front())?,
            run_id: conn.run_id.clone(),
        };
        let revision = int(items.pop_front())?;
        let lifted = int(items.pop_front())?;
        self.observe(generation, revision, lifted)?;
        Ok((revision, items))
    }

    /// Runs `script` with the fixed keys and leading arguments and `args` after them.
    async fn invoke(
        &self,
        conn: &mut MultiplexedConnection,
        script: &Script,
        args: &[Arg<'_>],
    ) -> Result<Value, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys.fixed {
            invocation.key(key);
        }
        invocation.arg(&self.keys.lease_set).arg(HISTORY);
        for arg in args {
            match arg {
                Arg::Bytes(b) => invocation.arg(*b),
                Arg::Int(i) => invocation.arg(*i),
            };
        }
        match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async::<Value>(conn)).await {
            Ok(result) => result.map_err(|e| map_error(&self.endpoint, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {} did not answer in time",
                self.endpoint
            ))),
        }
    }

    /// Records the generation and revision of an answer. A new generation (Redis
    /// emptied, restarted or failed over) was lifted by the script above every revision
    /// handed out before (`lifted`, the counter before the script's own change): the
    /// floor moves there, so watches from older revisions are refused as compacted.
    fn observe(
        &self,
        generation: Generation,
        revision: StoreRevision,
        lifted: StoreRevision,
    ) -> Result<(), StoreError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match &seen.generation {
            None => seen.generation = Some(generation),
            Some(known) if *known == generation => {}
            Some(_) => {
                if lifted <= seen.highest {
                    // A concurrent answer of the old generation handed out a revision
                    // after this call was prepared: the lift was not high enough.
                    // Staying on the old generation makes the next call lift again.
                    return Err(StoreError::Unavailable(
                        "the redis data changed; retrying".into(),
                    ));
                }
                tracing::warn!(
                    endpoint = %self.endpoint,
                    root = %self.keys.root,
                    epoch = %generation.epoch,
                    run_id = %generation.run_id,
                    revision = lifted,
                    "redis data or server changed; watches from earlier revisions relist"
                );
                seen.generation = Some(generation);
                seen.floor = seen.floor.max(lifted);
            }
        }
        seen.highest = seen.highest.max(revision);
        Ok(())
    }

    /// Records that a revision read from the log was handed out.
    fn note(&self, revision: StoreRevision) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.highest = seen.highest.max(revision);
    }

    /// Whether a watch may start at `start` given the answer of its first read: not
    /// from before this handle's floor, not beyond the counter, not before the log.
    fn check_start(
        &self,
        start: StoreRevision,
        revision: StoreRevision,
        compact: StoreRevision,
    ) -> Result<(), StoreError> {
        let floor = self.seen.lock().unwrap_or_else(|e| e.into_inner()).floor;
        if floor > 0 && start <= floor {
            return Err(StoreError::Compacted {
                compact_revision: compact.max(floor + 1),
            });
        }
        if start > revision + 1 {
            // Only a revision of lost data can be ahead of the counter.
            return Err(StoreError::Compacted {
                compact_revision: compact.max(revision + 1),
            });
        }
        if start < compact {
            return Err(StoreError::Compacted {
                compact_revision: compact,
            });
        }
        Ok(())
    }
}

/// A new connection to `client` and the `run_id` of the server it reached.
async fn connect(
    client: &redis::Client,
    endpoint: &str,
    response_timeout: Duration,
) -> Result<Conn, StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response_timeout);
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        Ok::<_, RedisError>((conn, info))
    };
    let (conn, info) = match tokio::time::timeout(CONNECT_TIMEOUT + CALL_TIMEOUT, attempt).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => return Err(map_error(endpoint, e)),
        Err(_) => {
            return Err(StoreError::Unavailable(format!(
                "redis at {endpoint} did not answer in time"
            )))
        }
    };
    let run_id = info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(str::trim)
        .ok_or_else(|| StoreError::Rejected(format!("redis at {endpoint} tells no run_id")))?;
    Ok(Conn {
        conn,
        run_id: run_id.into(),
    })
}

fn map_error(endpoint: &str, e: RedisError) -> StoreError {
    let transient = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
        );
    if transient {
        StoreError::Unavailable(format!("redis at {endpoint}: {e}"))
    } else {
        StoreError::Rejected(format!("redis at {endpoint}: {e}"))
    }
}

fn malformed(what: &str) -> StoreError {
    StoreError::Rejected(format!("unexpected answer from redis: {what}"))
}

fn array(value: Value) -> Result<VecDeque<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items.into()),
        other => Err(malformed(&format!("expected an array, got {other:?}"))),
    }
}

fn bytes(value: Option<Value>) -> Result<Vec<u8>, StoreError> {
    match value {
        Some(Value::BulkString(b)) => Ok(b),
        Some(Value::SimpleString(s)) => Ok(s.into_bytes()),
        other => Err(malformed(&format!("expected a string, got {other:?}"))),
    }
}

fn text(value: Option<Value>) -> Result<String, StoreError> {
    String::from_utf8(bytes(value)?).map_err(|_| malformed("a string is not UTF-8"))
}

fn int(value: Option<Value>) -> Result<i64, StoreError> {
    match value {
        Some(Value::Int(i)) => Ok(i),
        Some(Value::BulkString(b)) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("expected a number")),
        other => Err(malformed(&format!("expected a number, got {other:?}"))),
    }
}

/// A `{mod_revision}:{lease}:{value}` record of `key`.
fn parse_record(key: String, record: &[u8]) -> Result<KeyValue, StoreError> {
    let mut parts = record.splitn(3, |b| *b == b':');
    let mut number = || -> Result<i64, StoreError> {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| malformed("a record without its revision and lease"))
    };
    let mod_revision = number()?;
    let lease = number()?;
    let value = parts.next().unwrap_or_default().to_vec();
    Ok(KeyValue {
        key,
        value,
        mod_revision,
        lease: (lease != 0).then_some(LeaseId(lease)),
    })
}

/// One log entry (`[id, [field, value, …]]`) as its revision and events.
fn parse_entry(entry: Value) -> Result<(StoreRevision, Vec<WatchEvent>), StoreError> {
    let mut parts = array(entry)?;
    let id = text(parts.pop_front())?;
    let revision: StoreRevision = id
        .split_once('-')
        .and_then(|(rev, _)| rev.parse().ok())
        .ok_or_else(|| malformed("a log entry id"))?;
    let mut fields = array(parts.pop_front().unwrap_or(Value::Nil))?;
    let mut events = Vec::new();
    while let Some(name) = fields.pop_front() {
        let name = bytes(Some(name))?;
        let key = text(fields.pop_front())?;
        match name.as_slice() {
            b"p" => {
                let _ = fields.pop_front();
                let value = bytes(fields.pop_front())?;
                let _ = fields.pop_front();
                let lease = int(fields.pop_front())?;
                events.push(WatchEvent::Put(KeyValue {
                    key,
                    value,
                    mod_revision: revision,
                    lease: (lease != 0).then_some(LeaseId(lease)),
                }));
            }
            b"d" => events.push(WatchEvent::Delete {
                key,
                mod_revision: revision,
            }),
            _ => return Err(malformed("a log entry field")),
        }
    }
    Ok((revision, events))
}

/// The `ZRANGEBYLEX` bounds of the keys starting with `prefix`.
fn lex_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut min = b"[".to_vec();
    min.extend_from_slice(prefix.as_bytes());
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            let mut max = b"(".to_vec();
            max.extend(end);
            return (min, max);
        }
    }
    if prefix.is_empty() {
        return (b"-".to_vec(), b"+".to_vec());
    }
    (min, b"+".to_vec())
}

#[async_trait]
impl ConfigStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let inner = &self.inner;
        let (_, mut answer) = inner
            .call(&inner.scripts.get, &[Arg::Bytes(key.as_bytes())])
            .await?;
        match answer.pop_front() {
            None | Some(Value::Nil) => Ok(None),
            record => Ok(Some(parse_record(key.to_owned(), &bytes(record)?)?)),
        }
    }

    /// One script reads every key under the prefix and the revision, so the listing is
    /// one consistent snapshot (Redis runs nothing else meanwhile).
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let inner = &self.inner;
        let (min, max) = lex_range(prefix);
        let (revision, mut rest) = inner
            .call(&inner.scripts.list, &[Arg::Bytes(&min), Arg::Bytes(&max)])
            .await?;
        let mut kvs = Vec::with_capacity(rest.len() / 2);
        while let Some(key) = rest.pop_front() {
            let key = text(Some(key))?;
            let record = bytes(rest.pop_front())?;
            kvs.push(parse_record(key, &record)?);
        }
        Ok(Listing { revision, kvs })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        txn.check_size()?;
        let inner = &self.inner;
        let mut args: Vec<Arg<'_>> = vec![Arg::Int(txn.compares.len() as i64)];
        for compare in &txn.compares {
            match compare {
                Compare::Absent { key } => {
                    args.extend([
                        Arg::Bytes(b"a"),
                        Arg::Bytes(key.as_bytes()),
                        Arg::Bytes(b""),
                    ]);
                }
                Compare::ValueEquals { key, value } => {
                    args.extend([
                        Arg::Bytes(b"v"),
                        Arg::Bytes(key.as_bytes()),
                        Arg::Bytes(value),
                    ]);
                }
            }
        }
        for op in &txn.ops {
            match op {
                Op::Put { key, value, lease } => args.extend([
                    Arg::Bytes(b"p"),
                    Arg::Bytes(key.as_bytes()),
                    Arg::Bytes(value),
                    Arg::Int(lease.map_or(0, |l| l.0)),
                ]),
                Op::Delete { key } => args.extend([
                    Arg::Bytes(b"d"),
                    Arg::Bytes(key.as_bytes()),
                    Arg::Bytes(b""),
                    Arg::Int(0),
                ]),
            }
        }
        let (revision, mut rest) = inner.call(&inner.scripts.txn, &args).await?;
        match int(rest.pop_front())? {
            -1 => Err(StoreError::LeaseNotFound),
            status => Ok(TxnOutcome {
                succeeded: status == 1,
                revision,
            }),
        }
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: StoreRevision,
    ) -> Result<RawWatch, StoreError> {
        let inner = self.inner.clone();
        // Its own connection: XREAD BLOCK holds the connection it runs on.
        let mut conn = connect(&inner.client, &inner.endpoint, CALL_TIMEOUT + BLOCK).await?;
        let (revision, mut rest) = inner
            .call_on(
                &mut conn,
                &inner.scripts.read_log,
                &[Arg::Int(start_revision.max(0)), Arg::Int(READ_COUNT as i64)],
            )
            .await?;
        let compact = int(rest.pop_front())?;
        let from = int(rest.pop_front())?;
        if start_revision > 0 {
            inner.check_start(start_revision, revision, compact)?;
        }
        let epoch = inner
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
            .as_ref()
            .map(|g| g.epoch.clone())
            .unwrap_or_default();
        let mut reader = LogReader {
            inner,
            conn,
            epoch,
            prefix: prefix.to_owned(),
            next: from,
            pending: VecDeque::new(),
            more: false,
        };
        reader.take(rest.pop_front().unwrap_or(Value::Nil))?;
        Ok(futures::stream::unfold(Some(reader), LogReader::next).boxed())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        if ttl_secs <= 0 {
            return Err(StoreError::Rejected("lease ttl must be positive".into()));
        }
        let inner = &self.inner;
        let (_, mut answer) = inner
            .call(&inner.scripts.grant, &[Arg::Int(ttl_secs)])
            .await?;
        Ok(LeaseId(int(answer.pop_front())?))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let inner = &self.inner;
        let (_, mut answer) = inner
            .call(&inner.scripts.keep_alive, &[Arg::Int(lease.0)])
            .await?;
        match int(answer.pop_front())? {
            1 => Ok(()),
            _ => Err(StoreError::LeaseNotFound),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let inner = &self.inner;
        let (_, mut answer) = inner
            .call(&inner.scripts.revoke, &[Arg::Int(lease.0)])
            .await?;
        match int(answer.pop_front())? {
            1 => Ok(()),
            _ => Err(StoreError::LeaseNotFound),
        }
    }
}

/// A watch's position in the log, on its own connection.
struct LogReader {
    inner: Arc<Inner>,
    conn: Conn,
    /// The data epoch the watch started in; a read of another one ends it as compacted.
    epoch: String,
    prefix: String,
    /// The next revision to read.
    next: StoreRevision,
    /// Batches read and not yet yielded.
    pending: VecDeque<WatchBatch>,
    /// Whether the last read was full, so more may be waiting without blocking.
    more: bool,
}

impl LogReader {
    /// Takes the entries of one read into `pending`, filtered by prefix.
    fn take(&mut self, entries: Value) -> Result<(), StoreError> {
        let entries = array(entries)?;
        self.more = entries.len() >= READ_COUNT;
        for entry in entries {
            let (revision, events) = parse_entry(entry)?;
            self.next = revision + 1;
            // A consumer resumes from what it was given, so the handle must know it
            // handed it out (see `Inner::observe`).
            self.inner.note(revision);
            let events: Vec<WatchEvent> = events
                .into_iter()
                .filter(|e| e.key().starts_with(&self.prefix))
                .collect();
            if !events.is_empty() {
                self.pending.push_back(WatchBatch { revision, events });
            }
        }
        Ok(())
    }

    /// Reads the log from `next` by script: the same epoch, and the log still holds it.
    async fn read(&mut self) -> Result<(), StoreError> {
        let (_, mut items) = self
            .inner
            .call_on(
                &mut self.conn,
                &self.inner.scripts.read_log,
                &[Arg::Int(self.next), Arg::Int(READ_COUNT as i64)],
            )
            .await?;
        let compact = int(items.pop_front())?;
        let _from = items.pop_front();
        let epoch = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
            .as_ref()
            .map(|g| g.epoch.clone());
        if epoch.as_deref() != Some(self.epoch.as_str()) || self.next < compact {
            return Err(StoreError::Compacted {
                compact_revision: compact,
            });
        }
        self.take(items.pop_front().unwrap_or(Value::Nil))
    }

    /// Waits (one `XREAD BLOCK`) until the log has an entry from `next` on, or the
    /// block time passed.
    async fn wait(&mut self) -> Result<(), StoreError> {
        let after = format!("{}-0", self.next - 1);
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.inner.keys.log)
            .arg(after);
        let wait = command.query_async::<Value>(&mut self.conn.conn);
        match tokio::time::timeout(BLOCK + CALL_TIMEOUT, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(map_error(&self.inner.endpoint, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {} did not answer in time",
                self.inner.endpoint
            ))),
        }
    }

    /// The next batch; after an error it yields that error and ends, so a consumer never
    /// reads past a gap.
    async fn next(state: Option<Self>) -> Option<(Result<WatchBatch, StoreError>, Option<Self>)> {
        let mut reader = state?;
        loop {
            if let Some(batch) = reader.pending.pop_front() {
                return Some((Ok(batch), Some(reader)));
            }
            if !reader.more {
                if let Err(e) = reader.wait().await {
                    return Some((Err(e), None));
                }
            }
            if let Err(e) = reader.read().await {
                return Some((Err(e), None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_ranges() {
        let kv = parse_record("/a".into(), b"12:3:x:y").unwrap();
        assert_eq!(
            (kv.mod_revision, kv.lease, kv.value.as_slice()),
            (12, Some(LeaseId(3)), &b"x:y"[..])
        );
        assert_eq!(parse_record("/a".into(), b"5:0:").unwrap().lease, None);
        assert!(parse_record("/a".into(), b"5").is_err());
        assert_eq!(lex_range("/p/"), (b"[/p/".to_vec(), b"(/p0".to_vec()));
        assert_eq!(lex_range(""), (b"-".to_vec(), b"+".to_vec()));
    }

    #[test]
    fn debug_leaves_the_password_out() {
        let target = RedisTarget {
            host: "h".into(),
            port: 1,
            username: Some("u".into()),
            password: Some("hunter2".into()),
        };
        assert!(!format!("{target:?}").contains("hunter2"));
    }
}
