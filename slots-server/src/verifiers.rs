//! Cache of what updates are checked against: each slot's parsed signature
//! configuration, owner and base ([`Rules`]).
//!
//! A slot's registration changes only when a claim replaces it (`crate::store`), and
//! slots are never removed, so [`Rules`] built once (RSA key parsed, ed25519 key
//! decompressed) stay valid until then. The register handler replaces the entry of a
//! claimed slot; an update checked against stale rules is refused by the writer (its
//! base no longer matches) and the handler drops the entry and checks again. Updates of
//! cached slots thus need no database read before the writer; unsigned ones need no
//! blocking work at all. The cache is bounded: it is emptied when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use invariant_spec::Id;
use invariant_spec::slots::SlotVerifier;

/// Default number of slots whose verifiers are kept.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// What updates of one slot are checked against.
#[derive(Debug)]
pub struct Rules {
    /// Checks signatures under the slot's configuration.
    pub verifier: SlotVerifier,
    /// The subject that registered the slot in auth mode (`None`: unowned).
    pub owner: Option<String>,
    /// The sequence of the slot's registration state (see `crate::store`).
    pub base: u64,
}

/// Rules of recently used slots.
#[derive(Debug)]
pub struct Verifiers {
    capacity: usize,
    map: Mutex<HashMap<Id, Arc<Rules>>>,
}

impl Verifiers {
    /// A cache of at most `capacity` verifiers (at least 1).
    pub fn new(capacity: usize) -> Verifiers {
        Verifiers {
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Id, Arc<Rules>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached rules of slot `id`.
    pub fn get(&self, id: &Id) -> Option<Arc<Rules>> {
        self.lock().get(id).cloned()
    }

    /// Forgets the rules of slot `id` (they are read again when next needed).
    pub fn remove(&self, id: &Id) {
        self.lock().remove(id);
    }

    /// Remembers the rules of slot `id`.
    pub fn insert(&self, id: Id, verifier: Arc<Rules>) {
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&id) {
            map.clear();
        }
        map.insert(id, verifier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use invariant_spec::slots::SignatureConfig;

    #[test]
    fn the_cache_stays_bounded() {
        let cache = Verifiers::new(2);
        let verifier = |id| {
            Arc::new(Rules {
                verifier: SlotVerifier::new(id, &SignatureConfig::None).expect("none"),
                owner: None,
                base: 0,
            })
        };
        let (a, b, c) = (Id::random(), Id::random(), Id::random());
        cache.insert(a, verifier(a));
        cache.insert(b, verifier(b));
        assert!(cache.get(&a).is_some() && cache.get(&b).is_some());
        cache.insert(b, verifier(b));
        assert!(
            cache.get(&a).is_some(),
            "re-inserting a cached slot evicts nothing"
        );
        cache.insert(c, verifier(c));
        assert!(cache.get(&c).is_some());
        assert!(cache.get(&a).is_none() && cache.get(&b).is_none());
        cache.remove(&c);
        assert!(cache.get(&c).is_none());
    }
}
