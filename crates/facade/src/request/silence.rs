//! How long an API may stay silent while it answers: [`READ_TIMEOUT`] (or the
//! keyhaven's own setting) between the request and its answer's head, and between
//! two parts of the answer's body.
//!
//! reqwest's own `read_timeout` puts two tokio timers on every request (one for the
//! head, one reset after every part of the body), each registered in and removed
//! from the runtime's timer wheel. Here a request in flight holds a [`Watch`]
//! instead: a slot in one table per process, stamped with a coarse tick when the API
//! shows a sign of life. One thread ticks every [`TICK`] while any request is in
//! flight (and sleeps otherwise) and wakes the requests whose silence has lasted
//! longer than their limit; they fail then with a timeout. A silence is noticed
//! between its limit and two ticks later, never earlier (the ticks only run while
//! requests are watched, and a watch starts from the last tick).
//!
//! [`READ_TIMEOUT`]: super::READ_TIMEOUT

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use parking_lot::{Condvar, Mutex};
use reqwest::ResponseBuilderExt;

/// How often the watches are checked.
const TICK: Duration = Duration::from_millis(250);

/// One request's watch: when the API last showed a sign of life, and who to wake
/// when it has been silent for too long.
struct Watch {
    /// The tick of the last sign of life.
    seen: AtomicU32,
    /// How many ticks of silence end the request.
    limit: u32,
    /// Whether the watcher has woken `waker` since the request last waited.
    woken: AtomicBool,
    waker: AtomicWaker,
}

/// The table of watches, and the tick they are measured in.
struct Watchdog {
    /// Ticks counted while any watch was kept (not a clock: see the module's text).
    tick: AtomicU32,
    watches: Mutex<slab::Slab<Arc<Watch>>>,
    /// Wakes the watcher thread when the first watch comes.
    first: Condvar,
}

/// The process's watchdog, its thread started at the first request; `None` when the
/// thread cannot be started (requests are refused then, rather than sent without a
/// limit on how long they may hang).
fn watchdog() -> Option<&'static Watchdog> {
    static DOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();
    *DOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            tick: AtomicU32::new(0),
            watches: Mutex::new(slab::Slab::new()),
            first: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("keyhaven-read-timeouts".to_owned())
            .spawn(move || dog.run())
            .ok()
            .map(|_| dog)
    })
}

impl Watchdog {
    fn run(&self) {
        let mut due = Vec::new();
        let mut next = Instant::now();
        loop {
            {
                let mut watches = self.watches.lock();
                if watches.is_empty() {
                    while watches.is_empty() {
                        self.first.wait(&mut watches);
                    }
                    next = Instant::now();
                }
            }
            // Each tick at its time, not a sleep after the last: a thread kept from
            // running does not fall behind, and catches up.
            next += TICK;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let now = self.tick.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
            {
                let watches = self.watches.lock();
                for (_, watch) in watches.iter() {
                    if watch.silent_at(now) && !watch.woken.swap(true, Ordering::SeqCst) {
                        due.push(watch.clone());
                    }
                }
            }
            // Woken outside the lock: waking may schedule a task.
            for watch in due.drain(..) {
                watch.waker.wake();
            }
        }
    }
}

impl Watch {
    fn silent_at(&self, now: u32) -> bool {
        now.wrapping_sub(self.seen.load(Ordering::SeqCst)) > self.limit
    }
}

/// A request's watch, kept in the table until dropped.
pub(crate) struct Guard {
    dog: &'static Watchdog,
    watch: Arc<Watch>,
    key: usize,
}

/// The error of a request that waited too long.
#[derive(Debug, thiserror::Error)]
#[error("the API sent nothing for {0} s")]
pub(crate) struct Silent(pub u64);

impl Guard {
    /// Starts watching a request that may stay silent for `limit` at most.
    ///
    /// # Errors
    /// The watcher thread could not be started.
    pub(crate) fn new(limit: Duration) -> Result<Self, std::io::Error> {
        let Some(dog) = watchdog() else {
            return Err(std::io::Error::other(
                "cannot start the thread that times out silent APIs",
            ));
        };
        let ticks = limit.as_nanos().div_ceil(TICK.as_nanos());
        let watch = Arc::new(Watch {
            seen: AtomicU32::new(dog.tick.load(Ordering::SeqCst)),
            limit: u32::try_from(ticks)
                .unwrap_or(u32::MAX / 2)
                .min(u32::MAX / 2),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let key = {
            let mut watches = dog.watches.lock();
            let first = watches.is_empty();
            let key = watches.insert(watch.clone());
            if first {
                dog.first.notify_one();
            }
            key
        };
        Ok(Self { dog, watch, key })
    }

    /// The API showed a sign of life: its silence counts from now.
    pub(crate) fn alive(&self) {
        self.watch
            .seen
            .store(self.dog.tick.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Whether the API has been silent for too long, having the watcher wake `cx`'s
    /// task when it becomes so.
    fn silent(&self, cx: &Context<'_>) -> bool {
        self.watch.waker.register(cx.waker());
        self.watch.woken.store(false, Ordering::SeqCst);
        self.watch.silent_at(self.dog.tick.load(Ordering::SeqCst))
    }

    /// The limit, in whole seconds (for messages).
    fn limit_secs(&self) -> u64 {
        (u64::from(self.watch.limit) * TICK.as_millis() as u64).div_ceil(1000)
    }

    /// `future` (a request's answer head), failing with [`Silent`] when it does not
    /// come in time.
    pub(crate) fn until<F: Future + Unpin>(&self, future: F) -> Until<'_, F> {
        Until {
            guard: self,
            future,
        }
    }

    /// `response`, its body watched by this guard: a part of it that does not come
    /// in time fails the body with an I/O error of kind `TimedOut` (reqwest's
    /// `is_timeout()` is true of it).
    pub(crate) fn watch_body(self, response: reqwest::Response) -> reqwest::Response {
        let url = response.url().clone();
        let (mut parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
        // reqwest keeps a response's URL beside its parts: carried over as
        // `reqwest::Response::from` looks for it.
        let mut marked = http::response::Builder::new().url(url);
        if let Some(url) = marked.extensions_mut() {
            parts.extensions.extend(std::mem::take(url));
        }
        let body = reqwest::Body::wrap(Watched {
            inner: body,
            guard: self,
            started: false,
        });
        reqwest::Response::from(http::Response::from_parts(parts, body))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut watches = self.dog.watches.lock();
        watches.try_remove(self.key);
    }
}

/// See [`Guard::until`].
pub(crate) struct Until<'a, F> {
    guard: &'a Guard,
    future: F,
}

impl<F: Future + Unpin> Future for Until<'_, F> {
    type Output = Result<F::Output, Silent>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = Pin::new(&mut self.future).poll(cx) {
            self.guard.alive();
            return Poll::Ready(Ok(out));
        }
        if self.guard.silent(cx) {
            return Poll::Ready(Err(Silent(self.guard.limit_secs())));
        }
        Poll::Pending
    }
}

/// A response body watched by a [`Guard`].
struct Watched {
    inner: reqwest::Body,
    guard: Guard,
    /// Whether the body has been asked for yet: its silence counts from then, as the
    /// caller may read the body long after the head came.
    started: bool,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            this.guard.alive();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.guard.alive();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.guard.silent(cx) => {
                Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    Silent(this.guard.limit_secs()),
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
