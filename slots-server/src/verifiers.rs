//! Cache of parsed signature configurations.
//!
//! A slot's configuration never changes once registered and slots are never removed, so
//! a [`SlotVerifier`] built once (RSA key parsed, ed25519 key decompressed) stays valid.
//! Updates of cached slots need no database read before the writer; unsigned ones need
//! no blocking work at all. The cache is bounded: it is emptied when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use invariant_spec::Id;
use invariant_spec::slots::SlotVerifier;

/// Default number of slots whose verifiers are kept.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Parsed verifiers of recently used slots.
#[derive(Debug)]
pub struct Verifiers {
    capacity: usize,
    map: Mutex<HashMap<Id, Arc<SlotVerifier>>>,
}

impl Verifiers {
    /// A cache of at most `capacity` verifiers (at least 1).
    pub fn new(capacity: usize) -> Verifiers {
        Verifiers {
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Id, Arc<SlotVerifier>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached verifier of slot `id`.
    pub fn get(&self, id: &Id) -> Option<Arc<SlotVerifier>> {
        self.lock().get(id).cloned()
    }

    /// Remembers the verifier of slot `id`.
    pub fn insert(&self, id: Id, verifier: Arc<SlotVerifier>) {
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
        let verifier = |id| Arc::new(SlotVerifier::new(id, &SignatureConfig::None).expect("none"));
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
    }
}
