//! How a request maps to a rate-limit key. Keys are hashed (SipHash with a per-limiter random
//! key) into a `u64` and only the hash is stored: no allocation per request, no copy of
//! attacker-controlled bytes in the table, and collisions are as unlikely as 2⁻⁶⁴ per pair.

use http::{HeaderName, Request};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// Extracts a request's rate-limit key by feeding it to a hasher.
pub trait KeyExtractor<B>: Send + Sync + 'static {
    /// Writes the key into `state` and returns true; false when the request has no key (it then
    /// uses the limiter's shared unkeyed bucket).
    fn key(&self, req: &Request<B>, state: &mut dyn Hasher) -> bool;
}

impl<B, F> KeyExtractor<B> for F
where
    F: Fn(&Request<B>, &mut dyn Hasher) -> bool + Send + Sync + 'static,
{
    fn key(&self, req: &Request<B>, state: &mut dyn Hasher) -> bool {
        self(req, state)
    }
}

/// One bucket for every request (no key).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

impl<B> KeyExtractor<B> for NoKey {
    fn key(&self, _: &Request<B>, _: &mut dyn Hasher) -> bool {
        false
    }
}

/// Keyed by a header's value (all of its values, in order, if repeated).
#[derive(Debug, Clone)]
pub struct HeaderKey(pub HeaderName);

impl<B> KeyExtractor<B> for HeaderKey {
    fn key(&self, req: &Request<B>, state: &mut dyn Hasher) -> bool {
        let mut any = false;
        for v in req.headers().get_all(&self.0) {
            state.write(v.as_bytes());
            state.write_u8(0xff); // separator: "a","b" ≠ "ab"
            any = true;
        }
        any
    }
}

/// Keyed by a request extension of type `T` (e.g. the client's `IpAddr`, inserted by the listener).
#[derive(Debug)]
pub struct ExtensionKey<T>(PhantomData<fn() -> T>);

impl<T> ExtensionKey<T> {
    /// Keys by the extension of type `T`.
    pub fn new() -> Self {
        ExtensionKey(PhantomData)
    }
}

impl<T> Default for ExtensionKey<T> {
    fn default() -> Self {
        ExtensionKey::new()
    }
}

impl<T> Clone for ExtensionKey<T> {
    fn clone(&self) -> Self {
        ExtensionKey::new()
    }
}

impl<B, T: Hash + Send + Sync + 'static> KeyExtractor<B> for ExtensionKey<T> {
    fn key(&self, req: &Request<B>, mut state: &mut dyn Hasher) -> bool {
        match req.extensions().get::<T>() {
            Some(v) => {
                v.hash(&mut state);
                true
            }
            None => false,
        }
    }
}
