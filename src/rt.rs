//! Where tasks run: every task of the binary on its main thread, or on one thread of the
//! runtime's own for library users (the in-process tests).
//!
//! # Implementation
//! smol's global executor always starts a thread of its own (`SMOL_THREADS`, at least one),
//! so the binary would run on two threads plus async-io's reactor thread. [`block_on`] runs
//! a process-wide executor on the calling thread instead, and [`spawn`] puts tasks there: one
//! thread does all the work (a router often has one core), with one thread stack and one
//! malloc arena. The reactor thread async-io starts stays, asleep while the main thread waits
//! on the reactor itself. smol's global executor is not linked in at all.
//!
//! The executor is a [`StaticExecutor`]: it lives as long as the process, so it keeps no
//! table of its tasks (smol's `Executor` keeps a slab with a waker per live task, which stays
//! at its peak length after a burst of connections, and is locked on every spawn and end).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Once;

use async_executor::StaticExecutor;
use smol::Task;

/// The executor every task runs on.
static LOCAL: StaticExecutor = StaticExecutor::new();
/// Set once [`block_on`] has started.
static ON: AtomicBool = AtomicBool::new(false);
/// Starts the thread that runs [`LOCAL`] for library users.
static FALLBACK: Once = Once::new();

/// Spawn a task: on the thread running [`block_on`] if there is one, else on a thread of its
/// own that runs the executor for library users (started on the first such spawn).
pub fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Task<T> {
    if !ON.load(Relaxed) {
        FALLBACK.call_once(|| {
            let run = || smol::block_on(LOCAL.run(std::future::pending::<()>()));
            if let Err(e) = std::thread::Builder::new()
                .name("edgepass-rt".into())
                .spawn(run)
            {
                // Nothing runs the tasks then; the roles' own timeouts report it.
                log::error!("cannot start the runtime thread: {e}");
            }
        });
    }
    LOCAL.spawn(f)
}

/// Run `f`, and every task [`spawn`]ed from now on, on the calling thread until `f` ends.
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    ON.store(true, Relaxed);
    smol::block_on(LOCAL.run(f))
}
