//! What the cluster simulations share (`cluster_simulation.rs`, `cluster_fanout_simulation.rs`):
//! the seed and step under way for a panic's report, and stepping the runtime's tasks by hand.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

thread_local! {
    /// The seed and step under way, and its last steps, for a report of an assertion that fails
    /// inside the engine (in a task the simulation does not await).
    pub static AT: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
    pub static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Names the seed and step in the report of a panic in the engine's code.
pub fn report_panics_with_seed() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let (seed, step) = AT.with(Cell::get);
        if seed == u64::MAX {
            // The simulation's own report, which names its seed.
            return default(info);
        }
        let log = LOG.with(|log| log.borrow().join("\n  "));
        eprintln!("seed {seed} panicked at step {step} (replay with KAPSEL_SIM_SEED={seed})\nlast steps:\n  {log}");
        default(info);
    }));
}

/// Yields to the runtime: the tasks ready now run (and those they wake) before this one goes
/// on. A task that wakes itself while it is polled runs again first in monoio, so the wake
/// comes from a task queued behind the others.
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|context| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        wake_later(context);
        Poll::Pending
    })
    .await;
}

/// Wakes the current task from a task queued behind every task ready now.
pub fn wake_later(context: &std::task::Context<'_>) {
    let waker = context.waker().clone();
    monoio::spawn(async move { waker.wake() });
}

/// Runs `future`, letting the other tasks run between its polls, for at most `rounds` polls:
/// `None` if it still waits then (a hang, which the simulation reports rather than blocks on).
pub async fn bounded<F: Future>(future: F, rounds: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut left = rounds;
    poll_fn(|context| match future.as_mut().poll(context) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending if left == 0 => Poll::Ready(None),
        Poll::Pending => {
            left -= 1;
            wake_later(context);
            Poll::Pending
        }
    })
    .await
}
