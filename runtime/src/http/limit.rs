//! A per-address rate limit: at most `n` events per address in any one-minute window (a fixed
//! window per address). The table of addresses is bounded: when it is full, windows that have
//! ended are forgotten first, and if all are live the new address is refused (so a flood from many
//! addresses cannot grow memory either). IPv6 addresses count by their /64 prefix, the block one
//! host usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 10_000;

/// Counts events per address; see the module documentation.
#[derive(Debug, Default)]
pub struct RateLimit {
    // std Mutex: held for one map update, never across an await.
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimit {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one event from `addr` at `now`; false when `addr` already had `per_minute` events
    /// in its current window (or the table is full of live windows).
    pub fn allow(&self, addr: IpAddr, per_minute: u32, now: Instant) -> bool {
        let addr = block(addr);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !windows.contains_key(&addr) && windows.len() >= MAX_ADDRESSES {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let (start, count) = windows.entry(addr).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= per_minute {
            return false;
        }
        *count += 1;
        true
    }
}

/// The address an event counts for: IPv4 as it is, IPv6 by its /64.
pub(super) fn block(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_window() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limit.allow(a, 3, t0)));
        assert!(!limit.allow(a, 3, t0 + Duration::from_secs(59)), "the fourth in a minute is refused");
        assert!(limit.allow(b, 3, t0), "another address has its own count");
        assert!(limit.allow(a, 3, t0 + WINDOW), "a new window");
        // One IPv6 host, many addresses of its /64: one count.
        let v6 = |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        assert!(limit.allow(v6(1), 2, t0) && limit.allow(v6(2), 2, t0));
        assert!(!limit.allow(v6(3), 2, t0));
    }

    #[test]
    fn the_table_is_bounded() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            assert!(limit.allow(IpAddr::V4(i.into()), 1, t0));
        }
        let one_more = IpAddr::V4((MAX_ADDRESSES as u32).into());
        assert!(!limit.allow(one_more, 1, t0), "a full table of live windows refuses new addresses");
        assert!(limit.allow(one_more, 1, t0 + WINDOW), "ended windows make room");
        assert!(limit.windows.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
