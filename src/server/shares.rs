//! Shares of `limits.max_connections`: how many places one client may hold.
//!
//! One address may hold at most `limits.max_connections_per_address` of the places, an IPv6 /64
//! counting as one address: whoever has one address in it has them all (RFC 4291 §2.5.4: the
//! interface identifier is the holder's to choose). But a /64 is cheap: an end site is given a
//! /48 (RFC 6177; a tunnel broker hands one out for free), 65,536 /64s, so the /64s of one /48
//! could fill the whole budget with connections that never give way (downloads they never read,
//! requests they never finish). So an IPv6 /48 holds a share too,
//! `limits.max_connections_per_ipv6_48`, by default twice an address's: a /48 shared by a
//! carrier's subscribers still has room, and one holder of a /48 has at most two addresses' worth.
//!
//! A share at its limit turns a newcomer toward its own: it may take the place of the idlest
//! connection of the address (or the /48) that is full, never of anyone else's
//! (`server::capacity`). `trusted_proxies` are exempt: every client behind a front proxy shares
//! its address, and it does its own limiting.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

/// A client address as limits count it: IPv4 whole, IPv6 by its /64, an IPv4-mapped IPv6 address
/// as the IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Address(IpAddr);

impl Address {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => Self(IpAddr::V6(prefix(u128::from(v6), 64).into())),
            v4 => Self(v4),
        }
    }

    /// The IPv6 /48 the address is in; `None` for IPv4.
    fn site(self) -> Option<Site> {
        match self.0 {
            IpAddr::V6(v6) => Some(Site(prefix(u128::from(v6), 48))),
            IpAddr::V4(_) => None,
        }
    }
}

fn prefix(bits: u128, length: u32) -> u128 {
    bits & !(u128::MAX >> length)
}

/// An IPv6 /48 (its first 48 bits; the rest zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Site(u128);

/// What holds a share: one address, or an IPv6 /48 (a distinct key: a /48's prefix and the first
/// /64 in it are the same number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Group {
    Address(Address),
    Site(Site),
}

/// A group's part of the budget.
#[derive(Default)]
struct Share {
    /// Places held (by its connections, and by tunnels they became).
    held: usize,
    /// Its open connections, so that making room among them looks at these, not at every
    /// connection. A set: closing a whole share of a list, each close searching it, was
    /// quadratic (3.4 s of CPU for 16,000 from one address, debug build).
    open: HashSet<u64>,
}

/// Every group's share. Touched when a connection opens or closes, never by a request.
pub(super) struct Shares {
    held: DashMap<Group, Share>,
    per_address: usize,
    per_site: usize,
    exempt: Vec<ipnet::IpNet>,
}

/// A place in an address's share and its /48's (for IPv6), each given back on drop. Neither for
/// an exempt address.
pub(super) struct Claim {
    address: Option<Address>,
    site: Option<Site>,
    shares: Arc<Shares>,
}

impl Claim {
    /// The address counted, if any.
    pub fn address(&self) -> Option<Address> {
        self.address
    }

    /// Takes over the /48 place of `theirs`, a claim in the same /48 (a newcomer given the place
    /// of a neighbour in its full /48: its own address, and the /48's place the neighbour held).
    pub fn take_site_of(&mut self, theirs: &mut Claim) {
        debug_assert_eq!(self.address.and_then(Address::site), theirs.site);
        if self.site.is_none() {
            self.site = theirs.site.take();
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            self.shares.give_back(Group::Address(address));
        }
        if let Some(site) = self.site {
            self.shares.give_back(Group::Site(site));
        }
    }
}

impl Shares {
    pub fn new(per_address: usize, per_site: usize, exempt: Vec<ipnet::IpNet>) -> Arc<Self> {
        Arc::new(Self { held: DashMap::new(), per_address, per_site, exempt })
    }

    /// A place in `peer`'s shares, or the group whose share is used up (its address's first).
    pub fn claim(self: &Arc<Self>, peer: IpAddr) -> Result<Claim, Group> {
        let mut claim = self.claim_address(peer)?;
        if let Some(site) = claim.address.and_then(Address::site) {
            // The address's place goes back with `claim` if the /48 has none.
            self.take(Group::Site(site), self.per_site).ok_or(Group::Site(site))?;
            claim.site = Some(site);
        }
        Ok(claim)
    }

    /// A place in `peer`'s address share only, for a newcomer about to take over a place its
    /// /48 holds already (`Claim::take_site_of`).
    pub fn claim_address(self: &Arc<Self>, peer: IpAddr) -> Result<Claim, Group> {
        if self.exempt.iter().any(|net| net.contains(&peer.to_canonical())) {
            return Ok(Claim { address: None, site: None, shares: self.clone() });
        }
        let address = Address::of(peer);
        self.take(Group::Address(address), self.per_address).ok_or(Group::Address(address))?;
        Ok(Claim { address: Some(address), site: None, shares: self.clone() })
    }

    /// One place of `group`'s share, if it has one left. Each entry is let go before the next is
    /// taken: two entries of one shard held at once would deadlock.
    fn take(&self, group: Group, limit: usize) -> Option<()> {
        let mut share = self.held.entry(group).or_default();
        (share.held < limit).then(|| share.held += 1)
    }

    fn give_back(&self, group: Group) {
        if let Some(mut share) = self.held.get_mut(&group) {
            share.held = share.held.saturating_sub(1);
        }
        self.forget_if_unused(group);
    }

    fn forget_if_unused(&self, group: Group) {
        self.held.remove_if(&group, |_, share| share.held == 0 && share.open.is_empty());
    }

    /// The groups a connection from `address` is counted in.
    fn groups(address: Address) -> impl Iterator<Item = Group> {
        std::iter::once(Group::Address(address)).chain(address.site().map(Group::Site))
    }

    /// Connection `id`, from `address`, is open: it may be asked to make room for its groups.
    pub fn opened(&self, id: u64, address: Address) {
        for group in Self::groups(address) {
            if let Some(mut share) = self.held.get_mut(&group) {
                share.open.insert(id);
            }
        }
    }

    /// Connection `id`, from `address`, has ended.
    pub fn closed(&self, id: u64, address: Address) {
        for group in Self::groups(address) {
            if let Some(mut share) = self.held.get_mut(&group) {
                share.open.remove(&id);
            }
            self.forget_if_unused(group);
        }
    }

    /// The open connections of `group`.
    pub fn open_in(&self, group: Group) -> Vec<u64> {
        self.held.get(&group).map(|share| share.open.iter().copied().collect()).unwrap_or_default()
    }

    /// Places `group` holds (for tests).
    #[cfg(test)]
    pub fn held_by(&self, group: Group) -> Option<usize> {
        self.held.get(&group).map(|share| share.held)
    }

    /// Places the address of a claim holds (its own included); `None` for an exempt one.
    pub fn held_by_claimant(&self, claim: &Claim) -> Option<usize> {
        let address = claim.address?;
        Some(self.held.get(&Group::Address(address)).map_or(0, |share| share.held))
    }

    /// The addresses holding at least `least` places: how many each holds, and its open
    /// connections (`server::crowd`).
    pub fn holding_at_least(&self, least: usize) -> Vec<(usize, Vec<u64>)> {
        self.held
            .iter()
            .filter(|share| matches!(share.key(), Group::Address(_)) && share.held >= least)
            .map(|share| (share.held, share.open.iter().copied().collect()))
            .collect()
    }
}

impl Group {
    /// The address group of `ip` (for tests).
    #[cfg(test)]
    pub fn address_of(ip: IpAddr) -> Self {
        Self::Address(Address::of(ip))
    }

    /// The /48 group of an IPv6 `ip` (for tests).
    #[cfg(test)]
    pub fn site_of(ip: IpAddr) -> Self {
        Self::Site(Address::of(ip).site().expect("an IPv6 address"))
    }
}
