//! A future raced against a timer: the one shape every bounded wait of the tunnel takes.

use std::future::Future;
use std::time::Duration;

use smol::future::FutureExt;
use smol::Timer;

use crate::error::{Error, Result};

/// `fut`'s result, or [`Error::Timeout`] naming `what` once `limit` has passed (`fut` is
/// dropped then).
///
/// A plain `fn` returning the race itself: an `async fn` would keep a second copy of `fut`
/// in its future (its arguments are moved into locals), and a pool connection's task holds
/// its whole handshake in one of these.
pub fn bounded<T, F>(limit: Duration, what: &'static str, fut: F) -> impl Future<Output = Result<T>>
where
    F: Future<Output = Result<T>>,
{
    fut.or(async move {
        Timer::after(limit).await;
        Err(Error::Timeout(what))
    })
}

/// `fut`'s output, or `None` once `limit` has passed.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    async { Some(fut.await) }
        .or(async {
            Timer::after(limit).await;
            None
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_future_or_the_timer_whichever_is_first() {
        smol::block_on(async {
            let never = std::future::pending::<Result<()>>();
            let e = bounded(Duration::from_millis(1), "a wait", never).await;
            assert!(matches!(e, Err(Error::Timeout("a wait"))));
            let ready = bounded(Duration::from_secs(60), "a wait", async { Ok(7) }).await;
            assert_eq!(ready.ok(), Some(7));
            assert_eq!(
                within(Duration::from_millis(1), std::future::pending::<u8>()).await,
                None
            );
            assert_eq!(within(Duration::from_secs(60), async { 7 }).await, Some(7));
        });
    }
}
