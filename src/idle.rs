//! A bounded queue of idle pool connections: what a taker (a server session, a relay
//! reservation) hands out to users, oldest first.

use smol::channel::{bounded, Receiver, Sender};

/// At most `max` idle items; closing it drops (and so closes) every item still queued.
#[derive(Debug)]
pub struct IdleQueue<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
}

impl<T> IdleQueue<T> {
    /// An empty queue holding at most `max` items (at least one).
    pub fn new(max: usize) -> Self {
        let (tx, rx) = bounded(max.max(1));
        IdleQueue { tx, rx }
    }

    /// Queue an item; gives it back when the queue is full or closed.
    pub fn offer(&self, item: T) -> Result<(), T> {
        self.tx.try_send(item).map_err(|e| e.into_inner())
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Wait for the next item (`None` once the queue is closed and empty).
    pub async fn pop(&self) -> Option<T> {
        self.rx.recv().await.ok()
    }

    /// Drop up to `n` items, oldest first; never one already handed out.
    pub fn trim(&self, n: usize) {
        for _ in 0..n {
            if self.rx.try_recv().is_err() {
                break;
            }
        }
    }

    /// Refuse further items and drop every queued one.
    pub fn close(&self) {
        self.tx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_trim_and_close() {
        let q = IdleQueue::new(2);
        assert!(q.offer(1).is_ok() && q.offer(2).is_ok());
        assert_eq!(q.offer(3), Err(3));
        q.trim(1);
        assert_eq!(q.len(), 1);
        assert_eq!(smol::block_on(q.pop()), Some(2));
        q.offer(4).unwrap();
        q.close();
        assert!(q.is_empty());
        assert_eq!(q.offer(5), Err(5));
        assert_eq!(smol::block_on(q.pop()), None);
    }
}
