//! A single-threaded shutdown signal: one side triggers it, any number of tasks await it. Each
//! shard has its own, so it needs neither atomics nor locks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A cloneable, single-thread shutdown signal. Once triggered it stays triggered; every clone
/// sees it, and every pending [`Shutdown::wait`] completes.
///
/// Registered waiters are at most the live [`Wait`] futures, one per task that awaits the
/// signal, so the waiter list is bounded by what the server spawns.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    triggered: Cell<bool>,
    waiters: RefCell<Waiters>,
}

/// Wakers of pending [`Wait`] futures in reusable slots, so that polling a `Wait` again
/// replaces its waker instead of adding one.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Shutdown {
    /// A signal that has not been triggered.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers the signal and wakes every task waiting on it. Triggering again does nothing.
    pub fn trigger(&self) {
        if self.inner.triggered.replace(true) {
            return;
        }
        // Take the wakers out before waking, so that a waker that polls synchronously cannot
        // find the list borrowed.
        let wakers = std::mem::take(&mut self.inner.waiters.borrow_mut().slots);
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    /// Whether the signal has been triggered.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// A future that completes once the signal is triggered (at once if it already is).
    pub fn wait(&self) -> Wait {
        Wait { shutdown: self.clone(), slot: None }
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Shutdown").field("triggered", &self.is_triggered()).finish()
    }
}

/// The future of [`Shutdown::wait`]. It owns a clone of the signal, so it can outlive the
/// `Shutdown` it came from.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Wait {
    shutdown: Shutdown,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let inner = &this.shutdown.inner;
        if inner.triggered.get() {
            return Poll::Ready(());
        }
        let mut waiters = inner.waiters.borrow_mut();
        let waker = Some(context.waker().clone());
        // A slot of ours, or a free one, is reused; only a new waiter grows the list.
        let slot = this.slot.or_else(|| waiters.free.pop());
        match slot.and_then(|slot| waiters.slots.get_mut(slot)) {
            Some(entry) => *entry = waker,
            None => {
                waiters.slots.push(waker);
                this.slot = Some(waiters.slots.len() - 1);
                return Poll::Pending;
            }
        }
        this.slot = slot;
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let Some(slot) = self.slot else {
            return;
        };
        if self.shutdown.inner.triggered.get() {
            // `trigger` emptied the slots; there is nothing to give back.
            return;
        }
        let mut waiters = self.shutdown.inner.waiters.borrow_mut();
        if let Some(waker) = waiters.slots.get_mut(slot) {
            *waker = None;
            waiters.free.push(slot);
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(wait: &mut Wait, waker: &Waker) -> Poll<()> {
        Pin::new(wait).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn trigger_wakes_every_waiter_once_and_stays_triggered() {
        // A connection that misses the wake-up would keep the server from ever finishing its
        // shutdown.
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let shutdown = Shutdown::new();
        let mut first = shutdown.wait();
        let mut second = shutdown.clone().wait();
        assert_eq!(poll(&mut first, &waker), Poll::Pending);
        assert_eq!(poll(&mut first, &waker), Poll::Pending);
        assert_eq!(poll(&mut second, &waker), Poll::Pending);
        shutdown.trigger();
        shutdown.trigger();
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
        assert!(shutdown.is_triggered());
        assert_eq!(poll(&mut first, &waker), Poll::Ready(()));
        assert_eq!(poll(&mut shutdown.wait(), &waker), Poll::Ready(()));
    }

    #[test]
    fn dropped_waiters_give_their_slot_back() {
        // Connections come and go for the whole life of a server; their waiters must not pile up.
        let waker = Waker::from(Arc::new(CountingWaker(AtomicUsize::new(0))));
        let shutdown = Shutdown::new();
        for _ in 0..100 {
            let mut wait = shutdown.wait();
            assert_eq!(poll(&mut wait, &waker), Poll::Pending);
        }
        assert_eq!(shutdown.inner.waiters.borrow().slots.len(), 1);
    }
}
