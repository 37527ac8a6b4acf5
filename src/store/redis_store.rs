//! The shared store: one Redis server (or a primary with replicas behind one address) for every
//! Portcullis process.
//!
//! Records live under `{prefix}{keyspace}:{key}`. Every write also publishes its keyspace and key
//! on `{prefix}changes`, in the same `MULTI` transaction, so the other processes hear of it and
//! reload that record; a process that loses the subscription marks the store unreachable, and once
//! subscribed again reloads everything (it may have missed changes). A compare-and-swap is a Lua
//! script, which Redis runs atomically: the one primitive the domain builds "accepted exactly once"
//! on. Writes are acknowledged by Redis; how durable they are is the server's `appendonly` /
//! `appendfsync` setting (the README asks for `appendonly yes`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, IntoConnectionInfo, Script};

use super::{Change, Shared, Space, Store, StoreError, StoreFuture, Write};
use crate::base::secret::Secret;

/// How long one command may take before the store counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the store is asked whether it is there, so a silent network is noticed.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// The wait between attempts to subscribe again.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

/// `KEYS[1]`: the record; `KEYS[2]`: the change channel. `ARGV[1]`: "1" if a value is expected
/// (then `ARGV[2]` is it); `ARGV[3]`: "1" to set `ARGV[4]`, else delete; `ARGV[5]`: the change
/// message (empty: none); `ARGV[6]`: milliseconds until the record expires (empty: it keeps the
/// expiry it had, if any). Returns 1 if it swapped.
const SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] ~= '1' then
  redis.call('DEL', KEYS[1])
elseif ARGV[6] ~= '' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[6])
else
  redis.call('SET', KEYS[1], ARGV[4], 'KEEPTTL')
end
if ARGV[5] ~= '' then
  redis.call('PUBLISH', KEYS[2], ARGV[5])
end
return 1
";

/// How to reach a Redis server shared by every replica.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host[:port][/db]` (loopback, or with `allow_plaintext`) or `rediss://…` (TLS).
    /// Never holds a password: that comes from `password`.
    pub url: String,
    /// From `password_file` (Redis `AUTH`; with a user name in the URL, an ACL user's password).
    pub password: Option<Secret>,
    /// Prepended to every key and to the change channel, so several installs can share a server.
    pub key_prefix: String,
    /// The CA certificates (PEM) to trust instead of the system's for `rediss://` (`ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    /// How long full sessions already in memory keep working while Redis cannot be reached;
    /// after that every request is refused until it is back (fail closed).
    pub offline_grace: Duration,
}

pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    channel: String,
    /// This process's id in change messages, so it does not reload its own writes.
    origin: String,
    swap: Script,
    shared: Arc<Shared>,
}

impl RedisStore {
    /// Connects, and starts following the other processes' changes. Fails if Redis cannot be
    /// reached now: a replica that starts without its sessions would refuse everyone.
    pub async fn open(settings: &RedisSettings) -> Result<Self, StoreError> {
        let client = client(settings)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client.clone(), config).await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot reach Redis at {}: {e}. Fix: start it, or check store.url, store.password_file and store.ca_file",
                settings.url
            ))
        })?;
        let shared = Arc::new(Shared::new(settings.offline_grace));
        let store = Self {
            connection,
            prefix: settings.key_prefix.clone(),
            channel: format!("{}changes", settings.key_prefix),
            origin: crate::base::secret::random_token(),
            swap: Script::new(SWAP),
            shared: shared.clone(),
        };
        let subscribed = follow_changes(client, store.channel.clone(), store.origin.clone(), shared.clone());
        tokio::time::timeout(RESPONSE_TIMEOUT * 2, subscribed.first)
            .await
            .map_err(|_| StoreError::Backend("could not subscribe to Redis's change channel in time".into()))?
            .map_err(|_| StoreError::Backend("could not subscribe to Redis's change channel".into()))?;
        tokio::spawn(check_health(store.connection.clone(), shared));
        Ok(store)
    }

    fn key(&self, space: Space, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + space.name().len() + 1 + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(space.name().as_bytes());
        full.push(b':');
        full.extend_from_slice(key);
        full
    }

    /// `origin:space:key`, what other processes read from the change channel.
    fn message(&self, space: Space, key: &[u8]) -> Vec<u8> {
        let mut message = format!("{}:{}:", self.origin, space.name()).into_bytes();
        message.extend_from_slice(key);
        message
    }

    fn failed(&self, e: redis::RedisError) -> StoreError {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            self.shared.mark_down();
        }
        StoreError::Backend(format!("Redis: {e}"))
    }
}

fn client(settings: &RedisSettings) -> Result<Client, StoreError> {
    let bad = |e: redis::RedisError| StoreError::Backend(format!("store.url: {e}"));
    let mut info = settings.url.as_str().into_connection_info().map_err(bad)?;
    if let Some(password) = &settings.password {
        let password = std::str::from_utf8(password.expose())
            .map_err(|_| StoreError::Backend("store.password_file does not hold text".into()))?;
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    match &settings.ca_pem {
        Some(pem) => {
            Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) })
                .map_err(bad)
        }
        None => Client::open(info).map_err(bad),
    }
}

/// The handle of the task that follows the change channel: `first` resolves once it is
/// subscribed for the first time.
struct Following {
    first: tokio::sync::oneshot::Receiver<()>,
}

fn follow_changes(client: Client, channel: String, origin: String, shared: Arc<Shared>) -> Following {
    let (first_tx, first) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first_tx = Some(first_tx);
        let own = format!("{origin}:");
        loop {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(RESPONSE_TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) => {
                    match first_tx.take() {
                        Some(tx) => {
                            let _ = tx.send(());
                        }
                        // Whatever was written while we were not listening must be read again.
                        None => shared.announce(Change::Resync),
                    }
                    shared.set_subscribed(true);
                    shared.mark_up();
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        if let Some(change) = parse_change(message.get_payload_bytes(), &own) {
                            shared.announce(change);
                        }
                    }
                    tracing::warn!(target: "portcullis::store", "lost the subscription to Redis's change channel; subscribing again");
                    shared.set_subscribed(false);
                    shared.mark_down();
                }
                Ok(Err(e)) => {
                    tracing::debug!(target: "portcullis::store", "cannot subscribe to Redis's change channel: {e}");
                    shared.mark_down();
                }
                Err(_) => shared.mark_down(),
            }
            tokio::time::sleep(RESUBSCRIBE_EVERY).await;
        }
    });
    Following { first }
}

/// A change message from another process (`None` for our own, or one that is not a change).
fn parse_change(payload: &[u8], own: &str) -> Option<Change> {
    if payload.starts_with(own.as_bytes()) {
        return None;
    }
    let after_origin = payload.iter().position(|b| *b == b':')? + 1;
    let rest = &payload[after_origin..];
    let after_space = rest.iter().position(|b| *b == b':')?;
    let space = Space::ALL.into_iter().find(|s| s.name().as_bytes() == &rest[..after_space])?;
    Some(Change::Record { space, key: rest[after_space + 1..].to_vec() })
}

/// Asks Redis every second whether it is there. A store found unreachable is marked up again
/// when it answers while the change subscription held, or when the subscription is back: never
/// while this process may be missing another's sign-out.
async fn check_health(mut connection: ConnectionManager, shared: Arc<Shared>) {
    let mut every = tokio::time::interval(HEALTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let answered: Result<String, _> =
            tokio::time::timeout(RESPONSE_TIMEOUT, redis::cmd("PING").query_async(&mut connection))
                .await
                .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))));
        match answered {
            Ok(_) => shared.answered(),
            Err(_) => shared.mark_down(),
        }
    }
}

impl Store for RedisStore {
    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for write in &writes {
                match write {
                    Write::Put { space, key, value } => {
                        pipe.set(self.key(*space, key), value.as_slice()).ignore();
                        pipe.publish(&self.channel, self.message(*space, key)).ignore();
                    }
                    Write::Delete { space, key } => {
                        pipe.del(self.key(*space, key)).ignore();
                        pipe.publish(&self.channel, self.message(*space, key)).ignore();
                    }
                }
            }
            let mut connection = self.connection.clone();
            pipe.query_async::<()>(&mut connection).await.map_err(|e| self.failed(e))
        })
    }

    fn scan(&self, space: Space) -> StoreFuture<'_, Vec<(Vec<u8>, Vec<u8>)>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let pattern = {
                let mut p = self.key(space, b"");
                p.push(b'*');
                p
            };
            let strip = pattern.len() - 1;
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| self.failed(e))?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            keys.sort();
            keys.dedup();
            let mut records = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(500) {
                let values: Vec<Option<Vec<u8>>> =
                    redis::cmd("MGET").arg(chunk).query_async(&mut connection).await.map_err(|e| self.failed(e))?;
                for (key, value) in chunk.iter().zip(values) {
                    // Deleted between SCAN and MGET: gone, so not loaded.
                    if let Some(value) = value {
                        records.push((key[strip..].to_vec(), value));
                    }
                }
            }
            Ok(records)
        })
    }

    fn get(&self, space: Space, key: &[u8]) -> StoreFuture<'_, Option<Vec<u8>>> {
        let full = self.key(space, key);
        Box::pin(async move {
            let mut connection = self.connection.clone();
            connection.get(full).await.map_err(|e| self.failed(e))
        })
    }

    fn swap(
        &self,
        space: Space,
        key: &[u8],
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        expires_in: Option<std::time::Duration>,
    ) -> StoreFuture<'_, bool> {
        let full = self.key(space, key);
        let message = if space.announced() { self.message(space, key) } else { Vec::new() };
        let expires_in = expires_in.map(|d| d.as_millis().max(1).to_string()).unwrap_or_default();
        Box::pin(async move {
            let mut invocation = self.swap.key(full);
            invocation
                .key(&self.channel)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(if new.is_some() { "1" } else { "0" })
                .arg(new.unwrap_or_default())
                .arg(message)
                .arg(expires_in);
            let mut connection = self.connection.clone();
            let swapped: i64 = invocation.invoke_async(&mut connection).await.map_err(|e| self.failed(e))?;
            Ok(swapped == 1)
        })
    }

    fn shared(&self) -> Option<&Shared> {
        Some(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_others_are_read_and_our_own_ignored() {
        assert_eq!(
            parse_change(b"abc:sessions:\x00:\xff", "xyz:"),
            Some(Change::Record { space: Space::Sessions, key: b"\x00:\xff".to_vec() })
        );
        assert_eq!(parse_change(b"xyz:accounts:alice", "xyz:"), None);
        assert_eq!(parse_change(b"abc:nothing:alice", "xyz:"), None);
        assert_eq!(parse_change(b"garbage", "xyz:"), None);
    }
}
