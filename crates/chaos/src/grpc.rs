//! gRPC status codes and `grpc-message` encoding for trailers-only abort responses.

/// Canonical gRPC status code names, indexed by code (0 = OK … 16 = UNAUTHENTICATED).
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Resolves a code name (any case, with or without underscores, e.g. `UNAVAILABLE`,
/// `Unavailable`, `invalid_argument`; `CANCELED` too) or a decimal number to a code 0..=16.
pub fn parse_grpc_code(s: &str) -> Option<u8> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u8>() {
        return (usize::from(n) < GRPC_CODE_NAMES.len()).then_some(n);
    }
    let norm: String = s
        .chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if norm == "CANCELED" {
        return Some(1);
    }
    GRPC_CODE_NAMES
        .iter()
        .position(|name| name.replace('_', "") == norm)
        .and_then(|i| u8::try_from(i).ok())
}

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec requires: UTF-8 bytes
/// outside `%x20-%x7E`, and `%` itself, become `%XX` (upper-case hex).
pub fn encode_grpc_message(msg: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(parse_grpc_code("Unavailable"), Some(14));
        assert_eq!(parse_grpc_code("invalid_argument"), Some(3));
        assert_eq!(parse_grpc_code("InvalidArgument"), Some(3));
        assert_eq!(parse_grpc_code("canceled"), Some(1));
        assert_eq!(parse_grpc_code("16"), Some(16));
        assert_eq!(parse_grpc_code("17"), None);
        assert_eq!(parse_grpc_code("BROKEN"), None);
    }

    #[test]
    fn message_encoding_follows_the_spec() {
        assert_eq!(encode_grpc_message("plain text"), "plain text");
        assert_eq!(encode_grpc_message("100% bad"), "100%25 bad");
        assert_eq!(encode_grpc_message("a\nb"), "a%0Ab");
        assert_eq!(encode_grpc_message("héllo"), "h%C3%A9llo");
        assert_eq!(encode_grpc_message("~"), "~");
    }

    proptest::proptest! {
        #[test]
        fn encoded_messages_are_header_values_and_decode_back(msg in "\\PC{0,40}") {
            let enc = encode_grpc_message(&msg);
            proptest::prop_assert!(http::HeaderValue::from_str(&enc).is_ok());
            let mut out = Vec::new();
            let b = enc.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            proptest::prop_assert_eq!(out, msg.as_bytes());
        }
    }
}
