//! Cache misses of one account at once share one store read, on PostgreSQL (where a
//! read awaits the database, so that the callers really are waiting together):
//! - 1,000 callers of a cold account with live credentials: one read, and every
//!   caller gets the same credentials;
//! - 1,000 callers of one expired token: one read before the refresh (the refresh
//!   lock shows the account unchanged since, so it is not read again), one token
//!   request;
//! - a caller whose account another instance refreshed while it waited for the
//!   refresh lock: read again under the lock, and that refresh reused;
//! - 200 callers of an account that is not `ACTIVE`: nothing to share, so each
//!   caller reads on its own and gets the error that says why;
//! - 200 expired accounts of one integration at once: each refreshed once, and the
//!   integration read once or twice: the first refreshes share the read in flight,
//!   the later ones use the copy it left (each would read it alone);
//! - credentials read through the server, of an account not cached: the account is
//!   read once, for the credentials and the audit line both; and 200 such reads of
//!   one expired token at once: read once for all of them, refreshed once.
//!
//! Store reads are counted with the library's own store metric
//! (`keyhaven_store_seconds_count{operation="get_account_and_credentials"}`),
//! recorded by a recorder local to the test's thread: each test runs everything on
//! one current-thread runtime inside [`metrics::with_local_recorder`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keyhaven::{ConnectionStatus, ErrorKind, Keyhaven, PostgresStore, Store, chrono};
use keyhaven_tests::storm::{
    TokenEndpoint, assert_each_refreshed_once, every_account_at_once, is_fresh, seed, seed_with,
    settle, total_refreshes,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Runs `test` on a current-thread runtime with a recorder of its own; `test` gets
/// the recorder's handle, to read the counts.
fn with_metrics<F: std::future::Future<Output = ()>>(test: impl FnOnce(PrometheusHandle) -> F) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || rt.block_on(test(handle)));
}

/// How many account-and-credentials reads reached the store.
fn store_reads(handle: &PrometheusHandle) -> u64 {
    store_calls(handle, "get_account_and_credentials")
}

/// How many calls of `operation` reached the store.
fn store_calls(handle: &PrometheusHandle, operation: &str) -> u64 {
    let text = handle.render();
    let label = format!("operation=\"{operation}\"");
    text.lines()
        .find(|l| l.starts_with("keyhaven_store_seconds_count{") && l.contains(&label))
        .and_then(|l| l.rsplit_once(' '))
        .map_or(0, |(_, n)| n.parse().unwrap())
}

/// A keyhaven on a fresh PostgreSQL database, or `None` (said why) without one.
async fn postgres() -> Option<(Keyhaven, Arc<dyn Store>)> {
    let url = keyhaven_store::conformance::fresh_postgres_database().await?;
    let (ring, _) = keyhaven_tests::new_key();
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url, ring).await.unwrap());
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    Some((kh, store))
}

/// A keyhaven on a fresh PostgreSQL database with one `ACTIVE` OAuth account whose
/// access token `live-0` is good for an hour, its token endpoint, and its id; `None`
/// (said why) without PostgreSQL.
async fn live_account() -> Option<(Keyhaven, TokenEndpoint, keyhaven::ConnectedAccountId)> {
    let (kh, store) = postgres().await?;
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let (_, ids) = seed_with(
        &kh,
        store.as_ref(),
        endpoint.integration(),
        1,
        "live",
        later,
    )
    .await;
    let id = ids.into_iter().next()?;
    settle(&kh, store.as_ref(), &id).await;
    Some((kh, endpoint, id))
}

/// `n` callers of `id` at once; what each got.
async fn at_once(kh: &Keyhaven, id: &str, n: usize) -> Vec<Result<String, keyhaven::Error>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (kh, id) = (kh.clone(), id.to_owned());
            tokio::spawn(async move {
                kh.credentials(&id)
                    .await
                    .map(|c| c.get_str("access_token").unwrap().to_owned())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[test]
fn a_thousand_misses_of_live_credentials_read_once() {
    with_metrics(|metrics| async move {
        let Some((kh, endpoint, id)) = live_account().await else {
            return;
        };
        let before = store_reads(&metrics);
        let got = at_once(&kh, id.as_str(), 1000).await;
        assert!(got.iter().all(|t| t.as_deref().unwrap() == "live-0"));
        assert_eq!(
            store_reads(&metrics) - before,
            1,
            "one read for 1,000 misses"
        );
        // Cached now: no read at all.
        let got = at_once(&kh, id.as_str(), 10).await;
        assert!(got.iter().all(|t| t.as_deref().unwrap() == "live-0"));
        assert_eq!(store_reads(&metrics) - before, 1);
        assert_eq!(endpoint.refreshes().len(), 0, "nothing was refreshed");
    });
}

#[test]
fn a_thousand_misses_of_one_expired_token_read_once_and_refresh_once() {
    with_metrics(|metrics| async move {
        let Some((kh, store)) = postgres().await else {
            return;
        };
        let endpoint = TokenEndpoint::start(Duration::ZERO).await;
        let (_, ids) = seed(&kh, store.as_ref(), &endpoint, 1).await;
        let id = &ids[0];
        settle(&kh, store.as_ref(), id).await;
        let before = store_reads(&metrics);
        let got = at_once(&kh, id.as_str(), 1000).await;
        let tokens: std::collections::HashSet<String> =
            got.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            tokens.len(),
            1,
            "every caller got the same token: {tokens:?}"
        );
        assert!(tokens.iter().all(|t| is_fresh(t)));
        assert_each_refreshed_once(&endpoint, 1);
        assert_eq!(
            store_reads(&metrics) - before,
            1,
            "the first caller's read only: the refresh lock showed the account unchanged since"
        );
    });
}

#[test]
fn an_account_changed_while_its_refresh_waited_for_the_lock_is_read_again() {
    with_metrics(|metrics| async move {
        let Some((kh, store)) = postgres().await else {
            return;
        };
        let endpoint = TokenEndpoint::start(Duration::ZERO).await;
        let (_, ids) = seed(&kh, store.as_ref(), &endpoint, 1).await;
        let id = ids[0].clone();
        settle(&kh, store.as_ref(), &id).await;
        // Another instance holds the account's refresh lock.
        let held = store.lock_account(&id).await.unwrap();
        let before = store_reads(&metrics);
        let caller = tokio::spawn({
            let (kh, id) = (kh.clone(), id.to_string());
            async move {
                kh.credentials(&id)
                    .await
                    .map(|c| c.get_str("access_token").unwrap().to_owned())
            }
        });
        // The caller has read the expired token and waits for the lock (this
        // runtime has one thread: it ran until it had to wait).
        while store_reads(&metrics) == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The holder refreshes meanwhile, then lets go.
        let mut account = store.get_account(&id).await.unwrap().unwrap();
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        let mut fields = keyhaven::SecretFields::new();
        fields.insert("access_token", "theirs");
        fields.insert("refresh_token", "rt-theirs");
        fields.insert("token_type", "Bearer");
        let theirs = keyhaven::Credentials::new(fields, Some(later));
        account.expires_at = Some(later);
        store
            .update_account(
                &account,
                keyhaven::CredentialsUpdate::Refreshed(&theirs),
                &[],
            )
            .await
            .unwrap();
        held.release().await.unwrap();
        let got = caller.await.unwrap().unwrap();
        assert_eq!(got, "theirs", "the refresh made meanwhile is reused");
        assert_eq!(total_refreshes(&endpoint), 0, "and not repeated");
        assert_eq!(
            store_reads(&metrics) - before,
            2,
            "read before the lock, and again under it: the lock showed another version"
        );
    });
}

#[test]
fn misses_of_an_account_that_is_not_active_each_get_the_error() {
    with_metrics(|metrics| async move {
        let Some((kh, _endpoint, id)) = live_account().await else {
            return;
        };
        let disabled = kh.connected_accounts().disable(id.as_str()).await.unwrap();
        assert_eq!(disabled.status, ConnectionStatus::Inactive);
        let before = store_reads(&metrics);
        let got = at_once(&kh, id.as_str(), 200).await;
        for r in &got {
            let e = r.as_ref().unwrap_err();
            assert!(matches!(e, keyhaven::Error::NotActive { .. }), "{e}");
            assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
            assert!(e.to_string().contains("INACTIVE"), "{e}");
        }
        assert_eq!(
            store_reads(&metrics) - before,
            200,
            "an error is not shared: each caller read on its own"
        );
    });
}

#[test]
fn refreshes_of_many_accounts_of_one_integration_share_its_reads() {
    const ACCOUNTS: usize = 200;
    with_metrics(|metrics| async move {
        let Some((kh, store)) = postgres().await else {
            return;
        };
        let endpoint = TokenEndpoint::start(Duration::ZERO).await;
        let (_, ids) = seed(&kh, store.as_ref(), &endpoint, ACCOUNTS).await;
        settle(&kh, store.as_ref(), &ids[ACCOUNTS - 1]).await;
        let before = store_calls(&metrics, "get_integration");
        every_account_at_once(&kh, &ids).await;
        assert_each_refreshed_once(&endpoint, ACCOUNTS);
        let reads = store_calls(&metrics, "get_integration") - before;
        // The first refreshes share one read; those after it use the copy it left.
        // (Before refreshes kept copies, the waves of a storm read it 3 to 5 times
        // on PostgreSQL; before reads were shared, once per refresh.) Two: one
        // refresh may start its read as the first read ends, before its copy is in.
        assert!(
            (1..=2).contains(&reads),
            "{reads} integration reads for {ACCOUNTS} refreshes"
        );
    });
}

/// The credentials key of the servers these tests start.
const CREDENTIALS_KEY: &str = "khc_coalesced_reads_test";

/// A server these tests started, and the credentials URL of their account.
struct Served {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

impl Served {
    /// Stops the server; it must end, cleanly, within 10 s.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("the server stops within 10 s")
            .unwrap()
            .expect("the server ran cleanly");
    }
}

/// Serves `kh` on a port of its own, with [`CREDENTIALS_KEY`], for `id`.
async fn serve(kh: Keyhaven, id: &keyhaven::ConnectedAccountId) -> Served {
    let mut state = keyhaven_server::AppState::new(
        kh,
        keyhaven_server::AdminKey::from_plain("kh_coalesced_reads_admin"),
    );
    state.credentials_key = Some(keyhaven_server::AdminKey::from_plain(CREDENTIALS_KEY));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/v1/connectedAccounts/{id}/credentials",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keyhaven_server::serve(listener, Arc::new(state), async {
        let _ = stopped.await;
    }));
    Served { url, stop, server }
}

/// Account reads of any kind that reached the store: with credentials, and without.
fn account_reads(metrics: &PrometheusHandle) -> u64 {
    store_reads(metrics) + store_calls(metrics, "get_account")
}

#[test]
fn a_credentials_read_through_the_server_reads_the_account_once() {
    with_metrics(|metrics| async move {
        let Some((kh, _endpoint, id)) = live_account().await else {
            return;
        };
        let served = serve(kh, &id).await;
        let before = account_reads(&metrics);
        let response = reqwest::Client::new()
            .get(&served.url)
            .header("x-api-key", CREDENTIALS_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["credentials"]["access_token"], "live-0");
        assert_eq!(
            account_reads(&metrics) - before,
            1,
            "one read of the account, for the credentials and the audit line's entity and app"
        );
        served.stop().await;
    });
}

/// 200 credentials reads through the server of one expired token, all queued while
/// its refresh waits for the provider (4 s: ample for 200 connections to reach the
/// server on a loaded machine; a caller that came after the refresh would read the
/// account from the store for its audit line): the first caller's read is the only
/// one. The callers queued behind it get the account with the credentials, for
/// their audit lines, and do not read it again each.
#[test]
fn credentials_reads_through_the_server_of_one_expired_token_read_the_account_once() {
    const CALLERS: usize = 200;
    with_metrics(|metrics| async move {
        let Some((kh, store)) = postgres().await else {
            return;
        };
        let endpoint = TokenEndpoint::start(Duration::from_secs(4)).await;
        let (_, ids) = seed(&kh, store.as_ref(), &endpoint, 1).await;
        let id = ids[0].clone();
        settle(&kh, store.as_ref(), &id).await;
        let served = serve(kh, &id).await;
        let before = account_reads(&metrics);
        let http = reqwest::Client::new();
        let calls: Vec<_> = (0..CALLERS)
            .map(|_| {
                let request = http.get(&served.url).header("x-api-key", CREDENTIALS_KEY);
                tokio::spawn(async move {
                    let response = request.send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let body: serde_json::Value = response.json().await.unwrap();
                    body["credentials"]["access_token"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
            })
            .collect();
        let mut tokens = std::collections::HashSet::new();
        for call in calls {
            tokens.insert(call.await.unwrap());
        }
        assert_eq!(tokens.len(), 1, "one token for all: {tokens:?}");
        assert!(tokens.iter().all(|t| is_fresh(t)));
        assert_each_refreshed_once(&endpoint, 1);
        assert_eq!(
            account_reads(&metrics) - before,
            1,
            "the first caller's read only, for {CALLERS} credentials reads and their audit lines"
        );
        served.stop().await;
    });
}
