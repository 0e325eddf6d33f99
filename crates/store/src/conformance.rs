//! The conformance suite: what every [`Store`] must do, run against each implementation.
//!
//! Call [`run`] with a store from your implementation; it panics, naming the
//! check, on the first failure. Checks use fresh ids and app slugs, so the
//! store need not be empty, and they leave their rows behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keyhaven_core::{
    AccountEvent, AccountFilter, AppSlug, ConnectedAccount, ConnectedAccountId, ConnectionStatus,
    Credentials, CredentialsUpdate, EntityId, EventKind, Integration, IntegrationId, Label,
    PendingState, SecretFields, Store, StoreError,
};

use chrono::Utc;

/// Runs every check against `store`.
pub async fn run(store: Arc<dyn Store>) {
    integrations_round_trip(&*store).await;
    find_or_insert_is_atomic(store.clone()).await;
    accounts_round_trip(&*store).await;
    update_is_compare_and_set(store.clone()).await;
    refreshed_writes_are_compare_and_set(store.clone()).await;
    delete_integration_in_use_is_refused(&*store).await;
    list_filters_and_pages(&*store).await;
    pending_states_are_single_use(store.clone()).await;
    account_locks_exclude_each_other(store.clone()).await;
    account_locks_carry_the_version_held(store.clone(), false).await;
    audit_lines_are_kept_by_account_and_time(&*store).await;
    events_are_kept_with_their_writes(&*store).await;
    deliveries_are_made_once_and_claimed_once(store.clone()).await;
}

fn event(kind: EventKind, acc: &ConnectedAccount) -> AccountEvent {
    AccountEvent::new(kind, acc, None, Utc::now(), "kh_conformance").unwrap()
}

async fn events_are_kept_with_their_writes(store: &dyn Store) {
    let int = integration(&unique_app("events"), "API_KEY");
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "alice", &[]);
    let created = event(EventKind::Created, &acc);
    store
        .insert_account(&acc, None, std::slice::from_ref(&created))
        .await
        .unwrap();
    // A refused write keeps none of its events.
    let dup = event(EventKind::Created, &acc);
    assert!(
        store
            .insert_account(&acc, None, std::slice::from_ref(&dup))
            .await
            .is_err()
    );
    let mut stale = acc.clone();
    stale.version += 7;
    let refused = event(EventKind::Failed, &stale);
    assert!(
        store
            .update_account(
                &stale,
                CredentialsUpdate::Keep,
                std::slice::from_ref(&refused)
            )
            .await
            .is_err()
    );
    let mut next = acc.clone();
    next.status = ConnectionStatus::Inactive;
    let inactive = event(EventKind::Inactive, &next);
    store
        .update_account(
            &next,
            CredentialsUpdate::Keep,
            std::slice::from_ref(&inactive),
        )
        .await
        .unwrap();
    let failed = event(EventKind::RefreshFailed, &next);
    store
        .append_events(std::slice::from_ref(&failed))
        .await
        .unwrap();
    let deleted = event(EventKind::Deleted, &next);
    assert!(
        store
            .delete_account(&acc.id, std::slice::from_ref(&deleted))
            .await
            .unwrap()
    );
    let again = event(EventKind::Deleted, &next);
    assert!(
        !store
            .delete_account(&acc.id, std::slice::from_ref(&again))
            .await
            .unwrap()
    );
    let after = store
        .events_after(Some(&created.id), 100)
        .await
        .unwrap()
        .expect("the first event is kept");
    let ids: Vec<&str> = after
        .iter()
        .filter(|e| e.connected_account_id == acc.id)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            inactive.id.as_str(),
            failed.id.as_str(),
            deleted.id.as_str()
        ],
        "the events written, in order, none of the refused writes'"
    );
    assert_eq!(after[0], inactive, "an event reads back as written");
    let first_two = store
        .events_after(Some(&created.id), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_two.len(), 2, "the limit holds");
    assert_eq!(
        store.events_after(Some("evt_never"), 10).await.unwrap(),
        None
    );
}

async fn deliveries_are_made_once_and_claimed_once(store: Arc<dyn Store>) {
    use keyhaven_core::{DeliveryFilter, DeliveryOutcome, DeliveryState, WebhookTarget};
    use std::time::Duration;
    let tag = IntegrationId::generate().unwrap();
    let all = WebhookTarget {
        key: format!("wh_all_{tag}"),
        kinds: Vec::new(),
    };
    let active = WebhookTarget {
        key: format!("wh_active_{tag}"),
        kinds: vec![EventKind::Active],
    };
    let targets = vec![all.clone(), active.clone()];
    let now = Utc::now();
    let lease = Duration::from_secs(30);
    // Targets seen for the first time get only the events from then on.
    let int = integration(&unique_app("outbox"), "API_KEY");
    store.insert_integration(&int).await.unwrap();
    let before = account(&int, "bob", &[]);
    store
        .insert_account(&before, None, &[event(EventKind::Created, &before)])
        .await
        .unwrap();
    assert!(
        store
            .claim_deliveries(&targets, now, lease, 100)
            .await
            .unwrap()
            .is_empty(),
        "no delivery of what came before the webhook"
    );
    let mut accounts = Vec::new();
    for _ in 0..5 {
        let mut acc = account(&int, "bob", &[]);
        acc.status = ConnectionStatus::Active;
        store
            .insert_account(
                &acc,
                None,
                &[
                    event(EventKind::Created, &acc),
                    event(EventKind::Active, &acc),
                ],
            )
            .await
            .unwrap();
        accounts.push(acc);
    }
    // Two claimers at once: every delivery claimed by exactly one.
    let (a, b) = tokio::join!(
        store.claim_deliveries(&targets, now, lease, 8),
        store.claim_deliveries(&targets, now, lease, 8)
    );
    let mut claimed: Vec<keyhaven_core::Delivery> = a.unwrap();
    claimed.extend(b.unwrap());
    claimed.extend(
        store
            .claim_deliveries(&targets, now, lease, 100)
            .await
            .unwrap(),
    );
    let mut ids: Vec<i64> = claimed.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), claimed.len(), "no delivery claimed twice");
    assert_eq!(
        claimed.len(),
        15,
        "10 events for one webhook, 5 for the other"
    );
    assert_eq!(
        claimed.iter().filter(|d| d.webhook == active.key).count(),
        5
    );
    assert!(claimed.iter().all(|d| d.attempts == 1 && d.claim.is_some()));
    assert!(
        store
            .claim_deliveries(&targets, now, lease, 100)
            .await
            .unwrap()
            .is_empty(),
        "held deliveries are not claimed again"
    );
    let (first, second, third) = (&claimed[0], &claimed[1], &claimed[2]);
    assert!(
        !store
            .finish_delivery(
                first.id,
                "not-the-claim",
                &DeliveryOutcome::Delivered { status: 200 },
                now
            )
            .await
            .unwrap(),
        "another claim cannot finish it"
    );
    assert!(
        store
            .finish_delivery(
                first.id,
                first.claim.as_deref().unwrap(),
                &DeliveryOutcome::Delivered { status: 204 },
                now
            )
            .await
            .unwrap()
    );
    let later = now + chrono::Duration::seconds(10);
    store
        .finish_delivery(
            second.id,
            second.claim.as_deref().unwrap(),
            &DeliveryOutcome::Retry {
                at: later,
                status: Some(503),
                error: "503 Service Unavailable".into(),
            },
            now,
        )
        .await
        .unwrap();
    store
        .finish_delivery(
            third.id,
            third.claim.as_deref().unwrap(),
            &DeliveryOutcome::Failed {
                status: Some(410),
                error: "the receiver refused it".into(),
            },
            now,
        )
        .await
        .unwrap();
    assert!(
        store
            .claim_deliveries(&targets, now, lease, 100)
            .await
            .unwrap()
            .is_empty(),
        "a retry waits for its time"
    );
    // At the retry's time, the retry is due; the other claims' leases ran out too.
    let expired = now + lease + chrono::Duration::seconds(1);
    let retried = store
        .claim_deliveries(&targets, expired, lease, 100)
        .await
        .unwrap();
    assert_eq!(
        retried.len(),
        13,
        "the retry and the 12 whose lease ran out"
    );
    let again = retried.iter().find(|d| d.id == second.id).unwrap();
    assert_eq!(again.attempts, 2);
    assert_eq!(again.last_status, Some(503));
    let taken_over = retried.iter().find(|d| d.id != second.id).unwrap();
    let stale = claimed.iter().find(|d| d.id == taken_over.id).unwrap();
    assert!(
        !store
            .finish_delivery(
                stale.id,
                stale.claim.as_deref().unwrap(),
                &DeliveryOutcome::Delivered { status: 200 },
                expired
            )
            .await
            .unwrap(),
        "a claim whose lease ran out and was taken over cannot finish"
    );
    let listed = store
        .list_deliveries(&DeliveryFilter {
            webhook: Some(all.key.clone()),
            limit: 100,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 10);
    assert!(listed.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let failed = store
        .list_deliveries(&DeliveryFilter {
            state: Some(DeliveryState::Failed),
            event_id: Some(third.event.id.clone()),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].last_error.as_deref(),
        Some("the receiver refused it")
    );
    let by_account = store
        .list_deliveries(&DeliveryFilter {
            account_id: Some(accounts[0].id.to_string()),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_account.len(),
        3,
        "created and active for one, active for the other"
    );
    let failed_before = store.count_deliveries(DeliveryState::Failed).await.unwrap();
    assert!(failed_before >= 1, "the failed one is counted");
    let redone = store.redeliver(third.id, expired).await.unwrap().unwrap();
    assert_eq!(
        store.count_deliveries(DeliveryState::Failed).await.unwrap(),
        failed_before - 1,
        "a redelivered one is pending again"
    );
    assert_eq!((redone.state, redone.attempts), (DeliveryState::Pending, 0));
    assert!(store.redeliver(i64::MAX, expired).await.unwrap().is_none());
    let claimed_again = store
        .claim_deliveries(&targets, expired, lease, 100)
        .await
        .unwrap();
    assert_eq!(
        claimed_again.iter().map(|d| d.id).collect::<Vec<_>>(),
        [third.id]
    );
    // Purging keeps the events whose delivery is pending.
    let far = expired + chrono::Duration::days(365);
    store.purge_events(far).await.unwrap();
    let pending = store
        .list_deliveries(&DeliveryFilter {
            webhook: Some(all.key.clone()),
            state: Some(DeliveryState::Pending),
            limit: 100,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert!(!pending.is_empty());
    let delivered = store
        .list_deliveries(&DeliveryFilter {
            event_id: Some(first.event.id.clone()),
            state: Some(DeliveryState::Delivered),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert!(
        delivered.is_empty(),
        "a finished delivery goes with its event"
    );
}

async fn audit_lines_are_kept_by_account_and_time(store: &dyn Store) {
    let t0 = Utc::now();
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let account = format!("ca_audit_{}", t0.timestamp_micros());
    let lines: Vec<keyhaven_core::AuditLine> = (0..10)
        .map(|i| keyhaven_core::AuditLine {
            at: at(i),
            account: if i % 2 == 0 {
                account.clone()
            } else {
                format!("{account}_other")
            },
            line: format!("{{\"n\":{i}}}"),
        })
        .collect();
    store.append_audit(&lines[..4]).await.unwrap();
    store.append_audit(&lines[4..]).await.unwrap();
    let all = store.audit_lines(&account, None, None, 100).await.unwrap();
    assert_eq!(
        all,
        [
            "{\"n\":0}",
            "{\"n\":2}",
            "{\"n\":4}",
            "{\"n\":6}",
            "{\"n\":8}"
        ]
    );
    let some = store
        .audit_lines(&account, Some(at(2)), Some(at(8)), 2)
        .await
        .unwrap();
    assert_eq!(
        some,
        ["{\"n\":4}", "{\"n\":6}"],
        "the newest 2 of [2, 8), oldest first"
    );
    assert!(
        store
            .audit_lines("ca_none", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn account_locks_exclude_each_other(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let id = ConnectedAccountId::generate().unwrap();
    let other = ConnectedAccountId::generate().unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (store, id, inside, max_inside) = (
            store.clone(),
            id.clone(),
            inside.clone(),
            max_inside.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let lock = store.lock_account(&id).await.unwrap();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            max_inside.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            lock.release().await.unwrap();
        }));
    }
    // Another account's lock is not held up by these.
    let other_lock = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.lock_account(&other),
    )
    .await
    .expect("another account's lock is free")
    .unwrap();
    other_lock.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(max_inside.load(Ordering::SeqCst), 1, "one holder at a time");
    // A lock dropped without release is released too.
    drop(store.lock_account(&id).await.unwrap());
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), store.lock_account(&id))
        .await
        .expect("a dropped lock is released")
        .unwrap();
    again.release().await.unwrap();
}

/// Checks that `store`'s locks carry their account's version
/// ([`keyhaven_core::AccountLock::version`]; [`run`] lets a store give none), and
/// the right one.
pub async fn locks_give_versions(store: Arc<dyn Store>) {
    account_locks_carry_the_version_held(store, true).await;
}

/// A lock's version, when the store gives one (`required`: it must), is the
/// account's as stored once the lock was held: a waiter sees what the holder before
/// it wrote, never the version from before (its holder would then skip the re-read
/// and refresh again).
async fn account_locks_carry_the_version_held(store: Arc<dyn Store>, required: bool) {
    let app = unique_app("lockver");
    let int = integration(&app, "API_KEY");
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "lock-version", &[]);
    store
        .insert_account(&acc, Some(&credentials("v1")), &[])
        .await
        .unwrap();
    let held = store.lock_account(&acc.id).await.unwrap();
    let first = held.version();
    assert!(
        (first.is_none() && !required) || first == Some(acc.version),
        "{first:?} for an account of version {}",
        acc.version
    );
    // A waiter queues while the holder writes, then the holder lets go.
    let waiter = tokio::spawn({
        let (store, id) = (store.clone(), acc.id.clone());
        async move { store.lock_account(&id).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let written = store
        .update_account(&acc, CredentialsUpdate::Refreshed(&credentials("v2")), &[])
        .await
        .unwrap();
    held.release().await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock once it is released")
        .unwrap()
        .unwrap();
    let seen = next.version();
    assert!(
        (seen.is_none() && !required) || seen == Some(written.version),
        "the waiter's lock says version {seen:?}, the holder wrote {}",
        written.version
    );
    next.release().await.unwrap();
    // An account that does not exist has no version.
    let gone = ConnectedAccountId::generate().unwrap();
    let lock = store.lock_account(&gone).await.unwrap();
    assert_eq!(lock.version(), None);
    lock.release().await.unwrap();
    store.delete_account(&acc.id, &[]).await.unwrap();
}

/// A slug no other check or run uses.
pub fn unique_app(prefix: &str) -> AppSlug {
    let id = IntegrationId::generate().unwrap();
    AppSlug::new(format!(
        "{prefix}-{}",
        &id.as_str()[id.as_str().len() - 12..]
    ))
    .unwrap()
}

/// An integration of `app` with a secret in it.
pub fn integration(app: &AppSlug, scheme: &str) -> Integration {
    let now = Utc::now();
    let mut secrets = SecretFields::new();
    secrets.insert("client_secret", "conformance-client-secret");
    let mut config = serde_json::Map::new();
    config.insert("client_id".into(), "cid".into());
    {
        let mut integration = Integration::new(
            IntegrationId::generate().unwrap(),
            app.clone(),
            format!("{app} {scheme}"),
            scheme,
            now,
        );
        integration.scopes = vec!["read".into(), "write".into()];
        integration.config = config;
        integration.secrets = secrets;
        integration
    }
}

/// An ACTIVE account under `int`.
pub fn account(int: &Integration, entity: &str, labels: &[&str]) -> ConnectedAccount {
    let now = Utc::now();
    let mut params = serde_json::Map::new();
    params.insert("subdomain".into(), "acme".into());
    {
        let mut account = ConnectedAccount::new(
            ConnectedAccountId::generate().unwrap(),
            EntityId::new(entity).unwrap(),
            int.id.clone(),
            int.app.clone(),
            int.auth_scheme.clone(),
            ConnectionStatus::Active,
            now,
        );
        account.labels = labels.iter().map(|l| Label::new(*l).unwrap()).collect();
        account.params = params;
        account.redirect_url = Some("https://app.example.com/done".into());
        account.expires_at = Some(now + chrono::Duration::hours(1));
        account
    }
}

/// Credentials holding `value` as their `token`.
pub fn credentials(value: &str) -> Credentials {
    let mut f = SecretFields::new();
    f.insert("token", value);
    f.insert(
        "nested",
        serde_json::json!({"refresh": format!("{value}-refresh")}),
    );
    Credentials::new(f, Some(Utc::now() + chrono::Duration::minutes(30)))
}

async fn integrations_round_trip(store: &dyn Store) {
    let app = unique_app("round");
    let a = integration(&app, "API_KEY");
    let b = integration(&app, "OAUTH2");
    store.insert_integration(&a).await.unwrap();
    store.insert_integration(&b).await.unwrap();
    let got = store
        .get_integration(&a.id)
        .await
        .unwrap()
        .expect("integration a is stored");
    assert_eq!(got.id, a.id);
    assert_eq!(got.app, a.app);
    assert_eq!(got.scopes, a.scopes);
    assert_eq!(got.config, a.config);
    assert_eq!(
        got.secrets, a.secrets,
        "integration secrets survive a round trip"
    );
    let listed = store.list_integrations(Some(&app)).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| &i.id).collect::<Vec<_>>(),
        [&a.id, &b.id],
        "oldest first"
    );
    assert!(matches!(
        store.insert_integration(&a).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!got.disabled, "a new integration is enabled");

    // An update replaces the settings and the status, and keeps app and birth.
    let mut changed = got.clone();
    changed.name = "renamed".into();
    changed.scopes = vec!["read".into(), "write".into()];
    changed.config.insert("header".into(), "X-Other".into());
    changed.secrets = SecretFields::new();
    changed.secrets.insert("client_secret", "new-secret");
    changed.disabled = true;
    changed.updated_at = got.updated_at + chrono::Duration::seconds(5);
    assert!(store.update_integration(&changed).await.unwrap());
    let after = store.get_integration(&a.id).await.unwrap().unwrap();
    assert_eq!(after.name, "renamed");
    assert_eq!(after.scopes, changed.scopes);
    assert_eq!(after.config, changed.config);
    assert_eq!(after.secrets, changed.secrets, "new secrets are stored");
    assert!(after.disabled, "the disabled flag is stored");
    assert_eq!(after.updated_at, changed.updated_at);
    assert_eq!(after.created_at, got.created_at);
    assert_eq!(after.app, got.app);
    let mut ghost = integration(&app, "API_KEY");
    ghost.name = "ghost".into();
    assert!(
        !store.update_integration(&ghost).await.unwrap(),
        "updating an integration that is not stored changes nothing"
    );
    assert!(store.get_integration(&ghost.id).await.unwrap().is_none());
    assert!(store.delete_integration(&b.id).await.unwrap());
    assert!(!store.delete_integration(&b.id).await.unwrap());
    assert!(store.get_integration(&b.id).await.unwrap().is_none());
}

async fn find_or_insert_is_atomic(store: Arc<dyn Store>) {
    let app = unique_app("race");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let candidate = integration(&app, "API_KEY");
        tasks.push(tokio::spawn(async move {
            store.find_or_insert_integration(&candidate).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap().id);
    }
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "concurrent find_or_insert stores one integration"
    );
    assert_eq!(store.list_integrations(Some(&app)).await.unwrap().len(), 1);
    // Another scheme for the same app is another integration.
    let other = store
        .find_or_insert_integration(&integration(&app, "BASIC"))
        .await
        .unwrap();
    assert_ne!(other.id, ids[0]);
}

async fn accounts_round_trip(store: &dyn Store) {
    let app = unique_app("acct");
    let int = integration(&app, "API_KEY");
    let orphan = account(&int, "alice", &[]);
    assert!(
        store.insert_account(&orphan, None, &[]).await.is_err(),
        "an account needs its integration"
    );
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "alice", &["a", "b"]);
    let creds = credentials("secret-token-1");
    store.insert_account(&acc, Some(&creds), &[]).await.unwrap();
    assert!(matches!(
        store.insert_account(&acc, None, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    let got = store.get_account(&acc.id).await.unwrap().unwrap();
    assert_eq!(normalised(&got), normalised(&acc));
    let (got, got_creds) = store
        .get_account_and_credentials(&acc.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, acc.id);
    let got_creds = got_creds.expect("credentials stored");
    assert_eq!(got_creds.expose(), creds.expose());
    assert_eq!(
        got_creds.expires_at().map(|t| t.timestamp_millis()),
        creds.expires_at().map(|t| t.timestamp_millis())
    );
    assert!(store.delete_account(&acc.id, &[]).await.unwrap());
    assert!(!store.delete_account(&acc.id, &[]).await.unwrap());
    assert!(store.get_account(&acc.id).await.unwrap().is_none());
    assert!(
        store
            .get_account_and_credentials(&acc.id)
            .await
            .unwrap()
            .is_none()
    );
}

/// Timestamps to the millisecond: stores may keep less precision than chrono.
fn normalised(a: &ConnectedAccount) -> ConnectedAccount {
    let mut a = a.clone();
    let ms = |t: chrono::DateTime<Utc>| {
        chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
    };
    a.created_at = ms(a.created_at);
    a.updated_at = ms(a.updated_at);
    a.expires_at = a.expires_at.map(ms);
    a
}

async fn update_is_compare_and_set(store: Arc<dyn Store>) {
    let app = unique_app("cas");
    let int = integration(&app, "API_KEY");
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "bob", &[]);
    store
        .insert_account(&acc, Some(&credentials("v1")), &[])
        .await
        .unwrap();

    let mut changed = acc.clone();
    changed.status = ConnectionStatus::Inactive;
    changed.status_reason = Some("disabled".into());
    let stored = store
        .update_account(&changed, CredentialsUpdate::Keep, &[])
        .await
        .unwrap();
    assert_eq!(stored.version, acc.version + 1);
    let (now, creds) = store
        .get_account_and_credentials(&acc.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, ConnectionStatus::Inactive);
    assert_eq!(now.version, stored.version);
    assert_eq!(creds.unwrap().get_str("token"), Some("v1"), "Keep keeps");

    // A stale version is refused and changes nothing.
    assert!(matches!(
        store
            .update_account(&changed, CredentialsUpdate::Clear, &[])
            .await,
        Err(StoreError::Conflict(_))
    ));
    let (_, creds) = store
        .get_account_and_credentials(&acc.id)
        .await
        .unwrap()
        .unwrap();
    assert!(creds.is_some(), "a refused update changes nothing");

    let v2 = credentials("v2");
    let stored = store
        .update_account(&stored, CredentialsUpdate::Set(&v2), &[])
        .await
        .unwrap();
    let (_, creds) = store
        .get_account_and_credentials(&acc.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.unwrap().get_str("token"), Some("v2"), "Set replaces");
    let stored = store
        .update_account(&stored, CredentialsUpdate::Clear, &[])
        .await
        .unwrap();
    let (_, creds) = store
        .get_account_and_credentials(&acc.id)
        .await
        .unwrap()
        .unwrap();
    assert!(creds.is_none(), "Clear clears");

    // Of concurrent writers from the same version, exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let mut mine = stored.clone();
        mine.status_reason = Some(format!("writer {i}"));
        tasks.push(tokio::spawn(async move {
            store
                .update_account(&mine, CredentialsUpdate::Keep, &[])
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(
        wins, 1,
        "compare-and-set lets one of concurrent writers win"
    );

    // An update replaces the labels the account is found by: those dropped no
    // longer find it, new ones do, kept ones still do (a label given twice counts once).
    let (mut labelled, _) = store
        .get_account_and_credentials(&acc.id)
        .await
        .unwrap()
        .unwrap();
    labelled.labels = ["red", "big"].map(|l| Label::new(l).unwrap()).to_vec();
    let labelled = store
        .update_account(&labelled, CredentialsUpdate::Keep, &[])
        .await
        .unwrap();
    let mut relabelled = labelled.clone();
    relabelled.labels = ["big", "new", "new"]
        .map(|l| Label::new(l).unwrap())
        .to_vec();
    store
        .update_account(&relabelled, CredentialsUpdate::Keep, &[])
        .await
        .unwrap();
    for (label, found) in [("red", false), ("big", true), ("new", true)] {
        let page = store
            .list_accounts(&AccountFilter {
                integration_ids: vec![int.id.clone()],
                labels: vec![Label::new(label).unwrap()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.items.len(), usize::from(found), "label {label}");
    }
    // A refused update leaves the labels as they were.
    assert!(matches!(
        store
            .update_account(&labelled, CredentialsUpdate::Keep, &[])
            .await,
        Err(StoreError::Conflict(_))
    ));
    let page = store
        .list_accounts(&AccountFilter {
            integration_ids: vec![int.id.clone()],
            labels: vec![Label::new("new").unwrap()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1, "a refused update keeps the labels");

    let mut ghost = account(&int, "bob", &[]);
    ghost.version = 1;
    assert!(matches!(
        store
            .update_account(&ghost, CredentialsUpdate::Keep, &[])
            .await,
        Err(StoreError::Missing { .. })
    ));
}

/// `CredentialsUpdate::Refreshed` is stored as `Set` is, whatever path a store
/// takes for it (PostgreSQL writes refreshes in groups, and an account the group
/// cannot write alone): many at once all land, each once; a stale version is
/// refused and changes nothing; changed labels or a moved entity are written with
/// it; a missing account is missing.
async fn refreshed_writes_are_compare_and_set(store: Arc<dyn Store>) {
    let int = integration(&unique_app("refreshed"), "OAUTH2");
    store.insert_integration(&int).await.unwrap();
    let mut accounts = Vec::new();
    for i in 0..300 {
        let acc = account(&int, &format!("refreshed-{i}"), &["storm"]);
        store
            .insert_account(&acc, Some(&credentials("old")), &[])
            .await
            .unwrap();
        accounts.push(acc);
    }
    // All at once, and each twice from the same version: one of each pair wins.
    let mut tasks = Vec::new();
    for (i, acc) in accounts.iter().enumerate() {
        for copy in 0..2 {
            let (store, mut acc) = (store.clone(), acc.clone());
            acc.updated_at = Utc::now();
            tasks.push(tokio::spawn(async move {
                let fresh = credentials(&format!("new-{i}-{copy}"));
                store
                    .update_account(&acc, CredentialsUpdate::Refreshed(&fresh), &[])
                    .await
                    .map(|stored| (i, copy, stored))
            }));
        }
    }
    let mut winners = std::collections::HashMap::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok((i, copy, stored)) => {
                assert_eq!(stored.version, accounts[i].version + 1);
                assert!(
                    winners.insert(i, copy).is_none(),
                    "account {i} written twice"
                );
            }
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), accounts.len(), "every account written once");
    // Read back all at once (PostgreSQL reads in groups), with ids that are not
    // there among them, and one id asked for three times.
    let mut reads = Vec::new();
    for (i, acc) in accounts.iter().enumerate() {
        let times = if i == 7 { 3 } else { 1 };
        for _ in 0..times {
            let (store, id) = (store.clone(), acc.id.clone());
            reads.push((
                Some(i),
                tokio::spawn(async move { store.get_account_and_credentials(&id).await }),
            ));
        }
        if i % 30 == 0 {
            let store = store.clone();
            let missing = ConnectedAccountId::generate().unwrap();
            reads.push((
                None,
                tokio::spawn(async move { store.get_account_and_credentials(&missing).await }),
            ));
        }
    }
    for (i, read) in reads {
        let found = read.await.unwrap().unwrap();
        let Some(i) = i else {
            assert!(found.is_none(), "a missing id reads as none");
            continue;
        };
        let (now, creds) = found.expect("a stored account reads back");
        assert_eq!(now.id, accounts[i].id);
        assert_eq!(now.version, accounts[i].version + 1);
        let token = format!("new-{i}-{}", winners[&i]);
        assert_eq!(creds.unwrap().get_str("token"), Some(token.as_str()));
    }
    // A stale version is refused and changes nothing.
    let stale = &accounts[0];
    assert!(matches!(
        store
            .update_account(
                stale,
                CredentialsUpdate::Refreshed(&credentials("late")),
                &[]
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    let (current, creds) = store
        .get_account_and_credentials(&stale.id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(creds.unwrap().get_str("token"), Some("late"));
    // Labels changed, then the entity moved, then the status, each with a refresh's
    // write: written, and found by them.
    let refresh_write = async |acc: &ConnectedAccount, token: &str| {
        store
            .update_account(acc, CredentialsUpdate::Refreshed(&credentials(token)), &[])
            .await
            .unwrap()
    };
    // How many accounts of this integration `filter` lists.
    let listed = async |filter: AccountFilter| {
        let filter = AccountFilter {
            integration_ids: vec![int.id.clone()],
            ..filter
        };
        store.list_accounts(&filter).await.unwrap().items.len()
    };
    let by_label = |entity: &str, label: &str| AccountFilter {
        entity_ids: vec![EntityId::new(entity).unwrap()],
        labels: vec![Label::new(label).unwrap()],
        ..Default::default()
    };
    let mut relabelled = current.clone();
    relabelled.labels = vec![Label::new("after").unwrap()];
    let relabelled = refresh_write(&relabelled, "relabelled").await;
    assert_eq!(relabelled.version, current.version + 1);
    for (label, found) in [("after", 1), ("storm", 0)] {
        assert_eq!(
            listed(by_label("refreshed-0", label)).await,
            found,
            "label {label} after a relabelling refresh"
        );
    }
    let mut moved = relabelled.clone();
    moved.entity_id = EntityId::new("refreshed-moved").unwrap();
    let moved = refresh_write(&moved, "moved").await;
    for (entity, found) in [("refreshed-moved", 1), ("refreshed-0", 0)] {
        assert_eq!(
            listed(by_label(entity, "after")).await,
            found,
            "label after of {entity}"
        );
    }
    // A new status and reason: listed by the new status only, and read back with
    // the reason and the new credentials.
    let mut expired = moved.clone();
    expired.status = ConnectionStatus::Expired;
    expired.status_reason = Some("refused".into());
    let expired = refresh_write(&expired, "expired").await;
    for (status, found) in [
        (ConnectionStatus::Expired, 1),
        (ConnectionStatus::Active, 0),
    ] {
        let filter = AccountFilter {
            entity_ids: vec![EntityId::new("refreshed-moved").unwrap()],
            statuses: vec![status],
            ..Default::default()
        };
        assert_eq!(
            listed(filter).await,
            found,
            "status {status:?} after a refresh's write"
        );
    }
    let (read, creds) = store
        .get_account_and_credentials(&expired.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, expired.version);
    assert_eq!(read.status_reason.as_deref(), Some("refused"));
    assert_eq!(creds.unwrap().get_str("token"), Some("expired"));
    let mut ghost = account(&int, "refreshed-ghost", &[]);
    ghost.version = 1;
    assert!(matches!(
        store
            .update_account(&ghost, CredentialsUpdate::Refreshed(&credentials("x")), &[])
            .await,
        Err(StoreError::Missing { .. })
    ));
}

async fn delete_integration_in_use_is_refused(store: &dyn Store) {
    let app = unique_app("inuse");
    let int = integration(&app, "API_KEY");
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "carol", &[]);
    store.insert_account(&acc, None, &[]).await.unwrap();
    assert!(matches!(
        store.delete_integration(&int.id).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.get_integration(&int.id).await.unwrap().is_some());
    store.delete_account(&acc.id, &[]).await.unwrap();
    assert!(store.delete_integration(&int.id).await.unwrap());
}

async fn list_filters_and_pages(store: &dyn Store) {
    let app1 = unique_app("list");
    let app2 = unique_app("list");
    let i1 = integration(&app1, "API_KEY");
    let i2 = integration(&app2, "API_KEY");
    store.insert_integration(&i1).await.unwrap();
    store.insert_integration(&i2).await.unwrap();
    let entity = format!("e-{}", &i1.id.as_str()[4..16]);
    let mut made = Vec::new();
    for n in 0..25 {
        let int = if n % 2 == 0 { &i1 } else { &i2 };
        let labels: &[&str] = match n % 3 {
            0 => &["red", "big"],
            1 => &["red"],
            _ => &[],
        };
        let mut acc = account(int, &entity, labels);
        if n % 5 == 0 {
            acc.status = ConnectionStatus::Expired;
        }
        store.insert_account(&acc, None, &[]).await.unwrap();
        made.push(acc);
    }
    let ent = EntityId::new(entity.clone()).unwrap();
    let by = |f: AccountFilter| async move {
        let mut out = Vec::new();
        let mut f = f;
        loop {
            let page = store.list_accounts(&f).await.unwrap();
            assert!(page.items.len() <= f.effective_limit());
            out.extend(page.items.into_iter().map(|a| a.id));
            match page.next_cursor {
                Some(c) => f.after = Some(ConnectedAccountId::parse(&c).unwrap()),
                None => break,
            }
        }
        out
    };
    let expect = |pred: &dyn Fn(usize, &ConnectedAccount) -> bool| -> Vec<ConnectedAccountId> {
        made.iter()
            .enumerate()
            .filter(|(n, a)| pred(*n, a))
            .map(|(_, a)| a.id.clone())
            .collect()
    };

    let all = by(AccountFilter {
        entity_ids: vec![ent.clone()],
        limit: 4,
        ..Default::default()
    })
    .await;
    assert_eq!(
        all,
        expect(&|_, _| true),
        "pages of 4 give every account once, in order"
    );
    // Counts match the listings, cursor and limit aside.
    let count = |f: AccountFilter| async move { store.count_accounts(&f).await.unwrap() };
    assert_eq!(
        count(AccountFilter {
            entity_ids: vec![ent.clone()],
            limit: 4,
            after: Some(made[3].id.clone()),
            ..Default::default()
        })
        .await,
        25
    );
    assert_eq!(
        count(AccountFilter {
            entity_ids: vec![ent.clone()],
            labels: vec![Label::new("red").unwrap(), Label::new("big").unwrap()],
            statuses: vec![ConnectionStatus::Expired],
            ..Default::default()
        })
        .await,
        expect(&|n, _| n % 3 == 0 && n % 5 == 0).len() as u64
    );
    assert_eq!(
        count(AccountFilter {
            entity_ids: vec![ent.clone()],
            apps: vec![app2.clone()],
            ..Default::default()
        })
        .await,
        expect(&|n, _| n % 2 == 1).len() as u64
    );
    let newest = by(AccountFilter {
        entity_ids: vec![ent.clone()],
        limit: 4,
        newest_first: true,
        ..Default::default()
    })
    .await;
    let mut reversed = expect(&|_, _| true);
    reversed.reverse();
    assert_eq!(
        newest, reversed,
        "newest first: pages of 4 give every account once, newest first"
    );
    let got = by(AccountFilter {
        entity_ids: vec![ent.clone()],
        statuses: vec![ConnectionStatus::Expired],
        limit: 2,
        newest_first: true,
        ..Default::default()
    })
    .await;
    let mut expired = expect(&|n, _| n % 5 == 0);
    expired.reverse();
    assert_eq!(got, expired, "newest first with a filter");

    let red = vec![Label::new("red").unwrap()];
    let red_big = vec![Label::new("red").unwrap(), Label::new("big").unwrap()];
    let got = by(AccountFilter {
        entity_ids: vec![ent.clone()],
        labels: red,
        ..Default::default()
    })
    .await;
    assert_eq!(got, expect(&|n, _| n % 3 != 2), "label filter");
    let got = by(AccountFilter {
        entity_ids: vec![ent.clone()],
        labels: red_big,
        limit: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(got, expect(&|n, _| n % 3 == 0), "all labels must match");
    let got = by(AccountFilter {
        entity_ids: vec![ent.clone()],
        apps: vec![app2.clone()],
        ..Default::default()
    })
    .await;
    assert_eq!(got, expect(&|n, _| n % 2 == 1), "app filter");
    let got = by(AccountFilter {
        entity_ids: vec![ent.clone()],
        integration_ids: vec![i1.id.clone()],
        statuses: vec![ConnectionStatus::Expired],
        ..Default::default()
    })
    .await;
    assert_eq!(
        got,
        expect(&|n, _| n % 2 == 0 && n % 5 == 0),
        "integration and status filters"
    );
    let none = by(AccountFilter {
        entity_ids: vec![EntityId::new(format!("{entity}-nobody")).unwrap()],
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());
}

async fn pending_states_are_single_use(store: Arc<dyn Store>) {
    let app = unique_app("pending");
    let int = integration(&app, "OAUTH2");
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "dora", &[]);
    store.insert_account(&acc, None, &[]).await.unwrap();
    let mut data = SecretFields::new();
    data.insert("code_verifier", "conformance-verifier");
    let fresh = PendingState::new(
        format!("state-{}", acc.id),
        acc.id.clone(),
        data,
        Utc::now() + chrono::Duration::minutes(10),
    );
    store.put_pending_state(&fresh).await.unwrap();
    assert!(
        store.put_pending_state(&fresh).await.is_err(),
        "a state is stored once"
    );

    // Reading does not use it up, and answers what was stored, decrypted.
    for _ in 0..2 {
        let read = store
            .get_pending_state(&fresh.state)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.account_id, acc.id);
        assert_eq!(
            read.data.get_str("code_verifier"),
            Some("conformance-verifier")
        );
    }
    assert!(
        store
            .get_pending_state("never-issued")
            .await
            .unwrap()
            .is_none()
    );

    // Of concurrent takes, exactly one gets it.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let key = fresh.state.clone();
        tasks.push(tokio::spawn(
            async move { store.take_pending_state(&key).await },
        ));
    }
    let mut got = Vec::new();
    for t in tasks {
        if let Some(p) = t.await.unwrap().unwrap() {
            got.push(p);
        }
    }
    assert_eq!(got.len(), 1, "a pending state is taken once");
    assert_eq!(got[0].account_id, acc.id);
    assert_eq!(
        got[0].data.get_str("code_verifier"),
        Some("conformance-verifier")
    );
    assert!(
        store
            .take_pending_state(&fresh.state)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_pending_state(&fresh.state)
            .await
            .unwrap()
            .is_none(),
        "a taken state is gone"
    );
    assert!(
        store
            .take_pending_state("never-issued")
            .await
            .unwrap()
            .is_none()
    );

    // Purge removes the expired ones only.
    let old = {
        let mut pending = fresh.clone();
        pending.state = format!("old-{}", acc.id);
        pending.expires_at = Utc::now() - chrono::Duration::minutes(1);
        pending
    };
    let live = {
        let mut pending = fresh.clone();
        pending.state = format!("live-{}", acc.id);
        pending
    };
    store.put_pending_state(&old).await.unwrap();
    store.put_pending_state(&live).await.unwrap();
    assert!(
        store
            .purge_expired_pending_states(Utc::now())
            .await
            .unwrap()
            >= 1
    );
    assert!(
        store
            .take_pending_state(&old.state)
            .await
            .unwrap()
            .is_none(),
        "expired one purged"
    );
    assert!(
        store
            .take_pending_state(&live.state)
            .await
            .unwrap()
            .is_some(),
        "live one kept"
    );
}

/// A fresh, empty PostgreSQL database for a test, made next to the one that
/// `KEYHAVEN_TEST_DATABASE_URL` names; `None` (after saying why) when it is unset,
/// unless `KEYHAVEN_REQUIRE_SERVICES=1`, which makes it a failure.
#[cfg(feature = "postgres")]
pub async fn fresh_postgres_database() -> Option<String> {
    #[allow(clippy::print_stderr)]
    let Ok(url) = std::env::var("KEYHAVEN_TEST_DATABASE_URL") else {
        let why = "KEYHAVEN_TEST_DATABASE_URL is not set: PostgreSQL tests are skipped (cargo xtask test sets it)";
        assert!(
            std::env::var("KEYHAVEN_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{why}"
        );
        eprintln!("SKIPPED: {why}");
        return None;
    };
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .expect("KEYHAVEN_TEST_DATABASE_URL connects");
    let name = format!(
        "kh_test_{}",
        &ConnectedAccountId::generate().unwrap().as_str()[3..]
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .expect("a database URL ends with /name");
    let (_, query) = url.split_once('?').unwrap_or((&url, ""));
    Some(if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    })
}
