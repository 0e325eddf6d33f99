//! Reads shared while they are in flight: callers that ask for the same key while a
//! read of it is under way take what that read gives instead of reading again. Not
//! a cache: once a read has ended, the next caller reads anew, so what a caller gets
//! was read while it waited, as fresh as a read of its own (1,000 refreshes of
//! accounts of one integration read that integration once, not 1,000 times).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

/// See the module.
pub(crate) struct SharedReads<K, V> {
    in_flight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SharedReads<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SharedReads<K, V> {
    /// What `read` gives for `key`, or what the read of `key` in flight gives when
    /// there is one. When the read this caller waited for fails (or is cancelled),
    /// one of those waiting reads in its place: an error is never shared.
    pub(crate) async fn read<E, F>(&self, key: &K, read: impl FnOnce() -> F) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>>,
    {
        let cell = self
            .in_flight
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let result = cell.get_or_try_init(read).await.cloned();
        self.ended(key, &cell);
        result
    }

    /// Forgets `cell`, the read of `key`, once it has given a value (later callers
    /// read anew) or nobody else waits for it.
    fn ended(&self, key: &K, cell: &Arc<OnceCell<V>>) {
        let mut in_flight = self.in_flight.lock();
        let ours = in_flight.get(key).is_some_and(|c| Arc::ptr_eq(c, cell));
        // Ours and the map's: nobody else has it.
        if ours && (cell.initialized() || Arc::strong_count(cell) <= 2) {
            in_flight.remove(key);
        }
    }

    /// Forgets the reads in flight (what they read may have changed): later callers
    /// read anew; those already waiting still take what their read gives, which
    /// began before the change.
    pub(crate) fn forget(&self) {
        self.in_flight.lock().clear();
    }

    /// How many reads are in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_flight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A read that counts itself and waits until `open` lets it end.
    async fn counted(
        reads: &AtomicUsize,
        open: &tokio::sync::Notify,
        value: u32,
    ) -> Result<u32, String> {
        reads.fetch_add(1, Ordering::SeqCst);
        open.notified().await;
        Ok(value)
    }

    #[tokio::test]
    async fn callers_during_a_read_share_it_and_later_ones_read_anew() {
        let shared = SharedReads::<u8, u32>::default();
        let (reads, open) = (AtomicUsize::new(0), tokio::sync::Notify::new());
        let callers = futures::future::join_all(
            (0..100).map(|_| shared.read(&1, || counted(&reads, &open, 7))),
        );
        let opener = async {
            // Let every caller reach the read before it ends.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            open.notify_waiters();
        };
        let (got, ()) = tokio::join!(callers, opener);
        assert!(got.iter().all(|r| r == &Ok(7)));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for 100 callers");
        assert_eq!(shared.len(), 0, "an ended read is forgotten");
        open.notify_one();
        assert_eq!(shared.read(&1, || counted(&reads, &open, 8)).await, Ok(8));
        assert_eq!(reads.load(Ordering::SeqCst), 2, "a later caller reads anew");
    }

    #[tokio::test]
    async fn a_failed_read_is_not_shared_and_is_forgotten() {
        let shared = SharedReads::<u8, u32>::default();
        let reads = AtomicUsize::new(0);
        let failing = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Err::<u32, String>("down".into())
        };
        let got = futures::future::join_all((0..3).map(|_| shared.read(&1, failing))).await;
        assert!(got.iter().all(Result::is_err));
        assert_eq!(
            reads.load(Ordering::SeqCst),
            3,
            "each caller read on its own"
        );
        assert_eq!(shared.len(), 0);
    }

    #[tokio::test]
    async fn keys_are_read_apart_and_forget_lets_new_callers_read_anew() {
        let shared = SharedReads::<u8, u32>::default();
        let (reads, open) = (AtomicUsize::new(0), tokio::sync::Notify::new());
        let first = shared.read(&1, || counted(&reads, &open, 1));
        let other_key = shared.read(&2, || counted(&reads, &open, 2));
        let after_forget = async {
            tokio::task::yield_now().await;
            shared.forget();
            shared.read(&1, || counted(&reads, &open, 3)).await
        };
        let opener = async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            open.notify_waiters();
        };
        let (a, b, a_again, ()) = tokio::join!(first, other_key, after_forget, opener);
        assert_eq!((a, b, a_again), (Ok(1), Ok(2), Ok(3)));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
