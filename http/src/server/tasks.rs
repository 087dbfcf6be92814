//! Small task plumbing for a single-threaded runtime: racing two futures, and counting live
//! tasks so that a shutdown can wait for the last one.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Which of two raced futures finished first.
pub(super) enum Either<A, B> {
    /// The first future finished (or both did in the same poll).
    First(A),
    /// The second future finished.
    Second(B),
}

/// Runs both futures until one finishes and drops the other. The first is polled first, so it
/// wins a tie: the caller puts the work first and the signal that interrupts it second.
pub(super) async fn race<A: Future, B: Future>(first: A, second: B) -> Either<A::Output, B::Output> {
    let mut first = pin!(first);
    let mut second = pin!(second);
    poll_fn(|context| {
        if let Poll::Ready(output) = first.as_mut().poll(context) {
            return Poll::Ready(Either::First(output));
        }
        if let Poll::Ready(output) = second.as_mut().poll(context) {
            return Poll::Ready(Either::Second(output));
        }
        Poll::Pending
    })
    .await
}

/// Counts live tasks of one kind; one waiter (the server) can wait until there are none.
#[derive(Clone, Default)]
pub(super) struct TaskCount {
    inner: Rc<CountInner>,
}

#[derive(Default)]
struct CountInner {
    live: Cell<usize>,
    idle_waker: Cell<Option<Waker>>,
}

/// Held by a task for as long as it lives; dropping it uncounts the task.
pub(super) struct TaskGuard {
    inner: Rc<CountInner>,
}

impl TaskCount {
    /// Tasks counted now.
    pub(super) fn live(&self) -> usize {
        self.inner.live.get()
    }

    /// Counts one more task until the guard is dropped.
    pub(super) fn enter(&self) -> TaskGuard {
        self.inner.live.set(self.inner.live.get() + 1);
        TaskGuard { inner: self.inner.clone() }
    }

    /// Completes once no task is counted. Only one caller may wait at a time.
    pub(super) async fn idle(&self) {
        poll_fn(|context| {
            if self.inner.live.get() == 0 {
                return Poll::Ready(());
            }
            self.inner.idle_waker.set(Some(context.waker().clone()));
            Poll::Pending
        })
        .await;
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let live = self.inner.live.get();
        debug_assert!(live > 0, "a task guard outlived its count");
        let live = live.saturating_sub(1);
        self.inner.live.set(live);
        if live == 0 {
            if let Some(waker) = self.inner.idle_waker.take() {
                waker.wake();
            }
        }
    }
}
