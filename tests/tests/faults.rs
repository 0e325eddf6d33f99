//! Provider faults during the code exchange and during refresh, against a token
//! endpoint on 127.0.0.1 that misbehaves on request: server errors, an HTML page
//! instead of a token, a 50 MB answer, an answer without a token. Afterwards the
//! account is in a clear state (exchange: `FAILED` with a reason; refresh: still
//! `ACTIVE`, the error says the provider is unavailable), nothing secret is in any
//! error, memory is not spent on a huge answer, and once the provider behaves the
//! service resumes by itself. (Timeouts and slow providers: `tests/oauth2.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keyhaven::chrono;
use keyhaven::{
    ConnectionRequest, ConnectionStatus, Credentials, CredentialsUpdate, ErrorKind, Keyhaven,
    Label, ManualClock, MemoryStore, PostgresStore, SecretFields, SqliteStore, Store,
};
use keyhaven_tests::storm::{Fault, TokenEndpoint, is_fresh, seed};

/// The tests of `check` on each store: in memory, SQLite in a directory of its
/// own, and PostgreSQL in a fresh database (skipped, saying why, without one).
macro_rules! on_every_store {
    ($check:ident: $memory:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $memory() {
            $check(Arc::new(MemoryStore::new())).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            let (ring, _) = keyhaven_tests::new_key();
            let store = SqliteStore::open(dir.path().join("kh.db"), ring).unwrap();
            $check(Arc::new(store)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
                return;
            };
            let (ring, _) = keyhaven_tests::new_key();
            let store = PostgresStore::connect(&url, ring).await.unwrap();
            $check(Arc::new(store)).await;
        }
    };
}

const FAULTS: [Fault; 5] = [
    Fault::Status(500),
    Fault::Status(503),
    Fault::Malformed,
    Fault::Huge(50 * 1024 * 1024),
    Fault::NoToken,
];

fn setup() -> (Keyhaven, Arc<dyn Store>, Arc<ManualClock>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .clock(clock.clone())
        .callback_url("http://127.0.0.1:9/callback")
        .build()
        .unwrap();
    (kh, store, clock)
}

fn no_secret(text: &str) {
    for secret in ["storm-secret", "rt-", "old-", "at-rt-", "code-"] {
        assert!(!text.contains(secret), "{secret:?} in {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_refresh_leave_the_account_active_and_it_recovers() {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let (kh, store, clock) = setup();
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, FAULTS.len()).await;
    // The seeded tokens expired a minute before the real now; the clock follows.
    for (fault, id) in FAULTS.iter().zip(&ids) {
        endpoint.set_fault(Some(fault.clone()));
        let err = tokio::time::timeout(Duration::from_secs(20), kh.credentials(id.as_str()))
            .await
            .expect("a faulty provider does not hang the caller")
            .unwrap_err();
        let text = err.to_string();
        no_secret(&text);
        let account = kh.connected_accounts().get(id.as_str()).await.unwrap();
        match fault {
            // A provider that answers 200 without a token has refused nothing:
            // either kind is acceptable, but it must be told clearly.
            Fault::NoToken | Fault::Malformed => assert!(
                matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Rejected),
                "{fault:?}: {text}"
            ),
            _ => assert_eq!(err.kind(), ErrorKind::Unavailable, "{fault:?}: {text}"),
        }
        if err.kind() == ErrorKind::Unavailable {
            assert_eq!(account.status, ConnectionStatus::Active, "{fault:?}");
        }
        if matches!(fault, Fault::Huge(_)) {
            assert!(text.contains("more than 1024 KiB"), "{text}");
        }
    }
    // The provider behaves again: after the back-off, every account that stayed
    // ACTIVE refreshes by itself on the next read.
    endpoint.set_fault(None);
    clock.advance(chrono::Duration::seconds(10));
    for id in &ids {
        let account = kh.connected_accounts().get(id.as_str()).await.unwrap();
        if account.status != ConnectionStatus::Active {
            continue;
        }
        let creds = kh.credentials(id.as_str()).await.unwrap();
        assert!(is_fresh(creds.get_str("access_token").unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_the_code_exchange_fail_the_connection_clearly() {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let (kh, _store, _clock) = setup();
    let integration = kh
        .integrations()
        .create(endpoint.integration())
        .await
        .unwrap();
    for (n, fault) in FAULTS.iter().enumerate() {
        endpoint.set_fault(Some(fault.clone()));
        let out = kh
            .initiate_connection(ConnectionRequest::for_integration(integration.id.as_str()))
            .await
            .unwrap();
        let redirect = keyhaven::url::Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
        let state = redirect
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let query = BTreeMap::from([
            ("code".to_owned(), format!("code-{n}")),
            ("state".to_owned(), state),
        ]);
        let outcome = tokio::time::timeout(Duration::from_secs(20), kh.handle_callback(&query))
            .await
            .expect("a faulty provider does not hang the callback")
            .unwrap();
        assert!(!outcome.succeeded(), "{fault:?}");
        let account = kh
            .connected_accounts()
            .get(out.connected_account_id.as_str())
            .await
            .unwrap();
        assert_eq!(account.status, ConnectionStatus::Failed, "{fault:?}");
        let reason = account.status_reason.unwrap_or_default();
        assert!(!reason.is_empty(), "{fault:?}: a reason is given");
        no_secret(&reason);
    }
    // Behaving again: a new connection goes through.
    endpoint.set_fault(None);
    let out = kh
        .initiate_connection(ConnectionRequest::for_integration(integration.id.as_str()))
        .await
        .unwrap();
    let redirect = keyhaven::url::Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    let state = redirect
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let query = BTreeMap::from([
        ("code".to_owned(), "good".to_owned()),
        ("state".to_owned(), state),
    ]);
    assert!(kh.handle_callback(&query).await.unwrap().succeeded());
    assert_eq!(endpoint.code_exchanges(), 1);
}

/// A caller that gives up while its refresh waits for the provider (a request that
/// timed out, a client gone) does not cut the refresh short: what the provider gave
/// is written and the lock released, so the next caller, in this process or
/// another, gets it without a second token request (which a provider that rotates
/// refresh tokens would refuse, the first having spent the old one).
async fn a_caller_that_gives_up_does_not_lose_its_refresh(store: Arc<dyn Store>) {
    let endpoint = TokenEndpoint::start(Duration::from_millis(400)).await;
    let build = || {
        Keyhaven::builder()
            .shared_store(store.clone())
            .callback_url("http://127.0.0.1:9/callback")
            .build()
            .unwrap()
    };
    let kh = build();
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, 2).await;
    for (n, id) in ids.iter().enumerate() {
        let gave_up = tokio::time::timeout(Duration::from_millis(100), kh.credentials(id.as_str()));
        assert!(
            gave_up.await.is_err(),
            "the caller gave up before the provider answered"
        );
        // The first account is asked for again here, the second by another instance.
        let next = if n == 0 { kh.clone() } else { build() };
        let fresh = tokio::time::timeout(Duration::from_secs(30), next.credentials(id.as_str()))
            .await
            .expect("the next caller is not held up")
            .unwrap();
        let rt = format!("rt-{n}");
        assert_eq!(
            fresh.get_str("access_token"),
            Some(format!("at-{rt}-1").as_str())
        );
        assert_eq!(endpoint.refreshes().get(&rt), Some(&1), "one token request");
    }
}

on_every_store!(a_caller_that_gives_up_does_not_lose_its_refresh: a_caller_that_gives_up_does_not_lose_its_refresh_in_memory, a_caller_that_gives_up_does_not_lose_its_refresh_in_sqlite, a_caller_that_gives_up_does_not_lose_its_refresh_in_postgres);

/// What is written to an account while its refresh waits for the provider (by a
/// process whose refresh lock lapsed, or an app changing its labels) is not lost
/// when the refresh stores its result: a label added meanwhile stays beside the
/// fresh token, and credentials written meanwhile win over the refresh's (the
/// refresh hands the caller those), since the provider may already have retired
/// the refresh token the refresh used.
async fn a_refresh_keeps_what_was_written_during_it(store: Arc<dyn Store>) {
    // Long enough for the write meanwhile, under load too.
    let endpoint = TokenEndpoint::start(Duration::from_millis(1500)).await;
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .callback_url("http://127.0.0.1:9/callback")
        .build()
        .unwrap();
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, 2).await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut fields = SecretFields::new();
    fields.insert("access_token", "written-meanwhile");
    fields.insert("refresh_token", "rt-meanwhile");
    fields.insert("token_type", "Bearer");
    let winner = Credentials::new(fields, Some(later));

    for (n, id) in ids.iter().enumerate() {
        let refreshing = tokio::spawn({
            let (kh, id) = (kh.clone(), id.clone());
            async move { kh.credentials(id.as_str()).await }
        });
        // The token request is in, and waits: write meanwhile.
        let rt = format!("rt-{n}");
        while !endpoint.refreshes().contains_key(&rt) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut account = store.get_account(id).await.unwrap().unwrap();
        let change = if n == 0 {
            account.labels.push(Label::new("added-meanwhile").unwrap());
            CredentialsUpdate::Keep
        } else {
            CredentialsUpdate::Set(&winner)
        };
        store.update_account(&account, change, &[]).await.unwrap();

        let got = refreshing.await.unwrap().unwrap();
        let (stored, credentials) = store
            .get_account_and_credentials(id)
            .await
            .unwrap()
            .unwrap();
        let stored_token = credentials
            .unwrap()
            .get_str("access_token")
            .map(str::to_owned);
        if n == 0 {
            assert_eq!(got.get_str("access_token"), Some("at-rt-0-1"));
            assert_eq!(
                stored_token.as_deref(),
                Some("at-rt-0-1"),
                "the fresh token is stored"
            );
            assert!(
                stored
                    .labels
                    .iter()
                    .any(|l| l.as_str() == "added-meanwhile"),
                "{:?}",
                stored.labels
            );
        } else {
            assert_eq!(
                got.get_str("access_token"),
                Some("written-meanwhile"),
                "the caller gets what was written meanwhile"
            );
            assert_eq!(
                stored_token.as_deref(),
                Some("written-meanwhile"),
                "and it stays stored"
            );
        }
        assert_eq!(endpoint.refreshes().get(&rt), Some(&1));
    }
}

on_every_store!(a_refresh_keeps_what_was_written_during_it: a_refresh_keeps_what_was_written_during_it_in_memory, a_refresh_keeps_what_was_written_during_it_in_sqlite, a_refresh_keeps_what_was_written_during_it_in_postgres);
