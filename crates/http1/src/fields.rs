//! Values of the fields that frame a message and steer its connection, read from their raw
//! bytes, and the maps parsed fields go into (shared by the request, response and server sides).

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};

/// The map in `spare`, emptied, with room for `fields` more: a parsed head's fields go into an
/// allocation made before. `None` when that room cannot be had.
pub(crate) fn reuse_map(spare: &mut HeaderMap, fields: usize) -> Option<HeaderMap> {
    let mut map = std::mem::take(spare);
    // Skipped when already empty (a server empties its spare as soon as it is done with it):
    // clearing also resets every index slot.
    if !map.is_empty() {
        map.clear();
    }
    map.try_reserve(fields).ok()?;
    Some(map)
}

/// The one length all `content-length` lines (and their comma-separated values) agree on.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let n = length_value(value.as_bytes())?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// The length a `content-length` value gives, if its comma-separated parts are all the same
/// decimal number.
pub(crate) fn length_value(value: &[u8]) -> Option<u64> {
    // The usual value, one plain number of at most 19 digits (always fits a u64), in one pass:
    // the general reading below costs about ten times as much, once per response.
    if !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
        return Some(
            value
                .iter()
                .fold(0, |n, d| n * 10 + u64::from(d.wrapping_sub(b'0'))),
        );
    }
    length_list(value)
}

/// [`length_value`] of any value: comma-separated parts, spaces around them, long numbers.
fn length_list(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Whether the last `transfer-encoding` coding is `chunked`.
pub(crate) fn ends_in_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .is_some_and(|v| last_coding_is_chunked(v.as_bytes()))
}

/// Whether a `transfer-encoding` value's last coding is `chunked`.
pub(crate) fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
pub(crate) fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_and_listed_lengths() {
        for (value, want) in [
            (&b"0"[..], Some(0)),
            (b"27", Some(27)),
            (b"007", Some(7)),
            (b"9999999999999999999", Some(9_999_999_999_999_999_999)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"5, 5", Some(5)),
            (b"5,6", None),
            (b"", None),
            (b"+5", None),
            (b"-1", None),
            (b" 12 ", Some(12)),
            (b"1 2", None),
        ] {
            assert_eq!(
                length_value(value),
                want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    proptest! {
        /// The one-pass reading agrees with the general one on everything it takes.
        #[test]
        fn the_fast_path_agrees_with_the_general_reading(value in "[0-9, +-]{0,24}") {
            prop_assert_eq!(length_value(value.as_bytes()), length_list(value.as_bytes()));
        }
    }
}
