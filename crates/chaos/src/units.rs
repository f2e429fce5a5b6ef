//! Units written in rules: durations (`250ms`, `1.5s`, as in the config file), byte rates
//! (`65536`, `64KiB`) and RFC 3339 timestamps.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration as written in config (`500us`, `250ms`, `1.5s`, `5m`, `1h` or `0`): the same type
/// the rest of the config uses.
pub use otlp_mesh_units::Duration as FaultDuration;

/// Bytes per second: a whole number, or a size with a unit per second (`64KiB`, `1MB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct ByteRate(pub u64);

impl FromStr for ByteRate {
    type Err = String;
    /// Parsed like a config size (`65536`, `64KiB`, `1MB`), read as bytes per second.
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<otlp_mesh_units::ByteSize>()
            .map(|b| ByteRate(b.0))
            .map_err(|e| e.replacen("size", "rate", 1))
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    /// Written like a config size (`65536`, `64KiB`), read as bytes per second.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        otlp_mesh_units::ByteSize::deserialize(d).map(|b| ByteRate(b.0))
    }
}

/// Parses an RFC 3339 timestamp (`2025-06-01T12:00:00Z`, `2025-06-01T14:00:00.5+02:00`).
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let bad = || format!("`{s}` is not an RFC 3339 time such as 2025-06-01T12:00:00Z");
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let sep_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = s.get(start..i).ok_or_else(bad)?;
        if digits.is_empty() {
            return Err(bad());
        }
        for (k, c) in digits.bytes().take(9).enumerate() {
            nanos += u64::from(c - b'0') * 10u64.pow(8 - k as u32);
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return Err(bad()),
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| format!("`{s}` is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_config_file() {
        assert_eq!("250ms".parse(), Ok(FaultDuration::from_millis(250)));
        assert_eq!("1.5s".parse(), Ok(FaultDuration::from_millis(1500)));
        assert_eq!("0".parse(), Ok(FaultDuration::from_millis(0)));
        assert!("10".parse::<FaultDuration>().is_err());
        assert!("5 parsecs".parse::<FaultDuration>().is_err());
        assert_eq!(FaultDuration::from_millis(1500).to_string(), "1500ms");
        let d: FaultDuration = serde_json::from_str("\"2s\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"2s\"");
    }

    #[test]
    fn rates_parse_numbers_and_sizes() {
        assert_eq!("1000".parse(), Ok(ByteRate(1000)));
        assert_eq!("64KiB".parse(), Ok(ByteRate(65536)));
        assert_eq!("1MB".parse(), Ok(ByteRate(1_000_000)));
        assert!("fast".parse::<ByteRate>().is_err());
        let r: ByteRate = serde_json::from_str("2048").unwrap();
        assert_eq!(r, ByteRate(2048));
    }

    #[test]
    fn rfc3339_times() {
        let t = parse_rfc3339("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(86_401));
        let a = parse_rfc3339("2025-06-01T14:00:00.25+02:00").unwrap();
        let b = parse_rfc3339("2025-06-01T12:00:00.25Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            b.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_748_779_200_250)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_709_164_800
        );
        for bad in [
            "2025-02-29T00:00:00Z",
            "2025-06-01 12:00:00",
            "2025-06-01T12:00:00+0200",
            "2025-13-01T00:00:00Z",
            "yesterday",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn durations_round_trip_through_text(ms in 0u64..10_000_000) {
            let d = FaultDuration::from_millis(ms);
            proptest::prop_assert_eq!(d.to_string().parse::<FaultDuration>(), Ok(d));
        }
    }
}
