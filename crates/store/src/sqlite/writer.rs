//! The writer: one thread of its own owns the store's write connection and commits
//! what is queued together (group commit).
//!
//! Writes used to go to tokio's blocking pool, one task per write, each taking the
//! writer connection's mutex and committing alone. A burst of writes (1,000 refreshes
//! at once: a lease taken, tokens stored, the lease dropped, each) then woke hundreds
//! of blocking-pool threads to wait on one mutex, and paid one commit per write: in
//! a profile of that storm, more than half the time went to the kernel's thread
//! wake-ups. Here a write is a job sent to the writer thread; the thread takes every
//! job waiting (at most [`MAX_GROUP`]), runs them one after another in one
//! `BEGIN IMMEDIATE` transaction, each in a savepoint of its own, and commits once.
//!
//! What a job sees is what it saw before: the jobs of a group run in order, each
//! sees the ones before it, and a job that fails is rolled back to its savepoint
//! alone (as its own transaction was), the others still commit. A job's answer is
//! given only after the group's commit: a caller never sees `Ok` for a write that
//! did not reach the database; a commit that fails fails every job of its group,
//! none of which was written. A job that panics is rolled back and its caller gets
//! an error; the thread goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread::JoinHandle;

use keyhaven_core::StoreError;
use parking_lot::Mutex;
use rusqlite::Connection;

use super::map_err;

/// The most jobs committed together: a long group delays the first job's answer by
/// the others' work (about 10 µs each, so at most a few milliseconds), and a short
/// one writes the same pages again in the next commit. In a warm refresh storm of
/// 1,000 distinct accounts (a lease taken, tokens written and the lease dropped,
/// each), groups of 256 rather than 64 took the storm from 50 to 46 ms (medians of
/// four runs in turns, BENCHMARKS.md); the PostgreSQL store's refresh writes use
/// groups of the same size.
const MAX_GROUP: usize = 256;

/// How a job's caller is told the outcome once its group is committed (`Ok`) or
/// could not be (the error).
type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A queued write.
trait Job: Send {
    /// Runs it on the write connection inside its group's transaction: whether it
    /// succeeded, and how to deliver its answer after the commit.
    fn run(self: Box<Self>, conn: &mut Connection) -> (bool, Deliver);
    /// Tells its caller why it was not run.
    fn refuse(self: Box<Self>, error: StoreError);
}

/// A write `f` whose result goes to `answer`.
struct Pending<F, A> {
    f: F,
    answer: A,
}

impl<T, F, A> Job for Pending<F, A>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    A: FnOnce(Result<T, StoreError>) + Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut Connection) -> (bool, Deliver) {
        let Self { f, answer } = *self;
        let result = f(conn);
        let ok = result.is_ok();
        let deliver: Deliver = Box::new(move |committed| {
            answer(match (committed, result) {
                // The job's own error says more than the commit's.
                (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
                (Ok(()), Ok(value)) => Ok(value),
            });
        });
        (ok, deliver)
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        (self.answer)(Err(error));
    }
}

/// The handle to the writer thread. Dropping it lets the thread finish what is
/// queued, close the connection and end; the drop waits for that, so the database
/// file is closed when the store is.
pub(super) struct Writer {
    jobs: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub(super) fn start(conn: Connection) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("keyhaven-sqlite-writer".into())
            .spawn(move || run(conn, &rx))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite writer thread: {e}"))
            })?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `f`; `answer` receives its result after the commit.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        answer: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let job: Box<dyn Job> = Box::new(Pending { f, answer });
        let jobs = self.jobs.lock();
        jobs.as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }

    /// Runs `f` in the writer thread and waits for its committed result.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| panicked())?
    }

    /// Queues `f` without waiting; a failure is logged with `what` it was.
    pub(super) fn detach(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<(), StoreError> + Send + 'static,
    ) {
        let queued = self.submit(f, move |r| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "{what} failed");
            }
        });
        if let Err(e) = queued {
            tracing::warn!(error = %e, "{what} failed");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // No more jobs: the thread drains the queue and ends.
        self.jobs.lock().take();
        // A job holding the last handle to its store would drop it here, in the
        // thread itself, which then ends once this job returns.
        if let Some(thread) = self.thread.lock().take()
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            tracing::error!("the SQLite writer thread panicked");
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite writer has stopped; open the store again".into())
}

fn panicked() -> StoreError {
    StoreError::Backend("a write to SQLite panicked; nothing of it was written".into())
}

/// The writer thread: a group of jobs per transaction until the queue is closed.
fn run(mut conn: Connection, jobs: &mpsc::Receiver<Box<dyn Job>>) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = jobs.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, group.drain(..));
    }
}

/// Runs one statement, prepared once per connection (these run several times per
/// write: parsing them each time was a visible part of a storm's profile).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// An error that fails a whole group, once per job.
fn group_failure(e: rusqlite::Error) -> impl Fn() -> StoreError {
    let text = format!("SQLite: {e}");
    let unavailable = matches!(map_err(e), StoreError::Unavailable(_));
    move || {
        if unavailable {
            StoreError::Unavailable(text.clone())
        } else {
            StoreError::Backend(text.clone().into())
        }
    }
}

/// Runs `group` in one transaction, each job in its own savepoint, commits, and
/// delivers every answer.
fn commit_group(conn: &mut Connection, group: impl Iterator<Item = Box<dyn Job>>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        // Nothing can be written (another process held the database past the busy
        // timeout, the disk is gone...): every job is told so, none ran.
        let error = group_failure(e);
        for job in group {
            job.refuse(error());
        }
        return;
    }
    let mut answers: Vec<Deliver> = Vec::new();
    // Set when the transaction's state is no longer known (a savepoint could not be
    // ended): then nothing of the group is committed.
    let mut broken = None;
    for job in group {
        if broken.is_some() {
            job.refuse(StoreError::Unavailable(
                "SQLite: an earlier write of the same transaction failed".into(),
            ));
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            broken = Some(group_failure(e));
            job.refuse(StoreError::Unavailable(
                "SQLite: cannot open a savepoint".into(),
            ));
            continue;
        }
        let (ok, deliver) = match catch_unwind(AssertUnwindSafe(|| job.run(conn))) {
            Ok((ok, deliver)) => (ok, Some(deliver)),
            // Its answer channel was dropped in the unwinding: its caller hears
            // that the write panicked.
            Err(_) => (false, None),
        };
        let ended = if ok {
            exec(conn, "RELEASE job")
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
        };
        if let Err(e) = ended {
            broken = Some(group_failure(e));
        }
        answers.extend(deliver);
    }
    let failed = match broken {
        Some(error) => {
            let _ = exec(conn, "ROLLBACK");
            Some(error)
        }
        None => match exec(conn, "COMMIT") {
            Ok(()) => None,
            Err(e) => {
                let _ = exec(conn, "ROLLBACK");
                Some(group_failure(e))
            }
        },
    };
    for deliver in answers {
        deliver(failed.as_ref().map_or(Ok(()), |e| Err(e())));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, Writer, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = super::super::schema::open_connection(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .unwrap();
        (dir, Writer::start(conn).unwrap(), path)
    }

    fn rows(path: &std::path::Path) -> Vec<i64> {
        let c = Connection::open(path).unwrap();
        let mut st = c.prepare("SELECT v FROM t ORDER BY v").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn insert(v: i64) -> impl FnOnce(&mut Connection) -> Result<(), StoreError> + Send {
        move |c| {
            c.execute("INSERT INTO t (v) VALUES (?1)", [v])
                .map_err(map_err)?;
            Ok(())
        }
    }

    /// Jobs queued while the writer is busy form one group: a job that fails is
    /// rolled back alone (its caller gets its error), one that panics too (its
    /// caller hears so), the others are committed and answered.
    #[tokio::test]
    async fn a_group_commits_its_good_jobs_and_rolls_back_the_rest() {
        let (_dir, w, path) = writer();
        let (hold, release) = std::sync::mpsc::channel::<()>();
        let first = w.run(move |c| {
            release.recv().unwrap();
            insert(1)(c)
        });
        let mut first = Box::pin(first);
        // The first job is running (it waits in the thread) once this gives Pending.
        assert!(futures::poll!(first.as_mut()).is_pending());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let good = w.run(insert(2));
        let half = w.run(|c| {
            insert(3)(c)?;
            // A duplicate key: the job fails after a row of its own was written.
            insert(2)(c)
        });
        let panics = w.run(|c| -> Result<(), StoreError> {
            insert(4)(c)?;
            panic!("a bug in a job")
        });
        let last = w.run(|c| {
            insert(5)(c)?;
            c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))
                .map_err(map_err)
        });
        hold.send(()).unwrap();
        first.await.unwrap();
        let (good, half, panics, last) = tokio::join!(good, half, panics, last);
        good.unwrap();
        assert!(matches!(half, Err(StoreError::Conflict(_))), "{half:?}");
        assert!(panics.unwrap_err().to_string().contains("panicked"));
        // The last job saw the jobs before it that were kept: 1, 2 and its own.
        assert_eq!(last.unwrap(), 3);
        assert_eq!(rows(&path), vec![1, 2, 5]);
    }

    /// An answer comes only after the commit: another connection sees the row as
    /// soon as the caller has its `Ok`.
    #[tokio::test]
    async fn an_answer_means_committed() {
        let (_dir, w, path) = writer();
        let calls: Vec<_> = (0..200).map(|v| w.run(insert(v))).collect();
        for (v, call) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            call.unwrap();
            assert!(rows(&path).contains(&(v as i64)));
        }
    }

    /// A commit that cannot be made fails every job of its group: another
    /// connection holds the write lock past the busy timeout.
    #[tokio::test]
    async fn a_group_that_cannot_begin_fails_every_job() {
        let (_dir, w, path) = writer();
        w.run(|c| {
            c.busy_timeout(std::time::Duration::from_millis(50))
                .map_err(map_err)
        })
        .await
        .unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (a, b) = tokio::join!(w.run(insert(1)), w.run(insert(2)));
        for r in [a, b] {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        other.execute_batch("ROLLBACK").unwrap();
        w.run(insert(3)).await.unwrap();
        assert_eq!(rows(&path), vec![3]);
    }

    /// Dropping the writer finishes what is queued and closes the connection.
    #[test]
    fn drop_finishes_queued_work() {
        let (_dir, w, path) = writer();
        for v in 0..10 {
            w.detach("test insert", insert(v));
        }
        drop(w);
        assert_eq!(rows(&path).len(), 10);
    }
}
