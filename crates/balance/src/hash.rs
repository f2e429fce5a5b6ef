//! Stable 64-bit hashing for consistent-hash balancers.
//!
//! Ring positions and Maglev permutations must be identical in every proxy process (so that
//! all replicas send a key to the same endpoint), so this never uses a randomly seeded hasher.

use std::net::SocketAddr;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A stable 64-bit hash of `bytes`, for turning a header, cookie or client address into a
/// [`PickContext`](crate::PickContext) key.
pub fn hash_key(bytes: &[u8]) -> u64 {
    mix64(fnv1a(FNV_OFFSET, bytes))
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit over the output,
/// so that weak keys (sequential ids, FNV of short strings) still land uniformly.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// A stable hash of an endpoint address under `seed` (distinct seeds give independent hashes).
pub(crate) fn hash_addr(addr: &SocketAddr, seed: u64) -> u64 {
    let mut h = FNV_OFFSET ^ mix64(seed);
    match addr {
        SocketAddr::V4(a) => h = fnv1a(h, &a.ip().octets()),
        SocketAddr::V6(a) => h = fnv1a(h, &a.ip().octets()),
    }
    mix64(fnv1a(h, &addr.port().to_be_bytes()))
}

/// Maps a uniformly distributed `h` onto `0..n` without a division (Lemire's multiply-shift).
pub(crate) fn reduce(h: u64, n: usize) -> usize {
    ((u128::from(h) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_across_runs() {
        // Pinned values: consistent hashing across proxy replicas depends on them never changing.
        assert_eq!(hash_key(b""), mix64(FNV_OFFSET));
        assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
        assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_ne!(hash_addr(&a, 1), hash_addr(&a, 2));
    }

    #[test]
    fn reduce_stays_in_range() {
        for h in [0, 1, u64::MAX / 2, u64::MAX] {
            assert!(reduce(h, 7) < 7);
        }
        assert_eq!(reduce(u64::MAX, 10), 9);
        assert_eq!(reduce(0, 10), 0);
    }
}
