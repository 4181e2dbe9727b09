//! A link emulator in user space, for kernels without `sch_netem`: two TUN devices joined by
//! a thread that holds every IP packet for a fixed delay and drops a share of them at random
//! (seeded), in both directions, with a bounded queue (tail drop when full, as a router does).
//! The devices are made in the namespace of the test and can then be moved into others with
//! `ip link set NAME netns NS`; the open descriptors keep working.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>`.
const TUNSETIFF: rustix::ioctl::Opcode = 0x4004_54ca;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, the rest of the union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// A new TUN device `name` (IFF_TUN | IFF_NO_PI: bare IP packets), non-blocking; it exists
/// while the returned file is open.
pub fn tun(name: &str) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    assert!(name.len() < 16, "interface name too long: {name}");
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` and writes the name back into it; `IfReq` has
    // its layout and is at least as large (40 bytes; the kernel copies `sizeof(struct ifreq)`).
    unsafe {
        rustix::ioctl::ioctl(
            f.as_fd(),
            rustix::ioctl::Updater::<TUNSETIFF, IfReq>::new(&mut req),
        )?;
    }
    rustix::io::ioctl_fionbio(&f, true)?;
    Ok(f)
}

/// How the link treats packets, the same in both directions.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Added one-way delay.
    pub delay: Duration,
    /// Share of packets dropped, in 1/10 000 (200 = 2%).
    pub loss_per_10k: u32,
    /// Seed of the drop pattern.
    pub seed: u64,
    /// Packets held per direction at most; more are dropped.
    pub queue: usize,
}

/// Packet counts of a run, per direction (`[a -> b, b -> a]`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Delivered after the delay.
    pub forwarded: [u64; 2],
    /// Dropped at random.
    pub lost: [u64; 2],
    /// Dropped because the queue was full.
    pub overflow: [u64; 2],
}

/// The running forwarder; stopped (and joined) by [`Link::stop`] or when dropped.
pub struct Link {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Counts>>,
}

impl Link {
    /// Forward between the TUN devices `a` and `b` with `shape`.
    pub fn start(a: File, b: File, shape: Shape) -> Link {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || forward([a, b], shape, &flag));
        Link {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop the forwarder (within about 20 ms) and return its counts.
    pub fn stop(mut self) -> Counts {
        self.halt()
    }

    fn halt(&mut self) -> Counts {
        self.stop.store(true, Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("link thread"))
            .unwrap_or_default()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The forwarder loop: deliver what is due, then wait for a packet or the next due time
/// (at most 20 ms, so `stop` is seen soon).
fn forward(tuns: [File; 2], shape: Shape, stop: &AtomicBool) -> Counts {
    let mut counts = Counts::default();
    let mut queues: [VecDeque<(Instant, Vec<u8>)>; 2] = [VecDeque::new(), VecDeque::new()];
    // splitmix64 of the seed: xorshift starts poorly mixed from a seed with few bits set.
    let mut rng = {
        let mut z = shape.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) | 1
    };
    let mut buf = vec![0u8; 65536];
    while !stop.load(Relaxed) {
        let now = Instant::now();
        for (dir, q) in queues.iter_mut().enumerate() {
            while q.front().is_some_and(|(due, _)| *due <= now) {
                let (_, packet) = q.pop_front().expect("front");
                // A full device queue on the other side drops the packet, as a link would.
                let _ = (&tuns[1 - dir]).write(&packet);
                counts.forwarded[dir] += 1;
            }
        }
        let next = queues
            .iter()
            .filter_map(|q| q.front().map(|(due, _)| *due))
            .min()
            .unwrap_or(now + Duration::from_millis(20))
            .min(now + Duration::from_millis(20));
        let wait = next.saturating_duration_since(now);
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: wait.subsec_nanos().into(),
        };
        let mut fds = [
            PollFd::new(&tuns[0], PollFlags::IN),
            PollFd::new(&tuns[1], PollFlags::IN),
        ];
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
        let ready = [fds[0].revents(), fds[1].revents()];
        for (dir, revents) in ready.into_iter().enumerate() {
            if revents.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                // The device is gone (its namespace was deleted): nothing more to carry.
                return counts;
            }
            if !revents.contains(PollFlags::IN) {
                continue;
            }
            loop {
                match (&tuns[dir]).read(&mut buf) {
                    Ok(n) => {
                        // xorshift64*: a fixed drop pattern for a given seed.
                        rng ^= rng >> 12;
                        rng ^= rng << 25;
                        rng ^= rng >> 27;
                        let r = rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
                        if (r % 10_000) < u64::from(shape.loss_per_10k) {
                            counts.lost[dir] += 1;
                        } else if queues[dir].len() >= shape.queue {
                            counts.overflow[dir] += 1;
                        } else {
                            queues[dir]
                                .push_back((Instant::now() + shape.delay, buf[..n].to_vec()));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return counts,
                }
            }
        }
    }
    counts
}
