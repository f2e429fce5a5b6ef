//! Bounded key table: `shards` mutex-protected shards, each an exact LRU (index-linked list over
//! a `Vec`, plus a `HashMap` from key hash to slot). When a shard is full, inserting a new key
//! evicts that shard's **least-recently-used** key (counted). Eviction forgets that key's state,
//! so its next request starts with a full burst: the table fails open for evicted keys, never
//! closed. Keys whose bucket has refilled carry no state (a full bucket equals an absent key),
//! so in steady state LRU evicts only such idle keys. Capacity is fixed at construction: at most
//! `max_keys` entries in total (per shard `max_keys / shards`, at least one).
//!
//! The critical section is a hash lookup and a few index updates (no allocation once a shard's
//! `Vec`/`HashMap` have grown to capacity); sharding (up to 16 by hash) keeps contention low.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

/// The keys are already SipHash outputs: hash them to themselves.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const NIL: u32 = u32::MAX;

struct Node {
    key: u64,
    tat: u64,
    prev: u32,
    next: u32,
}

struct Shard {
    map: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    nodes: Vec<Node>,
    head: u32,
    tail: u32,
    cap: usize,
}

impl Shard {
    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.nodes[o as usize].prev = i,
        }
        self.head = i;
    }

    /// The key's slot, made most recent; inserted (evicting the LRU key if full) with `tat = init`
    /// if absent. Returns `(slot, evicted)`.
    fn touch(&mut self, key: u64, init: u64) -> (u32, bool) {
        if let Some(&i) = self.map.get(&key) {
            if self.head != i {
                self.unlink(i);
                self.push_front(i);
            }
            return (i, false);
        }
        if self.nodes.len() < self.cap {
            let i = self.nodes.len() as u32;
            self.nodes.push(Node {
                key,
                tat: init,
                prev: NIL,
                next: NIL,
            });
            self.map.insert(key, i);
            self.push_front(i);
            return (i, false);
        }
        // Full: reuse the least-recently-used slot.
        let i = self.tail;
        self.unlink(i);
        let old = std::mem::replace(
            &mut self.nodes[i as usize],
            Node {
                key,
                tat: init,
                prev: NIL,
                next: NIL,
            },
        );
        self.map.remove(&old.key);
        self.map.insert(key, i);
        self.push_front(i);
        (i, true)
    }
}

/// The bounded, sharded LRU table of per-key GCRA states.
pub(crate) struct KeyTable {
    shards: Box<[Mutex<Shard>]>,
}

impl KeyTable {
    pub(crate) fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        // One shard per 64 keys, a power of two, at most 16: small tables stay one exact LRU.
        let n = (max_keys / 64).clamp(1, 16);
        let n = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        let cap = (max_keys / n).max(1);
        KeyTable {
            shards: (0..n)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        nodes: Vec::new(),
                        head: NIL,
                        tail: NIL,
                        cap,
                    })
                })
                .collect(),
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard> {
        // High bits pick the shard; the map uses the low bits.
        let i = (key >> 58) as usize % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the key's TAT (inserted as `init` if absent); returns `(f's result, evicted)`.
    pub(crate) fn with<R>(&self, key: u64, init: u64, f: impl FnOnce(&mut u64) -> R) -> (R, bool) {
        let mut shard = self.shard(key);
        let (i, evicted) = shard.touch(key, init);
        (f(&mut shard.nodes[i as usize].tat), evicted)
    }

    /// Keys stored.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .nodes
                    .len()
            })
            .sum()
    }

    /// Total capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .cap
            })
            .sum()
    }

    /// Whether the key is stored (tests).
    #[cfg(test)]
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.shard(key).map.contains_key(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used_key() {
        let t = KeyTable::new(3);
        assert_eq!(t.capacity(), 3);
        for k in [1, 2, 3] {
            assert!(!t.with(k, 0, |_| ()).1);
        }
        t.with(1, 0, |_| ()); // 1 is now the most recent; 2 the least
        assert!(t.with(4, 0, |_| ()).1);
        assert!(!t.contains(2));
        assert!(t.contains(1) && t.contains(3) && t.contains(4));
        assert_eq!(t.len(), 3);
        assert!(t.with(5, 0, |_| ()).1);
        assert!(!t.contains(3));
    }

    #[test]
    fn big_tables_shard_and_stay_bounded() {
        let t = KeyTable::new(10_000);
        assert_eq!(t.shards.len(), 16);
        assert!(t.capacity() <= 10_000);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..50_000 {
            t.with(rng.u64(..), 0, |_| ());
        }
        assert_eq!(t.len(), t.capacity());
    }
}
