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

/// The memory bound of one backward pass of the update
/// ([`PpoConfig::update_chunk_windows`](super::PpoConfig::update_chunk_windows),
/// [`PpoConfig::update_chunk_rows`](super::PpoConfig::update_chunk_rows)); 0 = no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkBound {
    /// The most encoder windows (distinct keys x rows per unit) a chunk holds.
    pub windows: usize,
    /// The most rows (units x rows per unit) a chunk holds.
    pub rows: usize,
}

/// Split one minibatch's `units` (in their order) into consecutive chunks within `bound`, for one
/// backward pass per chunk with the gradients summed
/// ([`PpoConfig::update_chunk_windows`](super::PpoConfig::update_chunk_windows)).
/// A unit is `rows_per_unit` rows (the trading env's symbols), and each key a policy encodes
/// costs `rows_per_unit` windows (one per symbol).
///
/// Chunks are cut only between runs of equal consecutive `keys` (a bar-grouped minibatch lays
/// each key's units end to end), so every key's encoder pass happens in one chunk and the
/// minibatch still costs one encoder pass per distinct key; runs are packed greedily, a run
/// counting as one key (a key that comes back later in a shuffled minibatch counts again: the
/// bound is conservative). A single run over the row bound is cut into pieces within it (its
/// encoder pass then repeats: correct, slower). `keys = None` (no group keys) makes every unit
/// its own run. The chunks concatenated are `units`; a minibatch within the bound is one chunk.
pub fn chunks(
    units: &[u32],
    keys: Option<&[u64]>,
    rows_per_unit: usize,
    bound: ChunkBound,
) -> Vec<Vec<u32>> {
    let g = rows_per_unit.max(1);
    // The most keys and units a chunk may hold (at least one each, whatever the bound).
    let cap = |b: usize| if b == 0 { usize::MAX } else { (b / g).max(1) };
    let (max_keys, max_units) = (cap(bound.windows), cap(bound.rows));
    let key = |u: u32| keys.map(|k| k[u as usize]);
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    let mut cur_keys = 0;
    let mut i = 0;
    while i < units.len() {
        // The run of equal keys starting at i.
        let mut j = i + 1;
        if keys.is_some() {
            while j < units.len() && key(units[j]) == key(units[i]) {
                j += 1;
            }
        }
        let run = &units[i..j];
        i = j;
        if !cur.is_empty() && (cur_keys + 1 > max_keys || cur.len() + run.len() > max_units) {
            out.push(std::mem::take(&mut cur));
            cur_keys = 0;
        }
        // A run alone over the row bound: whole pieces, the rest starts the next chunk.
        let mut rest = run;
        while rest.len() > max_units {
            out.push(rest[..max_units].to_vec());
            rest = &rest[max_units..];
        }
        cur.extend_from_slice(rest);
        cur_keys += 1;
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
    fn chunks_cut_between_key_runs_within_the_bound() {
        // 12 units, runs of keys 5,5,5 | 1,1 | 9 | 2,2,2,2 | 3,3 (units in a shuffled order).
        let units: Vec<u32> = vec![4, 0, 7, 11, 2, 9, 1, 3, 10, 5, 8, 6];
        let mut keys = vec![0u64; 12];
        for (pos, &u) in units.iter().enumerate() {
            keys[u as usize] = [5, 5, 5, 1, 1, 9, 2, 2, 2, 2, 3, 3][pos];
        }
        let holders = |c: &[Vec<u32>], k: u64| {
            c.iter()
                .filter(|ch| ch.iter().any(|&u| keys[u as usize] == k))
                .count()
        };
        let b = |windows, rows| ChunkBound { windows, rows };
        // 3 rows per unit; at most 15 rows (5 units) per chunk.
        let c = chunks(&units, Some(&keys), 3, b(0, 15));
        assert_eq!(
            c.concat(),
            units,
            "the chunks are the minibatch in its order"
        );
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 5, 2]);
        for k in [5u64, 1, 9, 2, 3] {
            assert_eq!(holders(&c, k), 1, "key {k} split: {c:?}");
        }
        // At most 6 windows (2 keys) per chunk.
        let c = chunks(&units, Some(&keys), 3, b(6, 0));
        assert_eq!(c.concat(), units);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 5, 2]);
        let c = chunks(&units, Some(&keys), 3, b(3, 0));
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 2, 1, 4, 2]
        );
        // Both bounds: the tighter one cuts.
        let c = chunks(&units, Some(&keys), 3, b(9, 12));
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 4, 2]);
        // A run over the row bound (2 units) is cut into whole pieces.
        let c = chunks(&units, Some(&keys), 3, b(0, 6));
        assert_eq!(c.concat(), units);
        assert!(c.iter().all(|ch| ch.len() <= 2), "{c:?}");
        assert_eq!(c.len(), 7, "{c:?}");
        // No keys: every unit its own run.
        let c = chunks(&units, None, 3, b(6, 0));
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![2; 6]);
        // No bound, or one the minibatch fits in: one chunk.
        assert_eq!(chunks(&units, Some(&keys), 3, b(0, 0)), vec![units.clone()]);
        assert_eq!(
            chunks(&units, Some(&keys), 3, b(15, 36)),
            vec![units.clone()]
        );
        // A bound below one unit still makes progress: one unit per chunk.
        assert_eq!(chunks(&units, None, 3, b(0, 2)).len(), 12);
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
