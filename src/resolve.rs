//! `dns=DURATION`: a small cache of host name lookups, so a name is re-resolved after `dns`.
//!
//! Pure: time comes in as `now: Instant`, lookups are done by the caller
//! ([`crate::dialer::Dialer`]). Bounded: at most [`MAX_NAMES`] names, the oldest entry makes
//! room for a new one. `dns=0` disables the cache (every dial looks the name up).

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most names cached: a URL names a handful of hosts (the tunnel, a few targets).
pub const MAX_NAMES: usize = 16;

#[derive(Debug)]
struct Entry {
    name: String,
    ips: Vec<IpAddr>,
    at: Instant,
}

/// Cached addresses per host name, each valid for `ttl` after its lookup.
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    entries: Vec<Entry>,
}

impl Cache {
    /// An empty cache whose entries live `ttl` (zero: nothing is cached).
    pub fn new(ttl: Duration) -> Cache {
        Cache {
            ttl,
            entries: Vec::new(),
        }
    }

    /// The addresses of `name` if looked up less than `ttl` before `now`.
    pub fn get(&self, name: &str, now: Instant) -> Option<&[IpAddr]> {
        let e = self.entries.iter().find(|e| e.name == name)?;
        (now.saturating_duration_since(e.at) < self.ttl).then_some(&e.ips[..])
    }

    /// Remember that `name` resolved to `ips` at `now` (nothing when `ttl` is zero or `ips`
    /// is empty: a failed lookup is retried on the next dial).
    pub fn put(&mut self, name: &str, ips: &[IpAddr], now: Instant) {
        if self.ttl.is_zero() || ips.is_empty() {
            return;
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.name == name) {
            e.ips = ips.to_vec();
            e.at = now;
            return;
        }
        if self.entries.len() >= MAX_NAMES {
            if let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].at) {
                self.entries.swap_remove(oldest);
            }
        }
        self.entries.push(Entry {
            name: name.to_owned(),
            ips: ips.to_vec(),
            at: now,
        });
    }

    /// Names held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entry_lives_for_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(300);
        let mut c = Cache::new(ttl);
        assert_eq!(c.get("a.example", t0), None);
        c.put("a.example", &[ip("192.0.2.1")], t0);
        assert_eq!(c.get("a.example", t0), Some(&[ip("192.0.2.1")][..]));
        assert!(c
            .get("a.example", t0 + ttl - Duration::from_millis(1))
            .is_some());
        assert_eq!(c.get("a.example", t0 + ttl), None, "expired: re-resolve");
        assert_eq!(c.get("b.example", t0), None);
        // A new lookup replaces the addresses and restarts the clock.
        c.put("a.example", &[ip("192.0.2.2")], t0 + ttl);
        assert_eq!(c.get("a.example", t0 + ttl), Some(&[ip("192.0.2.2")][..]));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::ZERO);
        c.put("a.example", &[ip("192.0.2.1")], t0);
        assert!(c.is_empty());
        assert_eq!(c.get("a.example", t0), None);
    }

    #[test]
    fn empty_answers_are_not_cached() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(1));
        c.put("a.example", &[], t0);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_oldest_evicted() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(60));
        for i in 0..MAX_NAMES + 3 {
            let at = t0 + Duration::from_millis(i as u64);
            c.put(&format!("h{i}"), &[ip("192.0.2.1")], at);
        }
        assert_eq!(c.len(), MAX_NAMES);
        let later = t0 + Duration::from_secs(1);
        for i in 0..3 {
            assert!(c.get(&format!("h{i}"), later).is_none(), "h{i} evicted");
        }
        assert!(c.get(&format!("h{}", MAX_NAMES + 2), later).is_some());
    }
}
