//! Sign-ins in progress before there is a session, kept server side per browser: passkey
//! ceremonies (`webauthn.passwordless`, by the browser's login-form token) and OpenID Connect
//! round trips (`[[login.oidc]]`, by a nonce in the browser's cookie). One per browser, replaced
//! by a newer one, taken (used at most once) by the request that finishes it.
//!
//! Anyone can start one, so what is kept is bounded twice over: each client (an
//! address, an IPv6 /64) keeps at most [`PER_CLIENT`] ceremonies, its oldest giving way to its
//! newest, and all clients together at most [`MAX_OUTSTANDING`], the oldest overall giving way.
//! A client loading the page in a loop only churns its own share: it cannot push everyone else's
//! passkey sign-in out (it would need hundreds of networks for that), and memory stays bounded.
//! Only the login page (never the hot path) takes this lock.
//!
//! With a store replicas share, sign-ins in progress are flows there instead ([`Flows`]: sealed,
//! expiring, taken once), so the provider's callback or the passkey's answer may reach any
//! replica. The per-client bound holds there too (each client's list of slots is a flow of its
//! own); the overall bound is the store's memory, each entry expiring after [`KEPT_FOR`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use sha2::Digest;

use crate::base::clock::UnixTime;
use crate::domain::factors::passwordless::PasskeyCeremony;
use crate::domain::flows::Flows;
use crate::domain::oidc::OidcPending;
use crate::domain::regulation::Subject;

/// Something kept until it runs out.
pub trait Expiring {
    fn is_live(&self, now: UnixTime) -> bool;
}

impl Expiring for PasskeyCeremony {
    fn is_live(&self, now: UnixTime) -> bool {
        PasskeyCeremony::is_live(self, now)
    }
}

impl Expiring for OidcPending {
    fn is_live(&self, now: UnixTime) -> bool {
        OidcPending::is_live(self, now)
    }
}

/// Passkey ceremonies, by login-form token.
pub type PasskeyLogins = PerBrowser<PasskeyCeremony>;
/// OpenID Connect sign-ins in progress, by the browser's nonce.
pub type OidcLogins = PerBrowser<OidcPending>;

/// More outstanding passkey sign-ins than an install sees in five minutes (each is a few hundred
/// bytes).
pub const MAX_OUTSTANDING: usize = 10_000;
/// Per client: an office behind one address loading the login page within five minutes.
pub const PER_CLIENT: usize = 64;

/// How long a sign-in in progress is kept in a shared store (each kind also checks its own,
/// shorter, lifetime when it is taken).
pub const KEPT_FOR: Duration = Duration::from_secs(15 * 60);

type Slot = [u8; 32];

pub struct PerBrowser<T> {
    kept: Mutex<Kept<T>>,
    /// Set when replicas share a store: then nothing is kept in `kept`.
    shared: Option<Arc<Flows>>,
}

impl<T> Default for PerBrowser<T> {
    fn default() -> Self {
        let kept = Kept { ceremonies: HashMap::new(), order: VecDeque::new(), by_client: HashMap::new() };
        Self { kept: Mutex::new(kept), shared: None }
    }
}

impl<T> PerBrowser<T> {
    /// Kept in `flows` if it is the shared store's, else in memory.
    pub fn new(flows: Option<Flows>) -> Self {
        Self { shared: flows.map(Arc::new), ..Self::default() }
    }
}

fn hex(slot: &Slot) -> String {
    crate::base::text::hex(slot)
}

struct Kept<T> {
    ceremonies: HashMap<Slot, (T, String)>,
    /// Slots in the order they were filled (some may have been taken since).
    order: VecDeque<Slot>,
    by_client: HashMap<String, VecDeque<Slot>>,
}

/// The map's key for a login-form token: its digest, so the tokens themselves are not kept.
fn slot(token: &str) -> Slot {
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl<T> Kept<T> {
    fn remove(&mut self, slot: &Slot) -> Option<T> {
        let (ceremony, client) = self.ceremonies.remove(slot)?;
        if let Some(queue) = self.by_client.get_mut(&client) {
            queue.retain(|s| s != slot);
            if queue.is_empty() {
                self.by_client.remove(&client);
            }
        }
        Some(ceremony)
    }

    /// Drops the oldest ceremony still kept.
    fn drop_oldest(&mut self) {
        while let Some(oldest) = self.order.pop_front() {
            if self.remove(&oldest).is_some() {
                return;
            }
        }
    }
}

impl<T: Expiring + Serialize + DeserializeOwned + Send + 'static> PerBrowser<T> {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept<T>> {
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `ceremony` for the browser holding `token`, asked for from `client`. In a shared
    /// store it is written in the background (the page that starts a sign-in does not wait for
    /// it; the browser comes back seconds later, after the person acted). Should that write fail
    /// (logged), the sign-in finds nothing and says it expired: it is started again.
    pub fn put(&self, token: &str, client: IpAddr, ceremony: T) {
        if let Some(flows) = &self.shared {
            let (flows, slot, client) = (flows.clone(), slot(token), Subject::address(client).store_key());
            let Ok(bytes) = serde_json::to_vec(&ceremony) else { return };
            tokio::spawn(async move {
                if let Err(e) = put_shared(&flows, slot, &client, bytes).await {
                    tracing::error!(target: "portcullis::store", "a sign-in in progress could not be kept: {e}");
                }
            });
            return;
        }
        self.keep_in_memory(token, client, ceremony);
    }

    /// As [`Self::put`], but returns once the ceremony is kept where every replica finds it, or
    /// says why it could not be. For a browser that may be back within milliseconds: a provider
    /// that already knows the person redirects straight back, maybe to another replica.
    pub async fn keep(&self, token: &str, client: IpAddr, ceremony: T) -> Result<(), crate::store::StoreError> {
        if let Some(flows) = &self.shared {
            let bytes = crate::store::encode(&ceremony)?;
            return put_shared(flows, slot(token), &Subject::address(client).store_key(), bytes).await;
        }
        self.keep_in_memory(token, client, ceremony);
        Ok(())
    }

    fn keep_in_memory(&self, token: &str, client: IpAddr, ceremony: T) {
        let (slot, client) = (slot(token), Subject::address(client).store_key());
        let mut kept = self.kept();
        kept.remove(&slot);
        if kept.by_client.get(&client).is_some_and(|queue| queue.len() >= PER_CLIENT)
            && let Some(oldest) = kept.by_client.get_mut(&client).and_then(VecDeque::pop_front)
        {
            kept.remove(&oldest);
        }
        if kept.ceremonies.len() >= MAX_OUTSTANDING {
            kept.drop_oldest();
        }
        // Taken slots linger in `order` until they come up; a bound keeps a busy page from
        // growing it without end.
        if kept.order.len() >= 4 * MAX_OUTSTANDING {
            let live: VecDeque<Slot> =
                kept.order.iter().filter(|s| kept.ceremonies.contains_key(*s)).copied().collect();
            kept.order = live;
        }
        kept.order.push_back(slot);
        kept.by_client.entry(client.clone()).or_default().push_back(slot);
        kept.ceremonies.insert(slot, (ceremony, client));
    }

    /// Takes the ceremony of the browser holding `token`, if it has one: once, on any replica.
    pub async fn take(&self, token: &str) -> Option<T> {
        let Some(flows) = &self.shared else { return self.kept().remove(&slot(token)) };
        let key = format!("sign-in:{}", hex(&slot(token)));
        match flows.update(&key, KEPT_FOR, |current| (None, current.map(<[u8]>::to_vec))).await {
            Ok(taken) => taken.and_then(|bytes| serde_json::from_slice(&bytes).ok()),
            Err(e) => {
                tracing::error!(target: "portcullis::store", "a sign-in in progress could not be read: {e}");
                None
            }
        }
    }

    /// Drops ceremonies that ran out (called with the other periodic sweeps; a shared store
    /// drops its own).
    pub fn sweep(&self, now: UnixTime) {
        let mut kept = self.kept();
        let stale: Vec<Slot> =
            kept.ceremonies.iter().filter(|(_, (ceremony, _))| !ceremony.is_live(now)).map(|(slot, _)| *slot).collect();
        for slot in stale {
            kept.remove(&slot);
        }
        let live: VecDeque<Slot> = kept.order.iter().filter(|s| kept.ceremonies.contains_key(*s)).copied().collect();
        kept.order = live;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept().ceremonies.len()
    }
}

/// Keeps `ceremony` under `slot` in a shared store, and the slot in its client's list; the
/// client's oldest gives way beyond [`PER_CLIENT`].
async fn put_shared(
    flows: &Flows,
    slot: Slot,
    client: &str,
    ceremony: Vec<u8>,
) -> Result<(), crate::store::StoreError> {
    let evicted = flows
        .update(&format!("sign-in-client:{client}"), KEPT_FOR, |current| {
            let mut slots: VecDeque<String> = current.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            slots.retain(|s| *s != hex(&slot));
            slots.push_back(hex(&slot));
            let evicted = if slots.len() > PER_CLIENT { slots.pop_front() } else { None };
            (serde_json::to_vec(&slots).ok(), evicted)
        })
        .await?;
    if let Some(oldest) = evicted {
        flows.end(&format!("sign-in:{oldest}")).await?;
    }
    flows.update(&format!("sign-in:{}", hex(&slot)), KEPT_FOR, |_| (Some(ceremony.clone()), ())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceremony() -> PasskeyCeremony {
        let text = "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"/tmp/x\"\n";
        let config = crate::config::parse(text, std::path::Path::new("/tmp/proxy.toml")).unwrap();
        let rp = crate::domain::factors::security_key::relying_party(&config.public_url, "Test").unwrap();
        crate::domain::factors::passwordless::start_passkey_sign_in(&rp, 1_800_000_000).unwrap().1
    }

    #[tokio::test]
    async fn one_client_churns_its_own_share_and_cannot_push_out_anyone_else() {
        let logins: PasskeyLogins = PerBrowser::default();
        let office: IpAddr = "192.0.2.7".parse().unwrap();
        logins.put("alice's browser", office, ceremony());
        let flooder: IpAddr = "2001:db8::1".parse().unwrap();
        for i in 0..(PER_CLIENT * 3) {
            // A new /64 host each time: still one client.
            let host: IpAddr = format!("2001:db8::{:x}", i + 2).parse().unwrap();
            logins.put(&format!("flood {i}"), if i % 2 == 0 { flooder } else { host }, ceremony());
        }
        assert_eq!(logins.len(), PER_CLIENT + 1, "the flood keeps its own share only");
        assert!(logins.take("alice's browser").await.is_some(), "the office's ceremony survived the flood");
        assert!(logins.take("alice's browser").await.is_none(), "taken once");
        assert!(logins.take("flood 0").await.is_none(), "the flood's oldest gave way");
        assert!(logins.take(&format!("flood {}", PER_CLIENT * 3 - 1)).await.is_some());
    }

    #[tokio::test]
    async fn all_clients_together_are_bounded_and_a_new_page_replaces_the_old() {
        let logins: PasskeyLogins = PerBrowser::default();
        for i in 0..(MAX_OUTSTANDING + 10) {
            let client: IpAddr = format!("10.{}.{}.1", i / 256, i % 256).parse().unwrap();
            logins.put(&format!("browser {i}"), client, ceremony());
        }
        assert_eq!(logins.len(), MAX_OUTSTANDING);
        assert!(logins.take("browser 0").await.is_none(), "the oldest gave way");
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        logins.put("same", client, ceremony());
        logins.put("same", client, ceremony());
        assert!(logins.take("same").await.is_some() && logins.take("same").await.is_none(), "one per browser");
    }

    /// With a shared store: taken once, whichever replica asks, and one client still keeps only
    /// its own share.
    #[tokio::test]
    async fn in_a_shared_store_a_sign_in_is_taken_once_and_a_client_keeps_its_share() {
        let store: std::sync::Arc<dyn crate::store::Store> =
            std::sync::Arc::new(crate::store::memory::MemoryStore::shared());
        let sealer = crate::domain::factors::sealing::Sealer::new(&crate::base::secret::Secret::new(b"k".repeat(64)));
        let (a, b): (PasskeyLogins, PasskeyLogins) = (
            PerBrowser::new(Some(Flows::for_store(&store, &sealer))),
            PerBrowser::new(Some(Flows::for_store(&store, &sealer))),
        );
        let flows = a.shared.clone().unwrap();
        let bytes = || serde_json::to_vec(&ceremony()).unwrap();
        put_shared(&flows, slot("alice's browser"), "address:192.0.2.7", bytes()).await.unwrap();
        for i in 0..(PER_CLIENT + 5) {
            put_shared(&flows, slot(&format!("flood {i}")), "address:2001:db8::/64", bytes()).await.unwrap();
        }
        assert!(b.take("alice's browser").await.is_some(), "put by A, taken by B");
        assert!(a.take("alice's browser").await.is_none(), "once");
        assert!(b.take("flood 0").await.is_none(), "the flood's oldest gave way");
        assert!(a.take(&format!("flood {}", PER_CLIENT + 4)).await.is_some());

        // `keep` returns once the other replica can take it, with no background write to wait for.
        let office: IpAddr = "192.0.2.7".parse().unwrap();
        a.keep("bob's browser", office, ceremony()).await.unwrap();
        assert!(b.take("bob's browser").await.is_some(), "kept by A, at once on B");
        // Without a shared store, kept in memory like `put`.
        let alone: PasskeyLogins = PerBrowser::default();
        alone.keep("carol's browser", office, ceremony()).await.unwrap();
        assert!(alone.take("carol's browser").await.is_some());
    }
}
