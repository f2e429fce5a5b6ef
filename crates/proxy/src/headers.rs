//! Header hygiene and forwarding headers: hop-by-hop removal, x-forwarded-for, forwarded,
//! x-request-id and via.

use http::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE,
};
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static VIA: HeaderName = HeaderName::from_static("via");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
/// `te: trailers` survives on requests: gRPC needs it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, is_request: bool) {
    // Most messages carry none: one pass over the names is cheaper than six hashed lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(&CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(&CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(is_request && name == TE) {
                headers.remove(&name);
            }
        }
        headers.remove(&CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(&TRANSFER_ENCODING);
    headers.remove(&UPGRADE);
    if let Some(te) = headers.get(&TE) {
        let trailers = is_request
            && te
                .to_str()
                .map(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
                })
                .unwrap_or(false);
        if trailers {
            headers.insert(&TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(&TE);
        }
    }
}

/// Whether `name` is always hop-by-hop (or, for `te`, possibly so).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Appends `value` to a comma-separated header, folding repeated lines into one, creating it when absent.
pub fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    let mut combined = String::new();
    for existing in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        if !existing.trim().is_empty() {
            combined.push_str(existing);
            combined.push_str(", ");
        }
    }
    combined.push_str(value);
    if let Ok(v) = HeaderValue::from_str(&combined) {
        headers.insert(name, v);
    }
}

/// The RFC 7239 `for=` node: IPv6 addresses are quoted and bracketed.
pub fn forwarded_element(client: IpAddr, proto: &str) -> String {
    match client {
        IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
    }
}

/// A random UUID v4 in lowercase hyphenated form.
pub fn new_request_id() -> HeaderValue {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[(b >> 4) as usize];
        out[o + 1] = HEX[(b & 0x0f) as usize];
        o += 2;
    }
    HeaderValue::from_bytes(&out)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret, te"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h, true);
        assert!(h.get(CONNECTION).is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(UPGRADE).is_none());
        assert_eq!(h.get(TE).unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "yes");

        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h, false);
        assert!(h.get(TE).is_none(), "te is dropped from responses");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            h.insert("x-keep", HeaderValue::from_static("yes"));
            remove_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} survived");
            assert_eq!(h.len(), 1, "only {name} is removed");
        }
    }

    #[test]
    fn appends_to_lists() {
        let mut h = HeaderMap::new();
        append_list(&mut h, &X_FORWARDED_FOR, "127.0.0.1");
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "127.0.0.1");
        append_list(&mut h, &X_FORWARDED_FOR, "10.0.0.1");
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "127.0.0.1, 10.0.0.1");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        append_list(&mut h, &X_FORWARDED_FOR, "2.2.2.2");
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            h.get(&X_FORWARDED_FOR).unwrap(),
            "127.0.0.1, 10.0.0.1, 1.1.1.1, 2.2.2.2"
        );
    }

    #[test]
    fn forwarded_quotes_ipv6() {
        assert_eq!(
            forwarded_element("127.0.0.1".parse().unwrap(), "http"),
            "for=127.0.0.1;proto=http"
        );
        assert_eq!(
            forwarded_element("::1".parse().unwrap(), "http"),
            "for=\"[::1]\";proto=http"
        );
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = new_request_id();
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a, new_request_id());
    }
}
