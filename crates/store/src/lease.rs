//! SQLite refresh leases: the cross-process refresh lock of [`SqliteStore`], a row
//! in `refresh_leases` per locked account, taken in a `BEGIN IMMEDIATE` transaction.
//!
//! A lease names its holder: the machine's boot id, the holder's PID namespace, its
//! PID and that process's start time, and 128 random bits. A lease lapses
//! - when its holder releases it or drops it (a `DELETE` of the row, queued to the
//!   store's writer);
//! - at once when its holder process is gone: a waiter on the same machine, in the
//!   same PID namespace, sees in `/proc` that the PID no longer runs, or runs a
//!   later process (PID reuse), and takes the lease over. This is what makes a
//!   holder killed with SIGKILL release its lock without waiting;
//! - otherwise after the lease time ([`DEFAULT_LEASE`], settable with
//!   [`SqliteStore::set_refresh_lease`]): holders elsewhere (another PID namespace,
//!   as two containers sharing a volume) or on systems without `/proc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use keyhaven_core::{AccountLock, ConnectedAccountId, StoreError};
use rusqlite::{OptionalExtension, params};

use crate::rows::micros;
use crate::sqlite::{SqliteStore, map_err};

/// How long a lease lasts when its holder cannot be seen to have died: longer than
/// any refresh may take (a token request times out well before).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How long [`keyhaven_core::Store::lock_account`] waits for a lease.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The lease time of one store, in milliseconds.
#[derive(Debug)]
pub(crate) struct LeaseTime(AtomicU64);

impl Default for LeaseTime {
    fn default() -> Self {
        Self(AtomicU64::new(DEFAULT_LEASE.as_millis() as u64))
    }
}

impl LeaseTime {
    pub(crate) fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, lease: Duration) {
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        self.0.store(ms, Ordering::Relaxed);
    }
}

/// Who this process is, as written into the leases it holds:
/// `BOOT_ID/PIDNS/PID/START/`, followed by a random token per lease. Empty parts
/// where `/proc` does not tell.
fn process_identity() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        format!(
            "{}/{}/{pid}/{}/",
            boot_id().unwrap_or_default(),
            pid_namespace().unwrap_or_default(),
            start_time(pid).unwrap_or_default()
        )
    })
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, in clock ticks
/// since boot), or `None` when no such process runs (or `/proc` does not tell).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')':
    // the fields after the last ')' start with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the holder named in a lease is known to be gone: same boot, same PID
/// namespace, and its PID no longer runs the process that took the lease.
fn holder_is_gone(holder: &str) -> bool {
    let mut parts = holder.split('/');
    let (Some(boot), Some(ns), Some(pid), Some(start)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // Ours, as read once at the first lease (empty parts: `/proc` did not tell).
    let mut mine = process_identity().split('/');
    let (Some(my_boot), Some(my_ns)) = (mine.next(), mine.next()) else {
        return false;
    };
    if my_boot.is_empty() || my_ns.is_empty() {
        return false;
    }
    if boot != my_boot || ns != my_ns || start.is_empty() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    // `/proc` is there (we read our own identity from it): no entry means no process.
    start_time(pid).as_deref() != Some(start)
}

/// A refresh lease on one account.
pub(crate) struct Lease {
    store: SqliteStore,
    account: String,
    holder: String,
    /// The account's version read when the lease was taken.
    version: Option<u64>,
}

impl Lease {
    /// Takes the lease of `id`, waiting (with growing pauses up to 100 ms) while a
    /// live holder has it, at most [`LOCK_WAIT`].
    pub(crate) async fn acquire(
        store: &SqliteStore,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError> {
        let holder = format!("{}{}", process_identity(), crate::random_token()?);
        let lease = store.refresh_lease();
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let (account, me) = (id.to_string(), holder.clone());
            // The lease as it will be held: dropped while the write below is queued
            // (the caller gave up), it queues the lease's removal behind it, since the
            // write may still take the lease once no one is left to release it.
            let mut pending = Lease {
                store: store.clone(),
                account: id.to_string(),
                holder: holder.clone(),
                version: None,
            };
            let acquired = store
                .write(move |conn, _| {
                    let now = micros(Utc::now());
                    let taken: Option<(String, i64)> = conn
                        .prepare_cached(
                            "SELECT holder, expires_at FROM refresh_leases WHERE account_id = ?1",
                        )
                        .and_then(|mut st| {
                            st.query_row([&account], |r| Ok((r.get(0)?, r.get(1)?)))
                                .optional()
                        })
                        .map_err(map_err)?;
                    let free = taken.is_none_or(|(other, until)| {
                        until <= now || holder_is_gone(&other)
                    });
                    if !free {
                        return Ok(None);
                    }
                    let until = now
                        .saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO refresh_leases (account_id, holder, expires_at) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut st| st.execute(params![account, me, until]))
                    .map_err(map_err)?;
                    // Read in the writer's transaction, which no other process can
                    // write in: what any later refresh of another holder must change.
                    let version: Option<i64> = conn
                        .prepare_cached("SELECT version FROM connected_accounts WHERE id = ?1")
                        .and_then(|mut st| st.query_row([&account], |r| r.get(0)).optional())
                        .map_err(map_err)?;
                    Ok(Some(version.and_then(|v| u64::try_from(v).ok())))
                })
                .await
                .inspect_err(|_| pending.disarm())?;
            if let Some(version) = acquired {
                pending.version = version;
                return Ok(Box::new(pending));
            }
            // Not taken: nothing to remove.
            pending.disarm();
            if started.elapsed() > LOCK_WAIT {
                return Err(StoreError::Unavailable(format!(
                    "the refresh lock of {id} was held for more than {LOCK_WAIT:?}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn delete(conn: &rusqlite::Connection, account: &str, holder: &str) -> Result<(), StoreError> {
        conn.prepare_cached("DELETE FROM refresh_leases WHERE account_id = ?1 AND holder = ?2")
            .and_then(|mut st| st.execute(params![account, holder]))
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl AccountLock for Lease {
    /// Queues the lease's removal and returns without waiting for its commit: the
    /// writer commits it with the next group of writes (a refresh storm's lease
    /// removals ride along with the next leases and tokens). This process's later
    /// writes come after it in the queue, so they see the lease gone; other
    /// processes see it at that commit. Should the write fail, the failure is
    /// logged and the lease lapses as a dead holder's does.
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        drop(self);
        Ok(())
    }

    fn version(&self) -> Option<u64> {
        self.version
    }
}

impl Lease {
    /// Makes dropping this lease do nothing: it was not taken.
    fn disarm(&mut self) {
        self.holder.clear();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.holder.is_empty() {
            return;
        }
        let (account, holder) = (
            std::mem::take(&mut self.account),
            std::mem::take(&mut self.holder),
        );
        // Queued, not waited for: see `release`.
        self.store.write_detached(
            "releasing a refresh lease (it lapses by itself)",
            move |conn| Lease::delete(conn, &account, &holder),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn our_own_identity_is_alive_and_a_finished_process_is_gone() {
        let me = process_identity();
        assert!(!holder_is_gone(&format!("{me}token")));
        if boot_id().is_none() {
            return; // no /proc: nothing is ever seen to be gone
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_time(pid).expect("a running child has a start time");
        let boot = boot_id().unwrap();
        let ns = pid_namespace().unwrap();
        let holder = format!("{boot}/{ns}/{pid}/{start}/token");
        assert!(!holder_is_gone(&holder), "a running holder is alive");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(holder_is_gone(&holder), "{holder}");
        // Another boot or namespace: not ours to judge.
        assert!(!holder_is_gone(&format!("other/{ns}/{pid}/1/t")));
        assert!(!holder_is_gone(&format!("{boot}/other/{pid}/1/t")));
        // Malformed holders are never taken over early.
        assert!(!holder_is_gone("0123456789abcdef"));
        assert!(!holder_is_gone(""));
    }

    /// A caller that gives up while its lease is still queued behind other writes
    /// leaves no lease behind: the write takes it after the caller is gone, and the
    /// removal queued when the caller gave up follows it. Before, the lease stayed
    /// until it lapsed (60 s: its holder, this process, is alive).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_given_up_while_queued_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ring = crate::KeyRing::new(crate::MasterKey::generate().unwrap(), []);
        let store = SqliteStore::open(dir.path().join("kh.db"), ring).unwrap();
        let id = ConnectedAccountId::generate().unwrap();
        // The writer busy for a while: the lease's write waits behind it.
        let busy = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(|_, _| {
                        std::thread::sleep(Duration::from_millis(1000));
                        Ok(())
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), Lease::acquire(&store, &id)).await;
        assert!(gave_up.is_err(), "given up while queued");
        busy.await.unwrap().unwrap();
        let again = tokio::time::timeout(Duration::from_secs(5), Lease::acquire(&store, &id))
            .await
            .expect("the lease given up is not held")
            .unwrap();
        drop(again);
    }

    #[test]
    fn start_time_reads_past_a_command_name_with_parentheses() {
        let me = std::process::id();
        if let Some(t) = start_time(me) {
            assert!(t.parse::<u64>().is_ok(), "{t}");
        }
    }
}
