//! Host names in the trust sets: trunk peers named by DNS in the PBX's
//! configuration, and host names assigned to zones. Each set has its own
//! [`Tracker`], because an address shared by two names must stay while either
//! resolves to it, and that is only known within one set.

use crate::resolve::{refresh_due, Delta, HostKey, Resolver, ResolverConfig, Tracker};
use palisade_model::{DynSet, Policy, Zone};
use std::collections::BTreeMap;
use std::time::Instant;

pub struct NameSets {
    resolver: Resolver,
    config: ResolverConfig,
    trackers: BTreeMap<DynSet, Tracker>,
}

/// The names each dynamic set must follow under `policy`.
pub fn wanted_keys(policy: &Policy) -> BTreeMap<DynSet, Vec<HostKey>> {
    let mut keys: BTreeMap<DynSet, Vec<HostKey>> = BTreeMap::new();
    keys.insert(
        DynSet::Trunk,
        policy
            .peers()
            .filter_map(|p| HostKey::from_peer(&p.target))
            .collect(),
    );
    for zone in Zone::ALL {
        // A zone's host is a plain A/AAAA name, not a SIP service: a port
        // (any) turns the RFC 3263 SRV step off.
        let names = policy
            .hosts(zone)
            .map(|h| HostKey::new(&h.value, Some(0), None))
            .collect();
        keys.insert(DynSet::Resolved(zone), names);
    }
    keys
}

impl NameSets {
    pub fn new(config: &ResolverConfig) -> Result<NameSets, crate::resolve::ResolveError> {
        Ok(NameSets {
            resolver: Resolver::new(config)?,
            config: config.clone(),
            trackers: BTreeMap::new(),
        })
    }

    /// Follows the names of `policy`; names no longer wanted are untracked and
    /// their addresses removed.
    pub fn set_policy(&mut self, policy: &Policy, now: Instant) -> Vec<(DynSet, Delta)> {
        wanted_keys(policy)
            .into_iter()
            .map(|(set, keys)| {
                let tracker = self
                    .trackers
                    .entry(set)
                    .or_insert_with(|| Tracker::new(&self.config));
                (set, tracker.set_keys(keys, now))
            })
            .collect()
    }

    /// Looks up what is due in every set.
    pub async fn refresh(&mut self, now: Instant) -> Vec<(DynSet, Delta)> {
        let mut out = Vec::new();
        for (set, tracker) in &mut self.trackers {
            out.push((*set, refresh_due(tracker, &self.resolver, now).await));
        }
        out
    }

    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.trackers.values().filter_map(|t| t.next_due(now)).min()
    }

    /// Every live element, to refill sets after the table was recreated.
    pub fn refill(&self, now: Instant) -> Vec<(DynSet, Delta)> {
        self.trackers
            .iter()
            .map(|(set, t)| {
                (
                    *set,
                    Delta {
                        add: t.elements(now),
                        ..Delta::default()
                    },
                )
            })
            .collect()
    }
}
