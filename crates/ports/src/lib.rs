//! Ports for servers that another process will bind (a proxy under test, a benchmark peer,
//! etcd): checked free by binding, released, then handed over.
//!
//! Between the release and the other process's bind, anything may take the port. A port from
//! `bind(:0)` lies in the kernel's ephemeral range, the very ports handed to outgoing
//! connections, which a benchmark or a test suite opens by the hundred. So ports come from just
//! below that range (or above it, when there is more room there), where only an explicit bind
//! can take them.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports used when the ephemeral range cannot be read or leaves too little room around it.
const FALLBACK: (u32, u32) = (20_000, 12_000);
/// Lowest port handed out: below are many well-known services' ports.
const FLOOR: u32 = 10_000;
/// Most ports in the range handed out.
const MOST: u32 = 12_000;
/// Fewest ports worth drawing from.
const LEAST: u32 = 2_000;

/// The first port and number of ports [`free_listen_addr`] draws from on this host.
pub fn listen_ports() -> (u32, u32) {
    listen_ports_around(ephemeral_range())
}

/// This host's ephemeral port range, `(low, high)` inclusive, when it can be read (Linux).
pub fn ephemeral_range() -> Option<(u32, u32)> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
}

/// `low high` as in `/proc/sys/net/ipv4/ip_local_port_range`.
fn parse_range(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
    let (low, high) = (it.next()??, it.next()??);
    (low <= high && high <= 65_535).then_some((low, high))
}

/// Up to [`MOST`] ports just below the ephemeral range `(low, high)`, or just above it when
/// there is more room there; [`FALLBACK`] when neither side has [`LEAST`] ports above
/// [`FLOOR`].
fn listen_ports_around(ephemeral: Option<(u32, u32)>) -> (u32, u32) {
    let Some((low, high)) = ephemeral else {
        return FALLBACK;
    };
    let below = low.saturating_sub(FLOOR).min(MOST);
    let above_first = high.max(FLOOR - 1) + 1;
    let above = 65_536u32.saturating_sub(above_first).min(MOST);
    if below >= LEAST && below >= above {
        (low - below, below)
    } else if above >= LEAST {
        (above_first, above)
    } else {
        FALLBACK
    }
}

/// An address on `ip` whose port was free a moment ago (bound, then released), from
/// [`listen_ports`]. Successive calls in a process walk the range from a start derived from
/// the process id, so parallel callers and processes rarely try the same port; a port in use
/// is skipped. An error only when every port in the range is taken.
pub fn free_listen_addr(ip: IpAddr) -> io::Result<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (first, count) = listen_ports();
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % count,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..count {
        let port = first + NEXT.fetch_add(1, Ordering::SeqCst) % count;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if let Ok(l) = TcpListener::bind(SocketAddr::new(ip, port)) {
            return l.local_addr();
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port on {ip} in {first}..{}", first + count),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn ranges_sit_beside_the_ephemeral_range() {
        // Linux's default 32768..=60999: the 12 000 ports just below.
        assert_eq!(
            listen_ports_around(Some((32_768, 60_999))),
            (20_768, 12_000)
        );
        // A low range leaves more room above.
        assert_eq!(
            listen_ports_around(Some((11_000, 30_000))),
            (30_001, 12_000)
        );
        // Little room either side: what there is, the larger side.
        assert_eq!(listen_ports_around(Some((13_000, 64_000))), (10_000, 3_000));
        assert_eq!(listen_ports_around(Some((10_500, 62_000))), (62_001, 3_535));
        // No room (or unreadable): the fixed fallback.
        assert_eq!(listen_ports_around(Some((1_024, 65_535))), FALLBACK);
        assert_eq!(listen_ports_around(None), FALLBACK);
        assert_eq!(parse_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("x"), None);
    }

    #[test]
    fn this_hosts_ports_lie_outside_its_ephemeral_range() {
        let (first, count) = listen_ports();
        assert!(
            count >= LEAST && first + count <= 65_536,
            "{first} + {count}"
        );
        let (low, high) = ephemeral_range().expect("a Linux host shows its ephemeral range");
        if (first, count) != FALLBACK {
            assert!(
                first + count <= low || first > high,
                "{first}..{} overlaps {low}..={high}",
                first + count
            );
        }
    }

    #[test]
    fn addresses_are_distinct_free_and_in_range() {
        let (first, count) = listen_ports();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let held: Vec<TcpListener> = (0..20)
            .map(|_| TcpListener::bind(free_listen_addr(ip).unwrap()).unwrap())
            .collect();
        let mut ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        for p in &ports {
            assert!((first..first + count).contains(&u32::from(*p)), "{p}");
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 20);
    }
}
