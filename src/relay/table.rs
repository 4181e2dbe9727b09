//! The relay's reservation table: names, session ids, per-IP counts and expiry. No I/O.
//!
//! Time comes in as `now: Instant`, so the rules (a live name is not stolen, the same device
//! takes its own name over, limits, expiry) are tested without sockets or clocks.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::idle::IdleQueue;

use crate::auth;
use crate::shutdown::Shutdown;
use crate::signal::{NONCE_LEN, SID_LEN};
use crate::stream::Conn;

/// An idle pool connection of a reservation, with its hold on the relay's connection count.
pub struct Idle {
    /// Its id within the reservation.
    pub id: u32,
    /// The connection, authenticated and idle.
    pub conn: Conn,
    /// Keeps the connection counted in `max-conns` while it waits in the queue.
    pub guard: super::stats::ConnGuard,
}

/// One named reservation: the device's control connection and its warm pool.
pub struct Reservation {
    /// The reserved name.
    pub name: String,
    /// The id the device's pool connections name in `auth`.
    pub sid: [u8; SID_LEN],
    /// The device's per-process id: the same device may take its own name over.
    pub device: [u8; NONCE_LEN],
    /// What the control connection's source address counts as in the per-IP limit
    /// ([`per_ip_key`]).
    pub ip: IpAddr,
    /// Largest idle pool kept for this reservation.
    pub max: usize,
    expires: Mutex<Instant>,
    idle: IdleQueue<Idle>,
    next_id: AtomicU32,
    /// Circuits open through this reservation now.
    pub circuits: AtomicUsize,
    /// Fires when the reservation ends (control connection gone, replaced, expired).
    pub end: Shutdown,
}

impl Reservation {
    fn new(name: &str, device: [u8; NONCE_LEN], ip: IpAddr, max: usize, expires: Instant) -> Self {
        Reservation {
            name: name.to_owned(),
            sid: auth::random::<SID_LEN>(),
            device,
            ip,
            max: max.max(1),
            expires: Mutex::new(expires),
            idle: IdleQueue::new(max),
            next_id: AtomicU32::new(1),
            circuits: AtomicUsize::new(0),
            end: Shutdown::new(),
        }
    }

    /// When the reservation lapses unless refreshed.
    pub fn expires(&self) -> Instant {
        *self.expires.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it has lapsed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.expires()
    }

    /// Extend the reservation to `now + ttl`.
    pub fn refresh(&self, now: Instant, ttl: Duration) {
        *self.expires.lock().unwrap_or_else(|e| e.into_inner()) = now + ttl;
    }

    /// The next pool connection id.
    pub fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Queue an idle pool connection; gives it back when the pool is full or closed.
    pub fn push_idle(&self, idle: Idle) -> Result<(), Idle> {
        self.idle.offer(idle)
    }

    /// Idle pool connections queued now.
    pub fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// Wait for the next idle pool connection (`None` once the reservation is closed).
    pub async fn pop_idle(&self) -> Option<Idle> {
        self.idle.pop().await
    }

    /// Close up to `n` idle pool connections, the newest first (the device's `trim`).
    pub fn trim(&self, n: usize) {
        self.idle.trim(n, |idle| idle.id);
    }

    /// End the reservation and close every idle pool connection.
    pub fn close(&self) {
        self.end.trigger();
        self.idle.close();
    }
}

/// What `max-per-ip` counts a source address as: an IPv4 address (also when it arrives
/// IPv4-mapped, `::ffff:a.b.c.d`, on a dual-stack listener), or the /64 an IPv6 address is in.
/// One IPv6 subscriber usually holds a whole /64, so counting single addresses would let one
/// host take every reservation.
pub fn per_ip_key(ip: IpAddr) -> IpAddr {
    /// The host half of an IPv6 address: the low 64 bits.
    const HOST_BITS: u128 = u64::MAX as u128;
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !HOST_BITS)),
        },
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The name is held by another live device (200).
    NameTaken,
    /// `max-reservations` reached (201).
    TooMany(usize),
    /// `max-per-ip` reached for this source address (201).
    PerIp(usize),
}

impl Refusal {
    /// The status code sent in `err`.
    pub fn code(self) -> u16 {
        match self {
            Refusal::NameTaken => 200,
            Refusal::TooMany(_) | Refusal::PerIp(_) => 201,
        }
    }

    /// The `err` text, naming the limit.
    pub fn text(self) -> String {
        match self {
            Refusal::NameTaken => "name held by another device".into(),
            Refusal::TooMany(n) => format!("max-reservations {n} reached"),
            Refusal::PerIp(n) => format!("{n} reservations per IP reached"),
        }
    }
}

/// The limits [`Table::reserve`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max-reservations`.
    pub max_reservations: usize,
    /// `max-per-ip`.
    pub max_per_ip: usize,
    /// `ttl`.
    pub ttl: Duration,
    /// Largest idle pool per reservation.
    pub max_pool: usize,
}

/// A granted reservation, and the one it replaced (same device, or an expired holder), which
/// the caller must close.
pub struct Grant {
    /// The new reservation.
    pub res: Arc<Reservation>,
    /// The previous holder of the name, now out of the table.
    pub replaced: Option<Arc<Reservation>>,
}

/// Every live reservation, by name and by session id.
#[derive(Default)]
pub struct Table {
    by_name: HashMap<String, Arc<Reservation>>,
    by_sid: HashMap<[u8; SID_LEN], Arc<Reservation>>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Table {
    /// Reserve `name` for `device` from `ip` (counted in the per-IP limit as [`per_ip_key`]
    /// says). A name held by a different live device is refused; the same device (or any
    /// device, once the holder expired) takes it over.
    pub fn reserve(
        &mut self,
        name: &str,
        device: [u8; NONCE_LEN],
        ip: IpAddr,
        now: Instant,
        lim: &Limits,
    ) -> Result<Grant, Refusal> {
        let ip = per_ip_key(ip);
        let replaced = match self.by_name.get(name) {
            Some(old) if old.device != device && !old.expired(now) => {
                return Err(Refusal::NameTaken)
            }
            Some(old) => Some(old.clone()),
            None => None,
        };
        // Limits count what stays: a replaced holder frees its slot.
        let freed = replaced.as_ref();
        let count = self.by_name.len() - usize::from(freed.is_some());
        if count >= lim.max_reservations {
            return Err(Refusal::TooMany(lim.max_reservations));
        }
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0)
            - usize::from(freed.is_some_and(|o| o.ip == ip));
        if from_ip >= lim.max_per_ip {
            return Err(Refusal::PerIp(lim.max_per_ip));
        }
        if let Some(old) = &replaced {
            self.remove(old);
        }
        let res = Arc::new(Reservation::new(
            name,
            device,
            ip,
            lim.max_pool,
            now + lim.ttl,
        ));
        self.by_name.insert(res.name.clone(), res.clone());
        self.by_sid.insert(res.sid, res.clone());
        *self.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Grant { res, replaced })
    }

    /// Remove `res` if it is still the holder of its name; returns whether it was.
    pub fn release(&mut self, res: &Arc<Reservation>) -> bool {
        let current = self
            .by_name
            .get(&res.name)
            .is_some_and(|r| Arc::ptr_eq(r, res));
        if current {
            self.remove(res);
        }
        current
    }

    fn remove(&mut self, res: &Arc<Reservation>) {
        self.by_name.remove(&res.name);
        self.by_sid.remove(&res.sid);
        if let Some(n) = self.per_ip.get_mut(&res.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&res.ip);
            }
        }
    }

    /// The live reservation of `name` at `now`.
    pub fn by_name(&self, name: &str, now: Instant) -> Option<Arc<Reservation>> {
        self.by_name.get(name).filter(|r| !r.expired(now)).cloned()
    }

    /// The reservation whose pool connections name `sid`.
    pub fn by_sid(&self, sid: &[u8; SID_LEN]) -> Option<Arc<Reservation>> {
        self.by_sid.get(sid).cloned()
    }

    /// Reservations in the table.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every reservation (to close them all at shutdown).
    pub fn all(&self) -> Vec<Arc<Reservation>> {
        self.by_name.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    fn lim(max: usize, per_ip: usize) -> Limits {
        Limits {
            max_reservations: max,
            max_per_ip: per_ip,
            ttl: Duration::from_secs(60),
            max_pool: 4,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_live_name_is_not_stolen_but_its_device_takes_it_over() {
        let (mut t, now, l) = (Table::default(), Instant::now(), lim(8, 8));
        let first = t.reserve("cam", A, ip(1), now, &l).unwrap().res;
        assert_eq!(
            t.reserve("cam", B, ip(2), now, &l).err(),
            Some(Refusal::NameTaken)
        );
        let again = t.reserve("cam", A, ip(2), now, &l).unwrap();
        assert!(Arc::ptr_eq(again.replaced.as_ref().unwrap(), &first));
        assert_eq!(t.len(), 1);
        assert!(t.by_sid(&first.sid).is_none());
        assert!(t.by_sid(&again.res.sid).is_some());
        // The old control task ending later must not remove the new holder.
        assert!(!t.release(&first));
        assert_eq!(t.len(), 1);
        assert!(t.release(&again.res));
        assert!(t.is_empty());
        assert!(t.per_ip.is_empty());
    }

    #[test]
    fn a_released_name_is_free_at_once() {
        let (mut t, now, l) = (Table::default(), Instant::now(), lim(8, 8));
        let g = t.reserve("cam", A, ip(1), now, &l).unwrap();
        assert!(t.release(&g.res));
        assert!(t.reserve("cam", B, ip(1), now, &l).is_ok());
    }

    #[test]
    fn expiry_frees_the_name() {
        let (mut t, now, l) = (Table::default(), Instant::now(), lim(8, 8));
        let g = t.reserve("cam", A, ip(1), now, &l).unwrap();
        let later = now + Duration::from_secs(61);
        assert!(t.by_name("cam", now).is_some());
        assert!(t.by_name("cam", later).is_none());
        g.res.refresh(now + Duration::from_secs(30), l.ttl);
        assert!(t.by_name("cam", later).is_some());
        let much_later = now + Duration::from_secs(91);
        let b = t.reserve("cam", B, ip(2), much_later, &l).unwrap();
        assert!(b.replaced.is_some());
        assert_eq!(t.per_ip.get(&ip(1)), None);
    }

    #[test]
    fn limits_are_refused_with_201() {
        let (mut t, now) = (Table::default(), Instant::now());
        let l = lim(3, 2);
        t.reserve("a", A, ip(1), now, &l).unwrap();
        t.reserve("b", A, ip(1), now, &l).unwrap();
        let e = t.reserve("c", A, ip(1), now, &l).err().unwrap();
        assert_eq!((e, e.code()), (Refusal::PerIp(2), 201));
        t.reserve("c", A, ip(2), now, &l).unwrap();
        let e = t.reserve("d", A, ip(3), now, &l).err().unwrap();
        assert_eq!((e, e.code()), (Refusal::TooMany(3), 201));
        // Taking over one's own name needs no new slot.
        assert!(t.reserve("a", A, ip(1), now, &l).is_ok());
        assert_eq!(Refusal::NameTaken.code(), 200);
        assert!(Refusal::PerIp(8).text().contains("per IP"));
    }

    #[test]
    fn the_per_ip_limit_counts_ipv6_by_its_64_and_mapped_ipv4_as_ipv4() {
        let v6 = |s: &str| IpAddr::from(s.parse::<Ipv6Addr>().unwrap());
        let (mut t, now, l) = (Table::default(), Instant::now(), lim(16, 2));
        // Two addresses of one /64, then a third: one subscriber.
        t.reserve("a", A, v6("2001:db8:1:2::1"), now, &l).unwrap();
        t.reserve("b", A, v6("2001:db8:1:2:ffff::9"), now, &l)
            .unwrap();
        let e = t.reserve("c", A, v6("2001:db8:1:2:abcd::1"), now, &l);
        assert_eq!(e.err(), Some(Refusal::PerIp(2)));
        // The next /64 is someone else.
        t.reserve("c", A, v6("2001:db8:1:3::1"), now, &l).unwrap();
        // 10.0.0.1 and ::ffff:10.0.0.1 are one address.
        t.reserve("d", A, ip(1), now, &l).unwrap();
        t.reserve("e", A, v6("::ffff:10.0.0.1"), now, &l).unwrap();
        let e = t.reserve("f", A, ip(1), now, &l);
        assert_eq!(e.err(), Some(Refusal::PerIp(2)));
        // Releasing from either spelling frees the one count.
        let e = t.by_name("e", now).unwrap();
        assert!(t.release(&e));
        t.reserve("f", A, ip(1), now, &l).unwrap();
        // An address that merely ends like an IPv4 one is plain IPv6 (its /64).
        assert_eq!(per_ip_key(v6("::10.0.0.1")), v6("::"));
        assert_eq!(per_ip_key(ip(7)), ip(7));
    }
}
