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
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Wake, Waker};

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
    smol::block_on(LOCAL.run(OnWake::new(f)))
}

/// A future polled only after its own waker fired.
///
/// The executor's `run` polls the future it was given every time any task is scheduled. A
/// role's main future waits on sockets (the control connection's next line), and every poll
/// of those is a read syscall that fails with `EAGAIN`: five per user connection on the
/// client before this. Behind this gate the main future is polled only when one of its own
/// sources woke it.
struct OnWake<F> {
    f: Pin<Box<F>>,
    flag: Arc<Flag>,
}

/// Whether the gated future was woken, and the waker of whoever polls the gate.
struct Flag {
    woken: AtomicBool,
    outer: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        // A poisoned lock only means a panic elsewhere; the waker inside is still good.
        let outer = self.outer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = outer.as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<F> OnWake<F> {
    fn new(f: F) -> Self {
        OnWake {
            f: Box::pin(f),
            flag: Arc::new(Flag {
                // The first poll always goes through.
                woken: AtomicBool::new(true),
                outer: Mutex::new(None),
            }),
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut outer = this.flag.outer.lock().unwrap_or_else(|e| e.into_inner());
            if !outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *outer = Some(cx.waker().clone());
            }
        }
        // Set before polling `f`, so a wake-up during the poll is kept for the next one.
        if !this.flag.woken.swap(false, SeqCst) {
            return Poll::Pending;
        }
        let waker = Waker::from(this.flag.clone());
        this.f.as_mut().poll(&mut Context::from_waker(&waker))
    }
}
