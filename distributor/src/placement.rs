//! Where a block belongs: the N storage servers nearest to it by XOR distance.

use invariant_spec::Id;

/// The `n` ids of `storages` nearest to `block` (XOR distance), nearest first.
pub fn nearest(block: &Id, storages: &[Id], n: usize) -> Vec<Id> {
    let mut chosen = storages.to_vec();
    if chosen.len() > n {
        // Everything before index `n` is then among the `n` nearest.
        chosen.select_nth_unstable_by_key(n, |s| block.distance(s));
        chosen.truncate(n);
    }
    block.sort_by_distance(&mut chosen);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    fn random_id(rng: &mut StdRng) -> Id {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Id::from_bytes(bytes)
    }

    #[test]
    fn nearest_matches_a_full_sort() {
        let mut rng = StdRng::seed_from_u64(11);
        for size in [0usize, 1, 2, 3, 4, 10, 40] {
            let storages: Vec<Id> = (0..size).map(|_| random_id(&mut rng)).collect();
            for _ in 0..20 {
                let block = random_id(&mut rng);
                let mut sorted = storages.clone();
                block.sort_by_distance(&mut sorted);
                for n in [0usize, 1, 3, 5] {
                    let want: Vec<Id> = sorted.iter().take(n).copied().collect();
                    assert_eq!(nearest(&block, &storages, n), want, "size {size} n {n}");
                }
            }
        }
    }
}
