//! Work taken in groups: callers queue what they want done; one leader task takes
//! what is queued whenever one of the group permits is free (up to `max` items, one
//! per key), and runs the group on a task of its own, which holds its permit until
//! it is done. A group of one costs what a single statement did; under load, the
//! queue fills while the permits are busy, and each group takes many: one round
//! trip and one commit for many callers (see [`super::locks`] and
//! [`super::refreshes`]).
//!
//! An item whose key is already in the group waits for a later one. A caller that
//! gave up (its answer's receiver is gone) is left out. A group that is dropped
//! unrun (the runtime is ending) drops its items, and their callers hear that the
//! store is closing.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a group is made of.
pub(super) trait Member: Send + 'static {
    /// Two items with the same key are never in one group.
    type Key: Eq + Hash;
    fn key(&self) -> Self::Key;
    /// Whether its caller stopped waiting for it.
    fn gave_up(&self) -> bool;
}

type Run<T> = Arc<
    dyn Fn(Vec<T>, OwnedSemaphorePermit) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// A queue of items, run in groups.
pub(super) struct Groups<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Groups<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    queue: Mutex<Queue<T>>,
    permits: Arc<Semaphore>,
    max: usize,
    run: Run<T>,
}

struct Queue<T> {
    waiting: VecDeque<T>,
    /// Whether a leader task is taking groups from the queue.
    leading: bool,
}

impl<T: Member> Groups<T> {
    /// Groups of at most `max` items, as many at once as `permits` has; `run` does
    /// a group's work and drops the permit when done.
    pub(super) fn new<F, Fut>(permits: Arc<Semaphore>, max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>, OwnedSemaphorePermit) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue {
                    waiting: VecDeque::new(),
                    leading: false,
                }),
                permits,
                max: max.max(1),
                run: Arc::new(move |group, permit| Box::pin(run(group, permit))),
            }),
        }
    }

    /// A permit to do one item's work alone, at once, in the caller: when nothing is
    /// queued and a permit is free (no load, so no group to join). `None`: queue it.
    pub(super) fn try_alone(&self) -> Option<OwnedSemaphorePermit> {
        let queue = self.inner.queue.lock();
        if !queue.waiting.is_empty() {
            return None;
        }
        self.inner.permits.clone().try_acquire_owned().ok()
    }

    /// Queues `item`; starts the leader if none is running. Needs a tokio runtime.
    pub(super) fn push(&self, item: T) {
        let start_leader = {
            let mut queue = self.inner.queue.lock();
            queue.waiting.push_back(item);
            !std::mem::replace(&mut queue.leading, true)
        };
        if start_leader {
            // A task of its own: the leader outlives the caller, who may give up.
            tokio::spawn(lead(self.inner.clone()));
        }
    }
}

/// Takes groups from the queue as permits come free, until the queue is empty.
async fn lead<T: Member>(inner: Arc<Inner<T>>) {
    loop {
        let permit = inner.permits.clone().acquire_owned().await;
        let group = {
            let mut queue = inner.queue.lock();
            if queue.waiting.is_empty() || permit.is_err() {
                queue.leading = false;
                // Closed: what waits is dropped, and its callers are told.
                queue.waiting.clear();
                return;
            }
            take_group(&mut queue.waiting, inner.max)
        };
        if let Ok(permit) = permit
            && !group.is_empty()
        {
            tokio::spawn((inner.run)(group, permit));
        }
    }
}

/// Up to `max` items from the front of the queue, one per key, in order; an item
/// whose key is already in the group stays queued, in its place.
fn take_group<T: Member>(waiting: &mut VecDeque<T>, max: usize) -> Vec<T> {
    let mut keys = HashSet::new();
    let mut group = Vec::new();
    let mut left = VecDeque::new();
    while let Some(item) = waiting.pop_front() {
        if group.len() == max {
            waiting.push_front(item);
            break;
        }
        if item.gave_up() {
            continue;
        }
        if keys.insert(item.key()) {
            group.push(item);
        } else {
            left.push_back(item);
        }
    }
    left.append(waiting);
    *waiting = left;
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item {
        key: i64,
        gave_up: bool,
    }

    impl Member for Item {
        type Key = i64;
        fn key(&self) -> i64 {
            self.key
        }
        fn gave_up(&self) -> bool {
            self.gave_up
        }
    }

    fn queue(keys: impl IntoIterator<Item = i64>) -> VecDeque<Item> {
        keys.into_iter()
            .map(|key| Item {
                key,
                gave_up: false,
            })
            .collect()
    }

    fn keys(items: &[Item]) -> Vec<i64> {
        items.iter().map(|i| i.key).collect()
    }

    #[test]
    fn a_group_holds_each_key_once_and_keeps_the_order() {
        let mut waiting = queue([1, 2, 1, 3, 2, 4]);
        assert_eq!(keys(&take_group(&mut waiting, 64)), [1, 2, 3, 4]);
        assert_eq!(keys(waiting.make_contiguous()), [1, 2]);
        assert_eq!(keys(&take_group(&mut waiting, 64)), [1, 2]);
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_group_is_bounded_and_leaves_out_callers_that_gave_up() {
        let mut waiting = queue(0..74);
        waiting[0].gave_up = true;
        let group = take_group(&mut waiting, 64);
        assert_eq!(group.len(), 64);
        assert_eq!(group[0].key, 1);
        assert_eq!(waiting.len(), 9);
        assert_eq!(waiting[0].key, 65);
    }

    #[tokio::test]
    async fn an_item_goes_alone_only_when_nothing_waits_and_a_permit_is_free() {
        let permits = Arc::new(Semaphore::new(1));
        let (ran, mut runs) = tokio::sync::mpsc::unbounded_channel::<Vec<i64>>();
        let groups = Groups::new(permits, 8, move |group: Vec<Item>, permit| {
            let ran = ran.clone();
            async move {
                drop(permit);
                let _ = ran.send(keys(&group));
            }
        });
        let alone = groups.try_alone().expect("idle: alone");
        assert!(groups.try_alone().is_none(), "no permit free");
        groups.push(Item {
            key: 1,
            gave_up: false,
        });
        drop(alone);
        // The permit is free again, but an item waits for it: queue behind it.
        assert!(groups.try_alone().is_none(), "something queued");
        assert_eq!(runs.recv().await, Some(vec![1]));
    }

    #[tokio::test]
    async fn every_item_is_run_once_in_groups_of_at_most_max() {
        let permits = Arc::new(Semaphore::new(2));
        let runs = Arc::new(Mutex::new(Vec::<Vec<i64>>::new()));
        let (done, mut all_done) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let groups = {
            let runs = runs.clone();
            Groups::new(permits, 8, move |group: Vec<Item>, permit| {
                let (runs, done) = (runs.clone(), done.clone());
                async move {
                    tokio::task::yield_now().await;
                    let n = group.len();
                    runs.lock().push(keys(&group));
                    drop(permit);
                    let _ = done.send(n);
                }
            })
        };
        for key in 0..100 {
            groups.push(Item {
                key: key % 50,
                gave_up: false,
            });
        }
        let mut seen = 0;
        while seen < 100 {
            seen += all_done.recv().await.expect("the groups run");
        }
        let runs = runs.lock();
        assert!(
            runs.iter().all(|g| !g.is_empty() && g.len() <= 8),
            "{runs:?}"
        );
        let mut all: Vec<i64> = runs.iter().flatten().copied().collect();
        all.sort_unstable();
        let mut expected: Vec<i64> = (0..50).chain(0..50).collect();
        expected.sort_unstable();
        assert_eq!(all, expected);
        for g in runs.iter() {
            let distinct: HashSet<_> = g.iter().collect();
            assert_eq!(distinct.len(), g.len(), "a key twice in one group: {g:?}");
        }
    }
}
