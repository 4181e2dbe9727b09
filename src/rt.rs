//! Where tasks run: every task of the binary on its main thread, or smol's global executor
//! for library users (the in-process tests).
//!
//! # Implementation
//! smol's global executor always starts a thread of its own (`SMOL_THREADS`, at least one),
//! so the binary would run on two threads plus async-io's reactor thread. [`block_on`] runs
//! a process-wide [`Executor`] on the calling thread instead, and [`spawn`] puts tasks there
//! once it is running: one thread does all the work (a router often has one core), with one
//! thread stack and one malloc arena. The reactor thread async-io starts stays, asleep while
//! the main thread waits on the reactor itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use smol::{Executor, Task};

/// The executor [`block_on`] runs.
static LOCAL: Executor<'static> = Executor::new();
/// Set once [`block_on`] has started.
static ON: AtomicBool = AtomicBool::new(false);

/// Spawn a task: on the thread running [`block_on`] if there is one, else on smol's global
/// executor.
pub fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Task<T> {
    if ON.load(Relaxed) {
        LOCAL.spawn(f)
    } else {
        smol::spawn(f)
    }
}

/// Run `f`, and every task [`spawn`]ed from now on, on the calling thread until `f` ends.
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    ON.store(true, Relaxed);
    smol::block_on(LOCAL.run(f))
}
