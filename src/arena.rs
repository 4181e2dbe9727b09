//! Fixed-capacity buffer arena: N equal buffers in one anonymous mapping, leased with RAII.
//!
//! # Implementation
//! The mapping is reserved once at start and the kernel backs a page only when a buffer is
//! first written, so an arena sized for many sessions costs nothing until it is used. Returned
//! buffers sit on a LIFO stack so the hottest (already resident) buffers are reused first, and
//! a never-used one is taken only when the stack is empty;
//! [`Arena::release_idle`] hands the pages of free buffers back to the kernel after a burst.
//! A semaphore with one permit per buffer makes waiting for a buffer async and bounded; taking
//! and returning a buffer allocates nothing. An arena made [`with_poke`](Arena::with_poke)
//! pokes the release ticker whenever a buffer comes back, so the ticker may sleep while
//! connections stay open and no bytes move.

use std::ffi::c_void;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use rustix::mm::{madvise, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};
use smol::lock::{Semaphore, SemaphoreGuardArc};
use smol::Timer;

use smol::future::Future;

use crate::poke::Poke;

/// How long [`Arena::poll_lease`] waits before asking again when no buffer is free.
pub const NO_BUFFER_RETRY: Duration = Duration::from_millis(5);

/// Virtual address space one arena may reserve: large on 64-bit, modest on 32-bit routers.
#[cfg(target_pointer_width = "64")]
const MAX_ARENA_BYTES: usize = 1 << 30;
#[cfg(not(target_pointer_width = "64"))]
const MAX_ARENA_BYTES: usize = 128 << 20;

struct Free {
    /// Indices of returned buffers; the top is reused first.
    stack: Vec<u32>,
    /// Buffers from this index on were never leased (so a large arena costs nothing to make).
    fresh: u32,
    /// Whether each buffer may hold resident pages.
    dirty: Vec<bool>,
}

/// N fixed buffers of `size` bytes each.
pub struct Arena {
    base: NonNull<u8>,
    size: usize,
    count: usize,
    free: Mutex<Free>,
    permits: Arc<Semaphore>,
    /// Poked after a buffer comes back (it may hold pages to release).
    returned: Option<Arc<Poke>>,
}

// SAFETY: the mapping is owned by the arena; each buffer is reachable through at most one
// Lease at a time (its index is either on the free stack or inside exactly one Lease).
unsafe impl Send for Arena {}
// SAFETY: see above; shared access only touches the mutex-protected free list.
unsafe impl Sync for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("size", &self.size)
            .field("count", &self.count)
            .finish()
    }
}

impl Arena {
    /// Reserve `count` buffers of `size` bytes (count is capped so the whole reservation fits
    /// the address space budget). Fails only if the kernel refuses the mapping.
    pub fn new(count: usize, size: usize) -> std::io::Result<Arc<Arena>> {
        Self::make(count, size, None)
    }

    /// [`Arena::new`], poking `returned` each time a buffer comes back.
    pub fn with_poke(
        count: usize,
        size: usize,
        returned: Arc<Poke>,
    ) -> std::io::Result<Arc<Arena>> {
        Self::make(count, size, Some(returned))
    }

    fn make(count: usize, size: usize, returned: Option<Arc<Poke>>) -> std::io::Result<Arc<Arena>> {
        let size = size.max(1);
        let count = count
            .clamp(1, (MAX_ARENA_BYTES / size).max(1))
            .min(u32::MAX as usize);
        let bytes = count * size;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        let stack = Vec::with_capacity(count);
        Ok(Arc::new(Arena {
            base,
            size,
            count,
            free: Mutex::new(Free {
                stack,
                fresh: 0,
                dirty: vec![false; count],
            }),
            permits: Arc::new(Semaphore::new(count)),
            returned,
        }))
    }

    /// Size of one buffer.
    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// Number of buffers.
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Buffers not leased right now.
    pub fn available(&self) -> usize {
        let free = self.lock();
        free.stack.len() + (self.count - free.fresh as usize)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        // A panic while holding this lock cannot leave the stack inconsistent (push/pop only).
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a buffer now, if one is free.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        let permit = self.permits.try_acquire_arc()?;
        Some(self.take(permit))
    }

    /// Take a buffer, waiting at most `wait` for one to be returned.
    pub async fn lease(self: &Arc<Self>, wait: Duration) -> Option<Lease> {
        if let Some(l) = self.try_lease() {
            return Some(l);
        }
        let permit = crate::timeout::within(wait, self.permits.acquire_arc()).await?;
        Some(self.take(permit))
    }

    /// Take two buffers, or none: waiting at most `wait`, and holding neither while waiting.
    /// (Two waiters that each held one buffer while waiting for a second could both time out
    /// with buffers free.) When only one is free, it goes back and the arena is asked again
    /// after [`NO_BUFFER_RETRY`].
    pub async fn lease_pair(self: &Arc<Self>, wait: Duration) -> Option<(Lease, Lease)> {
        let deadline = Instant::now() + wait;
        loop {
            let first = self
                .lease(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if let Some(second) = self.try_lease() {
                return Some((first, second));
            }
            drop(first);
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            Timer::at(deadline.min(now + NO_BUFFER_RETRY)).await;
        }
    }

    /// For poll-based code: the buffer in `slot`, leased into it first if it is empty. When
    /// none is free, Pending until `retry` (a timer of [`NO_BUFFER_RETRY`]) fires and the
    /// arena is asked again.
    pub fn poll_lease<'s>(
        self: &Arc<Self>,
        slot: &'s mut Option<Lease>,
        retry: &mut Option<Timer>,
        cx: &mut Context<'_>,
    ) -> Poll<&'s mut Lease> {
        match slot {
            Some(l) => Poll::Ready(l),
            None => loop {
                if let Some(t) = retry {
                    ready!(Pin::new(t).poll(cx));
                    *retry = None;
                }
                match self.try_lease() {
                    Some(l) => return Poll::Ready(slot.insert(l)),
                    None => *retry = Some(Timer::after(NO_BUFFER_RETRY)),
                }
            },
        }
    }

    fn take(self: &Arc<Self>, permit: SemaphoreGuardArc) -> Lease {
        let idx = {
            let mut free = self.lock();
            // A permit guarantees a free index: a returned one, else a fresh one.
            let idx = match free.stack.pop() {
                Some(i) => i,
                None => {
                    free.fresh += 1;
                    free.fresh - 1
                }
            };
            free.dirty[idx as usize] = true;
            idx
        };
        Lease {
            arena: self.clone(),
            idx,
            _permit: permit,
        }
    }

    /// Give the pages of every free buffer back to the kernel; returns how many buffers.
    pub fn release_idle(&self) -> usize {
        let mut free = self.lock();
        let Free { stack, dirty, .. } = &mut *free;
        let mut n = 0;
        for &idx in stack.iter() {
            if dirty[idx as usize] {
                // SAFETY: the buffer is free, so no Lease points into it.
                let ptr = unsafe { self.base.as_ptr().add(idx as usize * self.size) };
                // SAFETY: the range lies inside our mapping; DONTNEED on anonymous memory
                // just zero-fills on next touch.
                let _ = unsafe { madvise(ptr.cast::<c_void>(), self.size, Advice::LinuxDontNeed) };
                dirty[idx as usize] = false;
                n += 1;
            }
        }
        n
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: every Lease holds an Arc to the arena, so none is alive here.
        let _ = unsafe { munmap(self.base.as_ptr().cast::<c_void>(), self.count * self.size) };
    }
}

/// One leased buffer; returned to the arena on drop.
pub struct Lease {
    arena: Arc<Arena>,
    idx: u32,
    _permit: SemaphoreGuardArc,
}

impl Deref for Lease {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let a = &*self.arena;
        // SAFETY: idx < count and this Lease is the buffer's only holder.
        unsafe {
            std::slice::from_raw_parts(a.base.as_ptr().add(self.idx as usize * a.size), a.size)
        }
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut [u8] {
        let a = &*self.arena;
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe {
            std::slice::from_raw_parts_mut(a.base.as_ptr().add(self.idx as usize * a.size), a.size)
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Push before the permit is released (field drop order), so a woken waiter finds it.
        self.arena.lock().stack.push(self.idx);
        // After the push: a ticker that armed before it sees the poke, one that armed after
        // it finds the buffer (see `poke`).
        if let Some(p) = &self.arena.returned {
            p.poke();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_and_bounded() {
        let a = Arena::new(3, 1024).expect("map");
        let mut l1 = a.try_lease().expect("1");
        let mut l2 = a.try_lease().expect("2");
        let l3 = a.try_lease().expect("3");
        assert!(a.try_lease().is_none());
        l1.fill(1);
        l2.fill(2);
        assert!(l1.iter().all(|&b| b == 1));
        assert!(l2.iter().all(|&b| b == 2));
        drop(l3);
        assert_eq!(a.available(), 1);
        assert!(a.try_lease().is_some());
    }

    #[test]
    fn lease_waits_then_gives_up() {
        let a = Arena::new(1, 64).expect("map");
        let held = a.try_lease().expect("one");
        smol::block_on(async {
            assert!(a.lease(Duration::from_millis(20)).await.is_none());
            let a2 = a.clone();
            let waiter =
                crate::rt::spawn(async move { a2.lease(Duration::from_secs(10)).await.is_some() });
            drop(held);
            assert!(waiter.await);
        });
    }

    /// Two flows each wanting two of two buffers, freed one at a time: the second flow must not
    /// sit on the first freed buffer while the first flow sits on the other.
    #[test]
    fn lease_pair_takes_both_or_neither() {
        use smol::future::poll_once;
        let a = Arena::new(2, 64).expect("map");
        let held = (a.try_lease().expect("1"), a.try_lease().expect("2"));
        // Long enough that a working pair never times out on a loaded machine.
        let wait = Duration::from_secs(5);
        smol::block_on(async {
            let mut one = std::pin::pin!(a.lease_pair(wait));
            let mut two = std::pin::pin!(a.lease_pair(wait));
            assert!(poll_once(&mut one).await.is_none(), "nothing free");
            assert!(poll_once(&mut two).await.is_none(), "nothing free");
            drop(held.0);
            // One buffer free: the first flow may look at it, but must not keep it.
            assert!(poll_once(&mut one).await.is_none(), "only one free");
            drop(held.1);
            let pair = two.await.expect("both buffers, for the second flow");
            assert_eq!(a.available(), 0);
            drop(pair);
            assert!(one.await.is_some(), "then both for the first");
        });
    }

    #[test]
    fn release_idle_zeroes_free_buffers() {
        let a = Arena::new(2, 4096).expect("map");
        {
            let mut l = a.try_lease().expect("lease");
            l.fill(7);
        }
        assert_eq!(a.release_idle(), 1);
        assert_eq!(a.release_idle(), 0);
        let l = a.try_lease().expect("lease");
        assert!(l.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_returned_buffer_pokes() {
        let p = Arc::new(Poke::default());
        let a = Arena::with_poke(1, 64, p.clone()).expect("map");
        let l = a.try_lease().expect("lease");
        p.arm();
        assert!(p.is_armed(), "a lease alone does not poke");
        drop(l);
        assert!(!p.is_armed(), "the return did");
    }
}
