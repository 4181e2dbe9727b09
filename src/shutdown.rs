//! One cloneable stop handle that every loop races against.
//!
//! # Implementation
//! A closed channel wakes every receiver at once, so [`Shutdown::wait`] is a `recv` that only
//! ever returns when the channel is closed by [`Shutdown::trigger`]. No allocation per wait.

use smol::channel::{bounded, Receiver, Sender};

/// A stop signal shared by a role's tasks (and, per session, by a session's tasks).
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Sender<()>,
    rx: Receiver<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new, untriggered handle.
    pub fn new() -> Self {
        let (tx, rx) = bounded(1);
        Shutdown { tx, rx }
    }

    /// Ask every holder to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.close();
    }

    /// Whether [`trigger`](Self::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        // Nothing is ever sent, so recv only returns when the channel closes.
        let _ = self.rx.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
