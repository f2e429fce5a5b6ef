//! `Retry-After` parsing (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The delay a `Retry-After` value asks for, measured from `now` (a past date means zero).
///
/// Accepts delay-seconds and the three HTTP-date formats (IMF-fixdate, RFC 850, asctime).
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // Very large values saturate rather than fail: they are capped by the caller anyway.
        return Some(Duration::from_secs(s.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(s)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an HTTP-date into a `SystemTime`.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (day, month, year, hms) = if let Some((_, rest)) = s.split_once(", ") {
        if rest.contains('-') {
            // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
            let mut it = rest.split(' ');
            let date = it.next()?;
            let hms = it.next()?;
            (it.next()? == "GMT" && it.next().is_none()).then_some(())?;
            let mut d = date.split('-');
            let day = d.next()?;
            let month = d.next()?;
            let yy: u64 = num(d.next()?, 2)?;
            // Two-digit years: RFC 9110 says interpret as the most recent year ending in those digits
            // that is not more than 50 years in the future; good enough: 70–99 → 19xx, else 20xx.
            let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
            (day, month, year, hms)
        } else {
            // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
            let mut it = rest.split(' ');
            let day = it.next()?;
            let month = it.next()?;
            let year = num(it.next()?, 4)?;
            let hms = it.next()?;
            (it.next()? == "GMT" && it.next().is_none()).then_some(())?;
            (day, month, year, hms)
        }
    } else {
        // asctime: "Sun Nov  6 08:49:37 1994"
        let mut it = s.split(' ').filter(|p| !p.is_empty());
        let _weekday = it.next()?;
        let month = it.next()?;
        let day = it.next()?;
        let hms = it.next()?;
        let year = num(it.next()?, 4)?;
        it.next().is_none().then_some(())?;
        (day, month, year, hms)
    };
    let day = day.parse::<u64>().ok().filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut t = hms.split(':');
    let h = num(t.next()?, 2).filter(|h| *h < 24)?;
    let m = num(t.next()?, 2).filter(|m| *m < 60)?;
    let sec = num(t.next()?, 2).filter(|s| *s <= 60)?;
    t.next().is_none().then_some(())?;
    let days = days_from_civil(year, month, day)?;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn num(s: &str, digits: usize) -> Option<u64> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm); `None` before 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH_1994: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn all_three_date_formats_parse_to_the_same_instant() {
        let want = UNIX_EPOCH + Duration::from_secs(EPOCH_1994);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(want));
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(want)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(want));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(951_825_600))
        );
    }

    #[test]
    fn seconds_and_dates_become_delays_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(EPOCH_1994);
        assert_eq!(
            parse_retry_after(b"120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(b" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(b"-1", now), None);
        assert_eq!(parse_retry_after(b"soon", now), None);
        assert_eq!(parse_retry_after(b"", now), None);
    }
}
