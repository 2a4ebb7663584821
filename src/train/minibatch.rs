/*!
Bar-grouped minibatches: an epoch's partition of the batch's units into minibatches such that all
units sharing a group key (the trading observation's `(path, bar)`) land in the same minibatch.

The trading policy's encoder output depends only on `(path, bar)` (the policy is fixed within an
iteration's forward, and every scenario plays the same market paths), so a minibatch costs one
encoder pass per *distinct* key in it. A plain shuffle of a 128 x 2048 batch over ~5,700 bars puts
nearly every bar in every minibatch (4 minibatches of 65,536 units each visit almost all bars), so
each epoch encodes every bar 4 times; grouped, each bar is encoded once per epoch.

Why the update is still PPO: an epoch is a random partition of the batch, each unit in exactly one
minibatch, as with the shuffle. Every minibatch loss is a mean over its units of the same per-unit
loss, so the sum of the minibatch gradients over an epoch (weighted by size) is the full-batch
gradient in both cases; what changes is the law of the random partition: a minibatch is a random
set of bars with all their samples (cluster sampling) instead of a simple random sample of units.
Its gradient is still an estimate of the batch gradient (unbiased when the groups have equal sizes,
a ratio estimator with a small bias otherwise: the groups are drawn uniformly at random), with more
variance when samples at the same bar are correlated; the per-minibatch advantage normalisation is
computed over the same clustered sample. `docs/training.md` ("Bar-grouped minibatches") reports the
effect on the learning tests.
*/

use super::train_env::ResumableRng;

/// Split the units `0..keys.len()` into at most `m` minibatches of whole key groups: the groups
/// (in order of first appearance) are shuffled with `rng`, then laid end to end and cut at the
/// first group boundary at or after each `k * units / m`. Empty minibatches are dropped (fewer
/// groups than `m`). Every unit appears exactly once.
pub fn grouped(keys: &[u64], m: usize, rng: &mut ResumableRng) -> Vec<Vec<u32>> {
    let mut index = std::collections::HashMap::new();
    let mut groups: Vec<Vec<u32>> = Vec::new();
    for (u, k) in keys.iter().enumerate() {
        let g = *index.entry(*k).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(u as u32);
    }
    let mut order: Vec<u32> = (0..groups.len() as u32).collect();
    rng.shuffle(&mut order);
    let (units, m) = (keys.len(), m.max(1));
    let mut out: Vec<Vec<u32>> = Vec::with_capacity(m);
    let mut cur = Vec::with_capacity(units / m + 1);
    let (mut k, mut done) = (1, 0);
    for g in order {
        cur.extend_from_slice(&groups[g as usize]);
        done += groups[g as usize].len();
        if k < m && done * m >= k * units {
            out.push(std::mem::take(&mut cur));
            while k < m && done * m >= k * units {
                k += 1;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The number of distinct keys among `units` (what a minibatch costs in encoder passes).
pub fn distinct(keys: &[u64], units: &[u32]) -> usize {
    let mut k: Vec<u64> = units.iter().map(|&u| keys[u as usize]).collect();
    k.sort_unstable();
    k.dedup();
    k.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_is_a_partition_of_whole_groups() {
        let mut rng = ResumableRng::new(3);
        // 40 units over 7 keys of uneven sizes.
        let keys: Vec<u64> = (0..40u64).map(|u| (u * u + u / 3) % 7).collect();
        let mut distinct_keys = keys.clone();
        distinct_keys.sort_unstable();
        distinct_keys.dedup();
        assert_eq!(distinct_keys.len(), 7);
        for m in [1, 2, 4, 7, 9] {
            let mbs = grouped(&keys, m, &mut rng);
            assert!(mbs.len() <= m && !mbs.is_empty());
            let mut all: Vec<u32> = mbs.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..40).collect::<Vec<u32>>(), "m = {m}");
            // No key is split across minibatches.
            for k in 0..7 {
                let holders = mbs
                    .iter()
                    .filter(|mb| mb.iter().any(|&u| keys[u as usize] == k))
                    .count();
                assert!(
                    holders <= 1,
                    "key {k} split over {holders} minibatches (m = {m})"
                );
            }
            let total: usize = mbs.iter().map(|mb| distinct(&keys, mb)).sum();
            assert_eq!(total, 7);
        }
    }

    #[test]
    fn grouped_sizes_follow_the_targets_and_the_shuffle_varies() {
        let mut rng = ResumableRng::new(9);
        // 1000 units, 200 keys of 5 units each: 4 minibatches of exactly 250 units.
        let keys: Vec<u64> = (0..1000u64).map(|u| u % 200).collect();
        let a = grouped(&keys, 4, &mut rng);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![250; 4]);
        let b = grouped(&keys, 4, &mut rng);
        assert_ne!(a, b, "two epochs draw two partitions");
    }
}
