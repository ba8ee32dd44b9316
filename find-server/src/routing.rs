//! The Kademlia routing table of find servers.
//!
//! Peers are kept in 256 k-buckets by XOR distance from this server's id: bucket `i`
//! holds ids whose distance has its highest set bit at position `i`
//! ([`Distance::bucket`](invariant_spec::Distance::bucket)). Each bucket holds at most
//! `k` ids, least recently seen first. As in Kademlia, a full bucket keeps its
//! long-lived members and refuses newcomers; members leave when they stop answering
//! (see `peers`), which makes room.

use invariant_spec::Id;

/// Kademlia's bucket size and the number of `CLOSER` answers given: 20.
pub const K: usize = 20;

/// What [`RoutingTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The id is new and was added.
    Added,
    /// The id was known; it is now the most recently seen of its bucket.
    Refreshed,
    /// The id's bucket is full; it was not added.
    BucketFull,
    /// The id is this server's own.
    Own,
}

/// Find servers by XOR distance from `own`.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: Id,
    k: usize,
    buckets: Vec<Vec<Id>>,
}

impl RoutingTable {
    /// An empty table around `own` with buckets of `k` (at least 1).
    pub fn new(own: Id, k: usize) -> RoutingTable {
        RoutingTable {
            own,
            k: k.max(1),
            buckets: vec![Vec::new(); 256],
        }
    }

    /// This server's id.
    pub fn own(&self) -> Id {
        self.own
    }

    fn bucket_of(&self, id: &Id) -> Option<usize> {
        self.own.distance(id).bucket()
    }

    /// Adds `id` or marks it most recently seen.
    pub fn insert(&mut self, id: Id) -> Inserted {
        let Some(index) = self.bucket_of(&id) else {
            return Inserted::Own;
        };
        let k = self.k;
        let Some(bucket) = self.buckets.get_mut(index) else {
            return Inserted::Own;
        };
        if let Some(at) = bucket.iter().position(|p| *p == id) {
            bucket.remove(at);
            bucket.push(id);
            Inserted::Refreshed
        } else if bucket.len() >= k {
            Inserted::BucketFull
        } else {
            bucket.push(id);
            Inserted::Added
        }
    }

    /// Removes `id`; true when it was present.
    pub fn remove(&mut self, id: &Id) -> bool {
        let Some(bucket) = self.bucket_of(id).and_then(|i| self.buckets.get_mut(i)) else {
            return false;
        };
        match bucket.iter().position(|p| p == id) {
            Some(at) => {
                bucket.remove(at);
                true
            }
            None => false,
        }
    }

    /// Whether `id` is in the table.
    pub fn contains(&self, id: &Id) -> bool {
        self.bucket_of(id)
            .and_then(|i| self.buckets.get(i))
            .is_some_and(|b| b.contains(id))
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every peer (in bucket order).
    pub fn ids(&self) -> Vec<Id> {
        self.buckets.iter().flatten().copied().collect()
    }

    /// The `count` peers nearest to `target`, nearest first.
    pub fn closest(&self, target: &Id, count: usize) -> Vec<Id> {
        let mut all = self.ids();
        target.sort_by_distance(&mut all);
        all.truncate(count);
        all
    }

    /// The `count` peers nearest to `target` among those strictly nearer to it than
    /// this server is, nearest first. Empty when this server is the nearest it knows.
    pub fn closer_than_self(&self, target: &Id, count: usize) -> Vec<Id> {
        let own = target.distance(&self.own);
        let mut all: Vec<Id> = self
            .buckets
            .iter()
            .flatten()
            .filter(|p| target.distance(p) < own)
            .copied()
            .collect();
        target.sort_by_distance(&mut all);
        all.truncate(count);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn id_with_first_byte(first: u8, rest: u8) -> Id {
        let mut bytes = [rest; 32];
        bytes[0] = first;
        Id::from_bytes(bytes)
    }

    #[test]
    fn own_id_is_never_added() {
        let own = Id::of_content(b"own");
        let mut table = RoutingTable::new(own, K);
        assert_eq!(table.insert(own), Inserted::Own);
        assert!(table.is_empty());
        assert!(!table.remove(&own));
    }

    #[test]
    fn buckets_follow_xor_distance_and_cap_at_k() {
        let own = Id::from_bytes([0; 32]);
        let mut table = RoutingTable::new(own, 2);
        // Highest bit set: bucket 255. Three candidates, room for two.
        let a = id_with_first_byte(0x80, 1);
        let b = id_with_first_byte(0x81, 2);
        let c = id_with_first_byte(0xff, 3);
        assert_eq!(table.insert(a), Inserted::Added);
        assert_eq!(table.insert(b), Inserted::Added);
        assert_eq!(table.insert(c), Inserted::BucketFull);
        assert!(!table.contains(&c));
        // Another bucket still has room.
        let d = id_with_first_byte(0x01, 4);
        assert_eq!(table.insert(d), Inserted::Added);
        assert_eq!(table.insert(a), Inserted::Refreshed);
        assert_eq!(table.len(), 3);
        // Removing makes room.
        assert!(table.remove(&b));
        assert!(!table.remove(&b));
        assert_eq!(table.insert(c), Inserted::Added);
        assert!(table.contains(&c));
    }

    #[test]
    fn closest_sorts_by_distance_to_the_target() {
        let mut rng = StdRng::seed_from_u64(7);
        let own = Id::from_bytes(rng.random());
        let mut table = RoutingTable::new(own, K);
        let mut peers = Vec::new();
        for _ in 0..200 {
            let id = Id::from_bytes(rng.random());
            if table.insert(id) == Inserted::Added {
                peers.push(id);
            }
        }
        let target = Id::from_bytes(rng.random());
        let closest = table.closest(&target, 10);
        let mut expected = peers.clone();
        target.sort_by_distance(&mut expected);
        assert_eq!(closest, expected[..10].to_vec());
    }

    #[test]
    fn closer_than_self_excludes_farther_peers() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..20 {
            let own = Id::from_bytes(rng.random());
            let mut table = RoutingTable::new(own, K);
            for _ in 0..100 {
                table.insert(Id::from_bytes(rng.random()));
            }
            let target = Id::from_bytes(rng.random());
            let own_distance = target.distance(&own);
            let closer = table.closer_than_self(&target, K);
            assert!(closer.len() <= K);
            assert!(closer.iter().all(|p| target.distance(p) < own_distance));
            let all_closer = table
                .ids()
                .into_iter()
                .filter(|p| target.distance(p) < own_distance)
                .count();
            assert_eq!(closer.len(), all_closer.min(K));
            assert!(
                closer
                    .windows(2)
                    .all(|w| target.distance(&w[0]) < target.distance(&w[1]))
            );
        }
        // A peer looked up by its own id is always closer than self.
        let own = Id::of_content(b"own");
        let peer = Id::of_content(b"peer");
        let mut table = RoutingTable::new(own, K);
        table.insert(peer);
        assert_eq!(table.closer_than_self(&peer, K), vec![peer]);
        assert!(table.closer_than_self(&own, K).is_empty());
    }
}
