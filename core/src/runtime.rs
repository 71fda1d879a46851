//! The async runtime openraft runs on.
//!
//! openraft's own `TokioRuntime` calls real tokio directly and so cannot run inside the
//! simulator. `SeedRuntime` goes through `madsim-tokio`, which is real tokio in a normal build
//! and madsim's deterministic executor under `cfg(madsim)`: one implementation, both worlds.
//! Randomness comes from madsim's seeded generator under `cfg(madsim)`, so a seed replays.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant};

/// openraft's runtime binding for seedkv (see the module docs).
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct SeedRuntime;

/// A deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// Completes with the inner future's output, or with [`Elapsed`] once `sleep` fires.
    /// The inner future is polled first, so a result that is ready at the deadline wins.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A random non-zero number from the runtime's generator (seeded under `cfg(madsim)`).
pub fn random_nonzero_u64() -> u64 {
    use rand::Rng;
    let mut rng = <SeedRuntime as AsyncRuntime>::thread_rng();
    loop {
        let value: u64 = rng.gen();
        if value != 0 {
            return value;
        }
    }
}

/// A random number below `bound` (which must not be 0) from the runtime's generator.
pub fn random_below(bound: u64) -> u64 {
    use rand::Rng;
    assert!(bound > 0, "an empty range has no random member");
    <SeedRuntime as AsyncRuntime>::thread_rng().gen_range(0..bound)
}

/// Sleeps until `deadline`, converting openraft's instant to the runtime's clock.
fn sleep_until_instant(deadline: TokioInstant) -> tokio::time::Sleep {
    let deadline_std = deadline.into_std();
    #[cfg(madsim)]
    {
        tokio::time::sleep_until(deadline_std)
    }
    #[cfg(not(madsim))]
    {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline_std))
    }
}

/// Runs `future` with a `timeout` on the runtime's clock (virtual under madsim).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: tokio::time::sleep(duration),
    }
}

#[cfg(madsim)]
type Rng = madsim::rand::GlobalRng;
#[cfg(not(madsim))]
type Rng = rand::rngs::ThreadRng;

impl AsyncRuntime for SeedRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = Rng;
    type OneshotSender<T: OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        sleep_until_instant(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future,
            sleep: sleep_until_instant(deadline),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        #[cfg(madsim)]
        {
            madsim::rand::thread_rng()
        }
        #[cfg(not(madsim))]
        {
            // Real deployments want real entropy for election jitter; the simulator never
            // reaches this branch.
            #[allow(clippy::disallowed_methods)]
            rand::thread_rng()
        }
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}
