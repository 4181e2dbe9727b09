//! One cloneable stop handle that every loop races against.
//!
//! # Implementation
//! A flag, and the wakers of the tasks waiting on it in one slab (a `Vec` of slots and a list
//! of free ones) that [`Shutdown::trigger`] drains. A wait allocates nothing once the slab has
//! room: a waiting connection costs 20 bytes in one shared block, rather than a heap node of
//! its own (a channel's listener, as before), which, allocated during a burst and still
//! waiting after it (an idle pool connection), kept a page of the freed heap resident. Like
//! the runtime's own slabs, it keeps its peak length while anyone waits; it is freed when
//! nobody does, and when triggered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A stop signal shared by a role's tasks (and, per session, by a session's tasks).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    on: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The wakers of pending [`Wait`]s, by slot.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    /// Empty slots below `slots.len()`.
    free: Vec<u32>,
    /// Occupied slots.
    used: usize,
}

impl Waiters {
    fn insert(&mut self, w: Waker) -> u32 {
        self.used += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(w);
            return i;
        }
        self.slots.push(Some(w));
        (self.slots.len() - 1) as u32
    }

    fn remove(&mut self, i: u32) {
        // Slots of a drained (triggered) slab are gone: nothing to do then.
        if let Some(slot) = self.slots.get_mut(i as usize) {
            if slot.take().is_some() {
                self.used -= 1;
                self.free.push(i);
            }
        }
        if self.used == 0 {
            // Nobody waits: give the slab's memory back rather than keep a burst's peak.
            *self = Waiters::default();
        }
    }
}

impl Shutdown {
    /// A new, untriggered handle.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // Every update leaves the slab consistent, so a panic elsewhere cannot poison it.
        self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask every holder to stop. Idempotent.
    pub fn trigger(&self) {
        self.inner.on.store(true, SeqCst);
        // A wait registers under the lock after checking the flag, so none is missed.
        let waiters = std::mem::take(&mut *self.lock());
        for w in waiters.slots.into_iter().flatten() {
            w.wake();
        }
    }

    /// Whether [`trigger`](Self::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.on.load(SeqCst)
    }

    /// Resolves once triggered.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            stop: self,
            slot: None,
        }
    }
}

/// The future of [`Shutdown::wait`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Wait<'a> {
    stop: &'a Shutdown,
    slot: Option<u32>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.is_triggered() {
            return Poll::Ready(());
        }
        let stop = self.stop;
        let mut waiters = stop.lock();
        if stop.is_triggered() {
            return Poll::Ready(());
        }
        match self.slot {
            Some(i) => match waiters.slots.get_mut(i as usize) {
                Some(Some(w)) if w.will_wake(cx.waker()) => {}
                Some(Some(w)) => *w = cx.waker().clone(),
                // Not drained without the flag set: unreachable, but register again.
                _ => self.slot = Some(waiters.insert(cx.waker().clone())),
            },
            None => self.slot = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            self.stop.lock().remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::future::FutureExt;

    #[test]
    fn trigger_wakes_all_waiters() {
        let s = Shutdown::new();
        let a = s.clone();
        assert!(!a.is_triggered());
        s.trigger();
        smol::block_on(async {
            a.wait().await;
            s.wait().await;
        });
        assert!(a.is_triggered());
    }

    #[test]
    fn pending_waiters_wake_and_their_slots_go() {
        let s = Shutdown::new();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let s = s.clone();
                smol::spawn(async move { s.wait().await })
            })
            .collect();
        smol::block_on(async {
            while s.lock().used < 100 {
                smol::Timer::after(std::time::Duration::from_millis(1)).await;
            }
            // A waiter that gives up frees its slot; the next one reuses it.
            s.wait().or(smol::future::yield_now()).await;
            assert_eq!(s.lock().used, 100);
            assert_eq!(s.lock().free.len(), 1);
            s.trigger();
            for t in tasks {
                t.await;
            }
        });
        let w = s.lock();
        assert_eq!((w.used, w.slots.capacity(), w.free.capacity()), (0, 0, 0));
    }

    #[test]
    fn the_slab_is_freed_when_nobody_waits() {
        let s = Shutdown::new();
        smol::block_on(async {
            for _ in 0..3 {
                s.wait().or(smol::future::yield_now()).await;
            }
        });
        let w = s.lock();
        assert_eq!((w.used, w.slots.capacity(), w.free.capacity()), (0, 0, 0));
    }
}
