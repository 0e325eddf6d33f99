//! The library API end to end with the static schemes: integrations, initiate,
//! listing, status changes, credentials, and bad input that must change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven::{
    AccountFilter, ConnectedAccount, ConnectionRequest, ConnectionStatus, EntityId, ErrorKind,
    Integration, IntegrationUpdate, Keyhaven, Label, MemoryStore, NewIntegration, OutgoingRequest,
    http::Method, serde_json, url::Url,
};

const SECRET: &str = "sk-test-0123456789-SECRET";

fn kh() -> Keyhaven {
    Keyhaven::builder()
        .store(MemoryStore::new())
        .allow_redirect_url("https://app.example.com/")
        .build()
        .unwrap()
}

fn openai(key: &str) -> ConnectionRequest {
    ConnectionRequest::for_app("openai")
        .scheme("API_KEY")
        .param("api_key", key)
}

/// Everything in the store, to compare before and after a refused call.
async fn snapshot(kh: &Keyhaven) -> (Vec<Integration>, Vec<ConnectedAccount>) {
    let ints = kh.integrations().list(None).await.unwrap();
    let accs = kh
        .connected_accounts()
        .list_all(AccountFilter::default())
        .await
        .unwrap();
    (ints, accs)
}

fn ids(s: &(Vec<Integration>, Vec<ConnectedAccount>)) -> (Vec<String>, Vec<(String, u64)>) {
    (
        s.0.iter().map(|i| i.id.to_string()).collect(),
        s.1.iter().map(|a| (a.id.to_string(), a.version)).collect(),
    )
}

#[tokio::test]
async fn api_key_connection_is_active_at_once_for_the_default_entity() {
    let kh = kh();
    let out = kh.initiate_connection(openai(SECRET)).await.unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Active);
    assert_eq!(out.redirect_url, None);
    let account = kh
        .connected_accounts()
        .get(out.connected_account_id.as_str())
        .await
        .unwrap();
    assert_eq!(account.entity_id, EntityId::default());
    assert_eq!(account.entity_id.as_str(), "default");
    assert_eq!(account.app.as_str(), "openai");
    assert_eq!(account.auth_scheme, "API_KEY");
    let creds = kh.credentials(account.id.as_str()).await.unwrap();
    assert_eq!(creds.get_str("api_key"), Some(SECRET));
    // The default entity handle sees it; another entity does not.
    assert_eq!(kh.default_entity().connections().await.unwrap().len(), 1);
    assert!(
        kh.entity("bob")
            .unwrap()
            .connections()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        kh.default_entity()
            .connection("openai")
            .await
            .unwrap()
            .map(|a| a.id),
        Some(account.id)
    );
}

#[tokio::test]
async fn output_uses_the_seed_wire_names() {
    let kh = kh();
    let out = kh
        .entity("alice")
        .unwrap()
        .initiate_connection(openai(SECRET))
        .await
        .unwrap();
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["connectionStatus"], "ACTIVE");
    assert_eq!(
        json["connectedAccountId"],
        out.connected_account_id.as_str()
    );
    assert!(json.as_object().unwrap().contains_key("redirectUrl"));
}

#[tokio::test]
async fn request_accepts_both_spellings() {
    let kh = kh();
    let camel: ConnectionRequest = serde_json::from_value(serde_json::json!({
        "appName": "openai", "entityId": "alice", "authScheme": "API_KEY",
        "data": {"api_key": SECRET}, "labels": ["x"], "redirectUri": "https://app.example.com/cb"
    }))
    .unwrap();
    let snake: ConnectionRequest = serde_json::from_value(serde_json::json!({
        "app": "openai", "entity_id": "alice", "auth_scheme": "API_KEY",
        "connected_account_params": {"api_key": SECRET}, "labels": ["x"],
        "redirect_url": "https://app.example.com/cb"
    }))
    .unwrap();
    for req in [camel, snake] {
        assert!(
            !format!("{req:?}").contains(SECRET),
            "a request's Debug hides params"
        );
        let out = kh.initiate_connection(req).await.unwrap();
        let acc = kh
            .connected_accounts()
            .get(out.connected_account_id.as_str())
            .await
            .unwrap();
        assert_eq!(acc.entity_id.as_str(), "alice");
        assert_eq!(acc.labels, vec![Label::new("x").unwrap()]);
        assert_eq!(
            acc.redirect_url.as_deref(),
            Some("https://app.example.com/cb")
        );
    }
    assert_eq!(
        kh.integrations().list(Some("openai")).await.unwrap().len(),
        1
    );
    let by_id: ConnectionRequest = serde_json::from_value(serde_json::json!({
        "integrationId": kh.integrations().list(None).await.unwrap()[0].id,
        "connectedAccountParams": {"api_key": SECRET}
    }))
    .unwrap();
    kh.initiate_connection(by_id).await.unwrap();
}

#[tokio::test]
async fn several_integrations_for_one_app() {
    let kh = kh();
    let a = kh
        .integrations()
        .create(NewIntegration::new("github", "BEARER_TOKEN").name("GitHub PAT"))
        .await
        .unwrap();
    let b = kh
        .integrations()
        .create(
            NewIntegration::new("github", "API_KEY")
                .name("GitHub via header")
                .config("header_name", "x-token")
                .config("header_format", "token {api_key}")
                .config("base_url", "https://api.github.com"),
        )
        .await
        .unwrap();
    let c = kh
        .integrations()
        .create(NewIntegration::new("github", "BEARER_TOKEN").name("second PAT"))
        .await
        .unwrap();
    let listed: Vec<_> = kh
        .integrations()
        .list(Some("github"))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, [a.id.clone(), b.id.clone(), c.id.clone()]);
    assert_eq!(
        kh.integrations()
            .get(b.id.as_str())
            .await
            .unwrap()
            .config_str("base_url"),
        Some("https://api.github.com")
    );

    // Connect through a chosen integration, and through the other one of the same scheme.
    let out1 = kh
        .initiate_connection(
            ConnectionRequest::for_integration(a.id.as_str()).param("token", SECRET),
        )
        .await
        .unwrap();
    let out2 = kh
        .initiate_connection(
            ConnectionRequest::for_integration(c.id.as_str()).param("token", SECRET),
        )
        .await
        .unwrap();
    let acc1 = kh
        .connected_accounts()
        .get(out1.connected_account_id.as_str())
        .await
        .unwrap();
    let acc2 = kh
        .connected_accounts()
        .get(out2.connected_account_id.as_str())
        .await
        .unwrap();
    assert_eq!(acc1.integration_id, a.id);
    assert_eq!(acc2.integration_id, c.id);

    // By app with scheme BEARER_TOKEN: the oldest such integration is used, none is created.
    let out3 = kh
        .initiate_connection(
            ConnectionRequest::for_app("github")
                .scheme("bearer_token")
                .param("token", SECRET),
        )
        .await
        .unwrap();
    assert_eq!(
        kh.connected_accounts()
            .get(out3.connected_account_id.as_str())
            .await
            .unwrap()
            .integration_id,
        a.id
    );
    assert_eq!(
        kh.integrations().list(Some("github")).await.unwrap().len(),
        3
    );

    // The custom header integration authorizes as configured.
    let out4 = kh
        .initiate_connection(
            ConnectionRequest::for_integration(b.id.as_str()).param("api_key", SECRET),
        )
        .await
        .unwrap();
    let req = OutgoingRequest::new(
        Method::GET,
        Url::parse("https://api.github.com/user").unwrap(),
    );
    let req = kh
        .authorize(out4.connected_account_id.as_str(), req)
        .await
        .unwrap();
    assert_eq!(
        req.headers["x-token"].to_str().unwrap(),
        format!("token {SECRET}")
    );

    // An integration in use cannot be deleted; an unused one can.
    let err = kh.integrations().delete(a.id.as_str()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let unused = kh
        .integrations()
        .create(NewIntegration::new("github", "NO_AUTH"))
        .await
        .unwrap();
    kh.integrations().delete(unused.id.as_str()).await.unwrap();
    assert_eq!(
        kh.integrations()
            .get(unused.id.as_str())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn initiate_by_app_creates_the_integration_once() {
    let kh = kh();
    assert!(
        kh.integrations()
            .list(Some("openai"))
            .await
            .unwrap()
            .is_empty()
    );
    let request = || openai(SECRET).config("header_format", "Bearer {api_key}");
    let first = kh.initiate_connection(request()).await.unwrap();
    let ints = kh.integrations().list(Some("openai")).await.unwrap();
    assert_eq!(ints.len(), 1);
    assert_eq!(ints[0].auth_scheme, "API_KEY");
    let second = kh.initiate_connection(request()).await.unwrap();
    let third = kh
        .entity("carol")
        .unwrap()
        .initiate_connection(openai("other"))
        .await
        .unwrap();
    assert_eq!(
        kh.integrations().list(Some("openai")).await.unwrap().len(),
        1,
        "reused, not created again"
    );
    for out in [first, second, third] {
        let acc = kh
            .connected_accounts()
            .get(out.connected_account_id.as_str())
            .await
            .unwrap();
        assert_eq!(acc.integration_id, ints[0].id);
    }
    // A different auth_config for the app's existing integration is refused, not silently ignored.
    let err = kh
        .initiate_connection(openai(SECRET).config("header_name", "x-api-key"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("auth_config") && err.to_string().contains(ints[0].id.as_str()),
        "{err}"
    );

    // Concurrent first initiates for a new app still create one integration.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let kh = kh.clone();
        tasks.push(tokio::spawn(async move {
            kh.initiate_connection(
                ConnectionRequest::for_app("mistral")
                    .scheme("API_KEY")
                    .param("api_key", "k"),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let ints = kh.integrations().list(Some("mistral")).await.unwrap();
    assert_eq!(ints.len(), 1);
    let accounts = kh
        .connected_accounts()
        .list_all(AccountFilter {
            apps: vec!["mistral".parse().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(accounts.len(), 16);
    assert!(accounts.iter().all(|a| a.integration_id == ints[0].id));
}

#[tokio::test]
async fn labels_filter_needs_every_label() {
    let kh = kh();
    let mut ids = Vec::new();
    for labels in [
        vec!["team:sales", "prod"],
        vec!["team:sales"],
        vec!["prod"],
        vec![],
    ] {
        let mut req = openai(SECRET);
        for l in labels {
            req = req.label(l);
        }
        ids.push(
            kh.initiate_connection(req)
                .await
                .unwrap()
                .connected_account_id,
        );
    }
    let filter = |labels: &[&str]| AccountFilter {
        labels: labels.iter().map(|l| Label::new(*l).unwrap()).collect(),
        ..Default::default()
    };
    let got = |accs: Vec<ConnectedAccount>| accs.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let accs = kh.connected_accounts();
    assert_eq!(
        got(accs.list_all(filter(&["team:sales"])).await.unwrap()),
        [ids[0].clone(), ids[1].clone()]
    );
    assert_eq!(
        got(accs.list_all(filter(&["prod"])).await.unwrap()),
        [ids[0].clone(), ids[2].clone()]
    );
    assert_eq!(
        got(accs
            .list_all(filter(&["prod", "team:sales"]))
            .await
            .unwrap()),
        [ids[0].clone()]
    );
    assert!(accs.list_all(filter(&["nope"])).await.unwrap().is_empty());
    assert_eq!(accs.list_all(filter(&[])).await.unwrap().len(), 4);
    // No more labels than an account may carry, named in the error; repeats count once.
    let many: Vec<String> = (0..=keyhaven::LABELS_MAX_COUNT)
        .map(|i| format!("l{i}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = accs.list_all(filter(&refs)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .contains(&format!("at most {} labels", keyhaven::LABELS_MAX_COUNT)),
        "{err}"
    );
    let mut repeated = refs[..keyhaven::LABELS_MAX_COUNT].to_vec();
    repeated.push(refs[0]);
    assert!(accs.list_all(filter(&repeated)).await.unwrap().is_empty());
    // Pages.
    let page = accs
        .list(&AccountFilter {
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    let rest = accs
        .list(&AccountFilter {
            limit: 3,
            after: page.next_cursor.map(|c| c.parse().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got(rest.items), [ids[3].clone()]);
    assert!(rest.next_cursor.is_none());
}

#[tokio::test]
async fn bad_input_is_refused_by_name_and_changes_nothing() {
    let kh = kh();
    let existing = kh.initiate_connection(openai(SECRET)).await.unwrap();
    let github = kh
        .integrations()
        .create(NewIntegration::new("github", "BEARER_TOKEN"))
        .await
        .unwrap();
    let before = snapshot(&kh).await;

    let cases: Vec<(&str, ConnectionRequest, &[&str])> = vec![
        (
            "unknown scheme",
            ConnectionRequest::for_app("slack")
                .scheme("MAGIC_LINK")
                .param("api_key", SECRET),
            &["MAGIC_LINK", "not registered", "API_KEY"],
        ),
        (
            "catalogue app whose OAuth client is not configured",
            ConnectionRequest::for_app("slack"),
            &[
                "auth_config.client_id",
                "client_secret",
                "KEYHAVEN_SLACK_CLIENT_ID",
            ],
        ),
        (
            "missing param",
            ConnectionRequest::for_app("anthropic").scheme("API_KEY"),
            &["connected_account_params.api_key", "required"],
        ),
        (
            "empty param",
            ConnectionRequest::for_app("anthropic")
                .scheme("API_KEY")
                .param("api_key", ""),
            &["connected_account_params.api_key", "empty"],
        ),
        (
            "unknown param",
            ConnectionRequest::for_app("anthropic")
                .scheme("API_KEY")
                .param("api_key", SECRET)
                .param("apiKey", SECRET),
            &[
                "connected_account_params.apiKey",
                "not a known field",
                "api_key",
            ],
        ),
        (
            "unknown config field",
            ConnectionRequest::for_app("anthropic")
                .scheme("API_KEY")
                .param("api_key", SECRET)
                .config("client_id", "x"),
            &["auth_config.client_id", "not a known field"],
        ),
        (
            "unknown integration id",
            ConnectionRequest::for_integration("int_0000000000000000deadbeefdeadbeef")
                .param("token", SECRET),
            &["int_0000000000000000deadbeefdeadbeef", "not found"],
        ),
        (
            "malformed integration id",
            ConnectionRequest::for_integration("ca_0123456789abcdef").param("token", SECRET),
            &["not a valid id", "int_"],
        ),
        (
            "invalid entity id",
            openai(SECRET).entity("alice smith"),
            &["entity_id", "' '"],
        ),
        (
            "integration of another app",
            ConnectionRequest::for_integration(github.id.as_str())
                .param("token", SECRET)
                .label("x")
                .entity("alice")
                .scheme("BEARER_TOKEN")
                .redirect_url("https://app.example.com/b"),
            &[],
        ),
        (
            "app differs from the integration's",
            {
                let mut r =
                    ConnectionRequest::for_integration(github.id.as_str()).param("token", SECRET);
                r.app = Some("gitlab".into());
                r
            },
            &["app", "github", "gitlab"],
        ),
        (
            "scheme differs from the integration's",
            ConnectionRequest::for_integration(github.id.as_str())
                .scheme("API_KEY")
                .param("api_key", SECRET),
            &["auth_scheme", "BEARER_TOKEN", "API_KEY"],
        ),
        (
            "neither integration nor app",
            ConnectionRequest::default().param("api_key", SECRET),
            &["integration_id", "app"],
        ),
        (
            "bad app slug",
            ConnectionRequest::for_app("Open AI")
                .scheme("API_KEY")
                .param("api_key", SECRET),
            &["app"],
        ),
        ("bad label", openai(SECRET).label("a,b"), &["labels"]),
        (
            "bad redirect",
            openai(SECRET).redirect_url("javascript:alert(1)"),
            &["redirect_url"],
        ),
        (
            "redirect off the allowlist",
            openai(SECRET).redirect_url("https://evil.example.net/cb"),
            &["redirect_url", "https://evil.example.net", "allowlist"],
        ),
        (
            "redirect on the allowed host under another port",
            openai(SECRET).redirect_url("https://app.example.com:8443/cb"),
            &["redirect_url", "allowlist"],
        ),
        (
            "header injection",
            ConnectionRequest::for_app("anthropic")
                .scheme("API_KEY")
                .param("api_key", "k\r\nX-Evil: 1"),
            &["connected_account_params.api_key", "control character"],
        ),
    ];
    for (what, request, words) in cases {
        let result = kh.initiate_connection(request).await;
        if words.is_empty() {
            // A control case: valid, so it must succeed; undo it to keep the snapshot.
            let out = result.unwrap_or_else(|e| panic!("{what}: {e}"));
            kh.connected_accounts()
                .delete(out.connected_account_id.as_str())
                .await
                .unwrap();
            continue;
        }
        let err = result.expect_err(what);
        let msg = err.to_string();
        for w in words {
            assert!(msg.contains(w), "{what}: {msg:?} should mention {w:?}");
        }
        assert!(
            !msg.contains(SECRET) && !format!("{err:?}").contains(SECRET),
            "{what}: error leaks the secret"
        );
        assert_eq!(
            err.kind(),
            if what.contains("unknown integration") {
                ErrorKind::NotFound
            } else {
                ErrorKind::InvalidInput
            },
            "{what}: {msg}"
        );
        assert_eq!(
            ids(&snapshot(&kh).await),
            ids(&before),
            "{what}: the store changed"
        );
    }
    assert!(kh.entity("alice smith").is_err());
    assert!(kh.entity(&"x".repeat(129)).is_err());
    let other = kh.entity("alice").unwrap();
    let err = other
        .initiate_connection(openai(SECRET).entity("bob"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("bob") && err.to_string().contains("alice"),
        "{err}"
    );
    assert_eq!(ids(&snapshot(&kh).await), ids(&before));
    // The account made before is untouched.
    kh.credentials(existing.connected_account_id.as_str())
        .await
        .unwrap();
}

#[tokio::test]
async fn integrations_refuse_bad_config() {
    let kh = kh();
    let cases: Vec<(NewIntegration, &str)> = vec![
        (NewIntegration::new("openai", "NOPE"), "not registered"),
        (NewIntegration::new("OpenAI", "API_KEY"), "app"),
        (
            NewIntegration::new("openai", "API_KEY").config("header_name", ""),
            "auth_config.header_name",
        ),
        (
            NewIntegration::new("openai", "API_KEY").config("base_url", "ftp://x"),
            "auth_config.base_url",
        ),
        (
            NewIntegration::new("openai", "API_KEY").config("secret_sauce", 1),
            "auth_config.secret_sauce",
        ),
        (
            NewIntegration::new("openai", "API_KEY").scope("a b"),
            "scopes",
        ),
        (NewIntegration::new("openai", "API_KEY").name(" "), "name"),
    ];
    for (new, field) in cases {
        let err = kh.integrations().create(new).await.unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(kh.integrations().list(None).await.unwrap().is_empty());
    assert_eq!(
        kh.integrations().get("int_nope").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn disable_enable_delete_and_credentials_by_status() {
    let kh = kh();
    let id = kh
        .initiate_connection(openai(SECRET))
        .await
        .unwrap()
        .connected_account_id;
    let accounts = kh.connected_accounts();
    let disabled = accounts.disable(id.as_str()).await.unwrap();
    assert_eq!(disabled.status, ConnectionStatus::Inactive);
    assert_eq!(
        accounts.disable(id.as_str()).await.unwrap().version,
        disabled.version,
        "idempotent"
    );
    let err = kh.credentials(id.as_str()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("INACTIVE") && msg.contains("enable"), "{msg}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let listed = accounts
        .list_all(AccountFilter {
            statuses: vec![ConnectionStatus::Inactive],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let enabled = accounts.enable(id.as_str()).await.unwrap();
    assert_eq!(enabled.status, ConnectionStatus::Active);
    assert_eq!(enabled.status_reason, None);
    assert_eq!(
        kh.credentials(id.as_str())
            .await
            .unwrap()
            .get_str("api_key"),
        Some(SECRET)
    );
    accounts.delete(id.as_str()).await.unwrap();
    assert_eq!(
        accounts.get(id.as_str()).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        kh.credentials(id.as_str()).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        accounts.delete(id.as_str()).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        accounts.enable("ca_missing0000").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn no_secret_in_debug_display_or_json() {
    let kh = kh();
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("acme-jira")
                .scheme("BASIC")
                .config("base_url", "https://acme.atlassian.net")
                .param("username", "admin@x.io")
                .param("password", SECRET),
        )
        .await
        .unwrap();
    let id = out.connected_account_id.as_str();
    let account = kh.connected_accounts().get(id).await.unwrap();
    let creds = kh.credentials(id).await.unwrap();
    let integration = kh
        .integrations()
        .list(Some("acme-jira"))
        .await
        .unwrap()
        .remove(0);
    let req = kh
        .authorize(
            id,
            OutgoingRequest::new(
                Method::GET,
                Url::parse("https://x.atlassian.net/rest").unwrap(),
            ),
        )
        .await
        .unwrap();
    let shown = [
        format!("{account:?}"),
        serde_json::to_string(&account).unwrap(),
        format!("{creds:?}"),
        format!("{integration:?}"),
        serde_json::to_string(&integration).unwrap(),
        format!("{req:?}"),
        format!("{out:?}"),
        format!("{kh:?}"),
        format!("{:?}", kh.store()),
    ];
    for s in &shown {
        assert!(!s.contains(SECRET), "leaked in {s}");
        assert!(!s.contains("admin@x.io"), "username leaked in {s}");
    }
    let err = kh
        .connected_accounts()
        .disable(id)
        .await
        .map(|_| ())
        .and(kh.credentials(id).await.map(|_| ()))
        .unwrap_err();
    assert!(!err.to_string().contains(SECRET) && !format!("{err:?}").contains(SECRET));
}

#[tokio::test]
async fn a_scheme_can_replace_a_built_in_one() {
    use keyhaven::{
        AccountContext, AuthScheme, Credentials, InitiateContext, Initiated, SchemeError,
        SchemeSpec, SecretFields, async_trait,
    };
    /// API_KEY that always sends a fixed header name, for this test.
    struct Shouting;
    #[async_trait]
    impl AuthScheme for Shouting {
        fn name(&self) -> &str {
            "API_KEY"
        }
        fn spec(&self) -> SchemeSpec {
            SchemeSpec::new("shouting")
                .with_params(vec![keyhaven::FieldSpec::required("api_key", "k").secret()])
        }
        async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
            Ok(Initiated::Active {
                credentials: Credentials::without_expiry(cx.params.secret.clone()),
            })
        }
        fn authorize(
            &self,
            cx: &AccountContext<'_>,
            r: &mut OutgoingRequest,
        ) -> Result<(), SchemeError> {
            let key = cx
                .credentials
                .get_str("api_key")
                .unwrap_or_default()
                .to_uppercase();
            r.set_secret_header("x-shout", &key)
        }
    }
    let _ = SecretFields::new();
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .register(Shouting)
        .build()
        .unwrap();
    let id = kh
        .initiate_connection(openai("quiet"))
        .await
        .unwrap()
        .connected_account_id;
    let req = OutgoingRequest::new(
        Method::GET,
        Url::parse("https://api.openai.com/v1/models").unwrap(),
    );
    let req = kh.authorize(id.as_str(), req).await.unwrap();
    assert_eq!(req.headers["x-shout"], "QUIET");

    let bare = Keyhaven::builder()
        .store(MemoryStore::new())
        .without_default_schemes()
        .build()
        .unwrap();
    let err = bare.initiate_connection(openai("k")).await.unwrap_err();
    assert!(err.to_string().contains("registered: none"), "{err}");
}

#[tokio::test]
async fn an_integration_may_allow_more_redirects_than_the_global_list() {
    let kh = kh();
    let int = kh
        .integrations()
        .create(NewIntegration::new("acme-crm", "API_KEY").config(
            "redirect_allowlist",
            serde_json::json!(["https://tenant.example/back/"]),
        ))
        .await
        .unwrap();
    let ok = ConnectionRequest::for_integration(int.id.as_str())
        .param("api_key", SECRET)
        .redirect_url("https://tenant.example/back/done");
    kh.initiate_connection(ok).await.unwrap();
    let outside = ConnectionRequest::for_integration(int.id.as_str())
        .param("api_key", SECRET)
        .redirect_url("https://tenant.example/elsewhere");
    let err = kh.initiate_connection(outside).await.unwrap_err();
    assert!(err.to_string().contains("redirect_url"), "{err}");
    let err = kh
        .integrations()
        .create(
            NewIntegration::new("acme-crm", "API_KEY")
                .config("redirect_allowlist", serde_json::json!(["not a url"])),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redirect_allowlist"), "{err}");
}

/// A name nobody defined (a typo of a catalogue slug) is refused with the closest
/// catalogue names, and nothing is made; an app of one's own with its settings is.
#[tokio::test]
async fn an_unknown_app_is_refused_with_the_closest_names() {
    let kh = kh();
    let err = kh
        .initiate_connection(
            ConnectionRequest::for_app("opnai")
                .scheme("API_KEY")
                .param("api_key", SECRET),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let text = err.to_string();
    assert!(text.contains("did you mean openai?"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    let (ints, accs) = snapshot(&kh).await;
    assert!(ints.is_empty() && accs.is_empty(), "nothing stored");
    let err = kh
        .initiate_connection(ConnectionRequest::for_app("zzqx-nothing-like-it").scheme("API_KEY"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("did you mean"), "{err}");

    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("my-own-api")
                .scheme("API_KEY")
                .config("base_url", "https://api.mine.example/v1")
                .param("api_key", SECRET),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Active);
}

/// Scopes in an auth config, as Composio's integrations carry them: a list, or one
/// string separated by commas or spaces; they replace the catalogue's defaults.
#[tokio::test]
async fn scopes_come_in_the_auth_config_as_a_list_or_a_string() {
    let kh = kh();
    for (given, expected) in [
        (
            serde_json::json!("repo, read:user"),
            vec!["repo", "read:user"],
        ),
        (
            serde_json::json!("repo read:user"),
            vec!["repo", "read:user"],
        ),
        (serde_json::json!(["gist", "repo"]), vec!["gist", "repo"]),
    ] {
        let integration = kh
            .integrations()
            .create(
                NewIntegration::new("github", "OAUTH2")
                    .name(format!("github {given}"))
                    .config("client_id", "gh-id")
                    .config("client_secret", "gh-secret")
                    .config("scopes", given.clone()),
            )
            .await
            .unwrap();
        assert_eq!(integration.scopes, expected, "{given}");
        assert!(integration.config.get("scopes").is_none());
    }
    let err = kh
        .integrations()
        .create(
            NewIntegration::new("github", "OAUTH2")
                .config("client_id", "gh-id")
                .config("scopes", serde_json::json!({"repo": true})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("auth_config.scopes"), "{err}");

    // At initiate, when the integration is made then.
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("github")
                .config("client_id", "gh-id")
                .config("client_secret", "gh-secret")
                .config("scopes", "repo,workflow"),
        )
        .await
        .unwrap();
    let url = Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    let scope = url
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned());
    assert_eq!(scope.as_deref(), Some("repo workflow"));
}

/// With no allowlist anywhere the app's redirect URL is taken (it carries no secret
/// and only the app gives one); once an allowlist exists it is enforced.
#[tokio::test]
async fn redirect_urls_are_checked_once_an_allowlist_exists() {
    let open = Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let out = open
        .initiate_connection(
            ConnectionRequest::for_app("github")
                .config("client_id", "gh-id")
                .config("client_secret", "gh-secret")
                .redirect_url("https://anywhere.example/done"),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Initiated);
    let err = open
        .initiate_connection(openai(SECRET).redirect_url("javascript:alert(1)"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    let err = kh()
        .initiate_connection(openai(SECRET).redirect_url("https://anywhere.example/done"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not on the redirect allowlist"),
        "{err}"
    );
}

/// The URLs of an integration decide where its accounts' credentials go: while
/// accounts use it they move within their origin only, unless the change says so.
#[tokio::test]
async fn an_integrations_urls_do_not_move_its_accounts_credentials_to_another_host() {
    let kh = kh();
    let integration = kh
        .integrations()
        .create(
            NewIntegration::new("openai", "API_KEY").config("base_url", "https://api.one.test/v1"),
        )
        .await
        .unwrap();
    let id = integration.id.as_str();
    let update = |url: &str| IntegrationUpdate::new().config("base_url", url);
    // No account yet: anything goes.
    kh.integrations()
        .update(id, update("https://api.two.test/v1"))
        .await
        .unwrap();
    kh.initiate_connection(ConnectionRequest::for_integration(id).param("api_key", "sk-held"))
        .await
        .unwrap();
    for moved in [
        "https://evil.test/v1",
        "http://api.two.test/v1",
        "https://api.two.test:8443/v1",
    ] {
        let err = kh
            .integrations()
            .update(id, update(moved))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{moved}: {err}");
        let said = err.to_string();
        assert!(
            said.contains("base_url") && said.contains("1 connected account"),
            "{said}"
        );
        assert_eq!(
            kh.integrations()
                .get(id)
                .await
                .unwrap()
                .config_str("base_url"),
            Some("https://api.two.test/v1"),
            "{moved}: nothing changed"
        );
    }
    // Within its origin, or when the change says so, it moves.
    let same_host = kh
        .integrations()
        .update(id, update("https://api.two.test/v2"))
        .await
        .unwrap();
    assert_eq!(
        same_host.config_str("base_url"),
        Some("https://api.two.test/v2")
    );
    let moved = kh
        .integrations()
        .update(
            id,
            update("https://api.three.test/").allow_new_destinations(),
        )
        .await
        .unwrap();
    assert_eq!(
        moved.config_str("base_url"),
        Some("https://api.three.test/")
    );
    // Other fields change as before.
    kh.integrations()
        .update(id, IntegrationUpdate::new().name("renamed"))
        .await
        .unwrap();
}

#[tokio::test]
async fn integrations_are_updated_disabled_and_enabled() {
    let kh = kh();
    let created = kh
        .integrations()
        .create(
            NewIntegration::new("github", "OAUTH2")
                .config("client_id", "cid-1")
                .config("client_secret", "old-secret")
                .scope("repo"),
        )
        .await
        .unwrap();
    let updated = kh
        .integrations()
        .update(
            created.id.as_str(),
            IntegrationUpdate::new()
                .name("GitHub, renamed")
                .config("client_secret", "new-secret")
                .config("scopes", "read:user,user:email"),
        )
        .await
        .unwrap();
    assert_eq!(updated.id, created.id);
    assert_eq!(updated.name, "GitHub, renamed");
    assert_eq!(updated.scopes, ["read:user", "user:email"]);
    assert_eq!(updated.config_str("client_id"), Some("cid-1"), "kept");
    assert_eq!(
        updated
            .secrets
            .expose()
            .get("client_secret")
            .and_then(|v| v.as_str()),
        Some("new-secret")
    );
    assert_eq!(updated.created_at, created.created_at);

    // A bad field changes nothing.
    let err = kh
        .integrations()
        .update(
            created.id.as_str(),
            IntegrationUpdate::new().config("no_such_field", "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let stored = kh.integrations().get(created.id.as_str()).await.unwrap();
    assert_eq!(stored.name, "GitHub, renamed");

    // Disabled: no new connection through it, with a message that says what to do.
    let disabled = kh
        .integrations()
        .disable(created.id.as_str())
        .await
        .unwrap();
    assert!(disabled.disabled);
    let err = kh
        .initiate_connection(ConnectionRequest::for_integration(created.id.as_str()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("enable"), "{err}");
    let enabled = kh.integrations().enable(created.id.as_str()).await.unwrap();
    assert!(!enabled.disabled);
    let out = kh
        .initiate_connection(ConnectionRequest::for_integration(created.id.as_str()))
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Initiated);

    let missing = kh
        .integrations()
        .enable("int_0123456789abcdef0123456789abcdef")
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn connection_links_are_single_use_and_expire() {
    let clock = std::sync::Arc::new(keyhaven::ManualClock::new(keyhaven::chrono::Utc::now()));
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .clock(clock.clone())
        .connect_form_url("http://127.0.0.1:9210/connect")
        .allow_redirect_url("https://app.example.com/")
        .pending_ttl(std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    let link = kh
        .create_link(
            ConnectionRequest::for_app("openai")
                .scheme("API_KEY")
                .entity("erin")
                .redirect_url("https://app.example.com/back"),
        )
        .await
        .unwrap();
    assert_eq!(link.connection_status, ConnectionStatus::Initiated);
    assert_eq!(link.token.len(), 64);

    // The page does not use the link up: read it twice.
    for _ in 0..2 {
        let page = kh.link_page(&link.token).await.unwrap();
        assert_eq!(page.app_name, "OpenAI");
        assert_eq!(page.account.id, link.connected_account_id);
        assert_eq!(page.target_origin.as_deref(), Some("http://127.0.0.1:9210"));
    }
    // A link is not an OAuth state, nor a connect form's token.
    let mut query = std::collections::BTreeMap::new();
    query.insert("state".to_owned(), link.token.clone());
    query.insert("code".to_owned(), "x".to_owned());
    assert!(kh.handle_callback(&query).await.is_err());
    assert!(kh.connect_form(&link.token).await.is_err());
    assert!(kh.link_page(&link.token).await.is_ok(), "still usable");

    // Followed once: on to the connect form; then refused.
    let to = kh.follow_link(&link.token).await.unwrap();
    assert!(
        to.as_str()
            .starts_with("http://127.0.0.1:9210/connect?token="),
        "{to}"
    );
    let again = kh.follow_link(&link.token).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidInput);
    assert!(again.to_string().contains("new connection link"), "{again}");
    assert!(kh.link_page(&link.token).await.is_err());

    // Another link lapses with the connection's state.
    let late = kh
        .create_link(ConnectionRequest::for_app("openai").scheme("API_KEY"))
        .await
        .unwrap();
    assert_eq!(
        late.expires_at,
        keyhaven::Clock::now(clock.as_ref()) + keyhaven::chrono::Duration::seconds(600)
    );
    clock.advance(keyhaven::chrono::Duration::seconds(601));
    let expired = kh.follow_link(&late.token).await.unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");

    // A redirect URL off the allowlist is refused, and nothing is stored.
    let before = ids(&snapshot(&kh).await);
    let refused = kh
        .create_link(
            ConnectionRequest::for_app("openai")
                .scheme("API_KEY")
                .redirect_url("https://evil.example/"),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidInput);
    assert_eq!(ids(&snapshot(&kh).await), before);
}

/// Two instances on one memory store, which reports no changes: as two processes
/// on a store without a change feed.
fn sharing_a_store() -> (Keyhaven, Keyhaven) {
    let store: std::sync::Arc<dyn keyhaven::Store> = std::sync::Arc::new(MemoryStore::new());
    let make = || {
        Keyhaven::builder()
            .shared_store(store.clone())
            .build()
            .unwrap()
    };
    (make(), make())
}

/// `get_cached` serves a copy: changes made through the same `Keyhaven` show at
/// once, a change another process made shows only through `get` until the copy
/// is `CACHED_FOR` old.
#[tokio::test]
async fn cached_integrations_see_their_own_changes_at_once() {
    let (here, elsewhere) = sharing_a_store();
    let made = here
        .integrations()
        .create(NewIntegration::new("openai", "API_KEY").name("first"))
        .await
        .unwrap();
    let id = made.id.to_string();
    let integrations = here.integrations();
    assert_eq!(integrations.get_cached(&id).await.unwrap().name, "first");
    integrations
        .update(&id, IntegrationUpdate::new().name("second"))
        .await
        .unwrap();
    assert_eq!(
        integrations.get_cached(&id).await.unwrap().name,
        "second",
        "a change made here shows at once"
    );
    elsewhere
        .integrations()
        .update(&id, IntegrationUpdate::new().name("third"))
        .await
        .unwrap();
    assert_eq!(integrations.get(&id).await.unwrap().name, "third");
    assert_eq!(
        integrations.get_cached(&id).await.unwrap().name,
        "second",
        "another process's change waits for the copy to age"
    );
    assert!(keyhaven::Integrations::CACHED_FOR <= std::time::Duration::from_secs(30));
    assert_eq!(
        integrations
            .get_cached("int_nope")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}

/// `get_cached` serves a copy of the account: every change made through the same
/// `Keyhaven` shows at once (a status change, a write through its store, a
/// delete); another process's change shows through `get` at once and through the
/// copy when the store reports it (here: a memory store, which reports nothing, so
/// when the copy is `CACHED_FOR` old).
#[tokio::test]
async fn cached_accounts_see_their_own_changes_at_once() {
    let (here, elsewhere) = sharing_a_store();
    let id = here
        .initiate_connection(openai(SECRET))
        .await
        .unwrap()
        .connected_account_id
        .to_string();
    let accounts = here.connected_accounts();
    let status = |a: ConnectedAccount| a.status;
    assert_eq!(
        status(accounts.get_cached(&id).await.unwrap()),
        ConnectionStatus::Active
    );
    accounts.disable(&id).await.unwrap();
    assert_eq!(
        status(accounts.get_cached(&id).await.unwrap()),
        ConnectionStatus::Inactive,
        "a status change made here shows at once"
    );
    // A write through the store a library user holds forgets the copy too.
    let mut changed = accounts.get(&id).await.unwrap();
    changed.labels = vec![Label::new("written-directly").unwrap()];
    here.store()
        .update_account(&changed, keyhaven::CredentialsUpdate::Keep, &[])
        .await
        .unwrap();
    assert_eq!(
        accounts.get_cached(&id).await.unwrap().labels,
        changed.labels,
        "a write through Keyhaven::store shows at once"
    );
    elsewhere.connected_accounts().enable(&id).await.unwrap();
    assert_eq!(
        status(accounts.get(&id).await.unwrap()),
        ConnectionStatus::Active
    );
    assert_eq!(
        status(accounts.get_cached(&id).await.unwrap()),
        ConnectionStatus::Inactive,
        "another process's change, unreported, waits for the copy to age"
    );
    assert!(keyhaven::ConnectedAccounts::CACHED_FOR <= std::time::Duration::from_secs(2));
    accounts.delete(&id).await.unwrap();
    assert_eq!(
        accounts.get_cached(&id).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "a delete made here shows at once"
    );
    assert_eq!(
        accounts.get_cached("ca_nope").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// `list_cached` and `count_cached` serve copies of listings by one entity:
/// every change made through the same `Keyhaven` to an account of the entity (a
/// new account, a status change, a write through its store, a delete) shows at
/// once; a change to another entity's account keeps the copy; another process's
/// change (a memory store reports none) waits for the copy to age.
#[tokio::test]
async fn cached_listings_see_their_own_changes_at_once() {
    let (here, elsewhere) = sharing_a_store();
    let accounts = here.connected_accounts();
    let of = |entity: &str| AccountFilter {
        entity_ids: vec![keyhaven::EntityId::new(entity).unwrap()],
        ..AccountFilter::default()
    };
    let connect = |kh: &Keyhaven, entity: &'static str| {
        let kh = kh.clone();
        async move {
            kh.initiate_connection(openai(SECRET).entity(entity))
                .await
                .unwrap()
                .connected_account_id
                .to_string()
        }
    };
    let ids = |page: std::sync::Arc<keyhaven::Page<ConnectedAccount>>| {
        page.items
            .iter()
            .map(|a| a.id.to_string())
            .collect::<Vec<_>>()
    };
    let first = connect(&here, "alice").await;
    let bobs = connect(&here, "bob").await;
    let (alice, bob) = (of("alice"), of("bob"));
    assert_eq!(
        ids(accounts.list_cached(&alice).await.unwrap()),
        [first.as_str()]
    );
    assert_eq!(accounts.count_cached(&alice).await.unwrap(), 1);
    assert_eq!(
        ids(accounts.list_cached(&bob).await.unwrap()),
        [bobs.as_str()]
    );
    let counts = here.listing_cache_counts();
    assert_eq!((counts.hits, counts.misses), (0, 3));

    // Served from the copy.
    accounts.list_cached(&alice).await.unwrap();
    assert_eq!(here.listing_cache_counts().hits, 1);

    // A new account of alice's shows at once; bob's copy stays.
    let second = connect(&here, "alice").await;
    assert_eq!(
        ids(accounts.list_cached(&alice).await.unwrap()),
        [first.as_str(), second.as_str()]
    );
    assert_eq!(accounts.count_cached(&alice).await.unwrap(), 2);
    let before = here.listing_cache_counts().hits;
    accounts.list_cached(&bob).await.unwrap();
    assert_eq!(
        here.listing_cache_counts().hits,
        before + 1,
        "a change to alice's accounts dropped bob's listing"
    );

    // A status change.
    accounts.disable(&first).await.unwrap();
    let active = AccountFilter {
        statuses: vec![ConnectionStatus::Active],
        ..of("alice")
    };
    assert_eq!(
        ids(accounts.list_cached(&active).await.unwrap()),
        [second.as_str()]
    );
    assert_eq!(
        accounts.list_cached(&alice).await.unwrap().items[0].status,
        ConnectionStatus::Inactive
    );

    // A write through the store a library user holds, moving the account to bob:
    // it leaves alice's listing (it was listed there) and joins bob's.
    let mut moved = accounts.get(&second).await.unwrap();
    moved.entity_id = keyhaven::EntityId::new("bob").unwrap();
    here.store()
        .update_account(&moved, keyhaven::CredentialsUpdate::Keep, &[])
        .await
        .unwrap();
    assert_eq!(
        ids(accounts.list_cached(&alice).await.unwrap()),
        [first.as_str()]
    );
    assert_eq!(
        ids(accounts.list_cached(&bob).await.unwrap()),
        [bobs.as_str(), second.as_str()]
    );
    assert_eq!(accounts.count_cached(&alice).await.unwrap(), 1);

    // Another process's change, unreported, waits for the copy to age.
    connect(&elsewhere, "alice").await;
    assert_eq!(accounts.list(&alice).await.unwrap().items.len(), 2);
    assert_eq!(accounts.list_cached(&alice).await.unwrap().items.len(), 1);
    assert_eq!(accounts.count_cached(&alice).await.unwrap(), 1);

    // A delete made here shows at once (and drops every copy: its entity is not
    // known where the delete is seen).
    accounts.delete(&first).await.unwrap();
    let left = ids(accounts.list_cached(&alice).await.unwrap());
    assert_eq!(left.len(), 1);
    assert_ne!(left[0], first);
    assert_eq!(accounts.count_cached(&alice).await.unwrap(), 1);

    // Listings of no entity, or of several, are read each time.
    let counts = here.listing_cache_counts();
    let everyone = AccountFilter::default();
    assert_eq!(
        accounts.list_cached(&everyone).await.unwrap().items.len(),
        3
    );
    assert_eq!(here.listing_cache_counts(), counts);
}
