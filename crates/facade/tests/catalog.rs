//! The app catalogue: every entry valid, an authorization URL built for every OAuth
//! entry, integrations created from entries when an app is initiated by name, URL
//! template parameters required and checked, and user directories that add or
//! override apps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven::{
    Catalog, ConnectionRequest, ConnectionStatus, ErrorKind, Keyhaven, MemoryStore, url::Url,
};

fn kh() -> Keyhaven {
    Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap()
}

#[test]
fn every_entry_is_valid() {
    let kh = kh();
    let specs = kh.schemes().specs();
    let files = Catalog::builtin_files();
    assert!(files.len() >= 300, "the catalogue has {} apps", files.len());
    let mut problems = Vec::new();
    let mut slugs = std::collections::HashSet::new();
    for (file, text) in files {
        match keyhaven::AppEntry::parse(file, text) {
            Ok(entry) => {
                if !slugs.insert(entry.slug.clone()) {
                    problems.push(format!("{file}: slug {} is used twice", entry.slug));
                }
                if let Err(e) = entry.validate(file.strip_suffix(".toml"), &specs) {
                    problems.push(e.to_string());
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(kh.catalog().len(), files.len());
    for first in [
        "gmail",
        "google-calendar",
        "google-drive",
        "google-sheets",
        "google-docs",
        "youtube",
        "outlook",
        "microsoft-teams",
        "onedrive",
        "sharepoint",
        "github",
        "gitlab",
        "bitbucket",
        "slack",
        "discord",
        "notion",
        "linear",
        "jira",
        "confluence",
        "asana",
        "trello",
        "clickup",
        "monday",
        "salesforce",
        "hubspot",
        "pipedrive",
        "zendesk",
        "intercom",
        "shopify",
        "stripe",
        "openai",
        "anthropic",
        "twilio",
        "sendgrid",
        "mailchimp",
        "dropbox",
        "box",
        "zoom",
        "calendly",
        "figma",
        "airtable",
        "spotify",
        "x",
        "linkedin",
        "reddit",
        "quickbooks",
        "xero",
        "okta",
    ] {
        assert!(
            kh.catalog().get(first).is_some(),
            "{first} is in the catalogue"
        );
    }
}

/// Every entry's settings make a working integration for each of its schemes
/// that connects with typed-in fields: the schemes' own checks accept them (an API
/// key's header format has its `{api_key}` ...).
#[tokio::test]
async fn every_entry_connects_with_each_typed_in_scheme() {
    let kh = kh();
    let mut failures = Vec::new();
    let mut tried = 0;
    for entry in kh.catalog().iter() {
        for scheme in &entry.schemes {
            let Ok(s) = kh.schemes().get(scheme) else {
                continue;
            };
            let spec = s.spec();
            // Typed in: every connection field is a plain string (a key, a token, a
            // user name); logins and assertions need a live endpoint, not tried here.
            if spec.interactive || spec.config.iter().any(|f| f.required) {
                continue;
            }
            let mut request = ConnectionRequest::for_app(entry.slug.clone())
                .scheme(scheme.clone())
                .entity(format!("e-{tried}"));
            for (k, v) in entry.example_params() {
                request = request.param(k, v);
            }
            for f in &spec.params {
                request = request.param(f.name.clone(), "typed-in-value");
            }
            tried += 1;
            match kh.initiate_connection(request).await {
                Ok(out) if out.connection_status == ConnectionStatus::Active => {}
                Ok(out) => failures.push(format!(
                    "{} {scheme}: {:?}",
                    entry.slug, out.connection_status
                )),
                Err(e) => failures.push(format!("{} {scheme}: {e}", entry.slug)),
            }
        }
    }
    assert!(tried > 100, "{tried} connections tried");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn an_authorization_url_for_every_oauth_entry() {
    let mut builder = Keyhaven::builder()
        .store(MemoryStore::new())
        .allow_redirect_url("https://app.example.com/");
    let catalog = Catalog::builtin().unwrap();
    let oauth: Vec<_> = catalog
        .iter()
        .filter(|e| e.supports("OAUTH2"))
        .cloned()
        .collect();
    assert!(oauth.len() > 150, "{} OAuth apps", oauth.len());
    for entry in &oauth {
        builder =
            builder.app_credentials(&entry.slug, "test-client-id", Some("test-client-secret"));
    }
    let kh = builder.build().unwrap();
    let mut failures = Vec::new();
    let mut pinned_by_the_admin = Vec::new();
    for entry in &oauth {
        let mut request = ConnectionRequest::for_app(entry.slug.clone()).scheme("OAUTH2");
        for (k, v) in entry.example_params() {
            request = request.param(k, v);
        }
        let out = match kh.initiate_connection(request).await {
            Ok(out) => out,
            // The token URL's whole domain is the user's to choose (a self-hosted
            // instance): with a client secret, the admin writes it out instead.
            Err(e)
                if e.to_string()
                    .contains("receives this integration's client secret") =>
            {
                pinned_by_the_admin.push(entry.slug.clone());
                continue;
            }
            Err(e) => {
                failures.push(format!("{}: {e}", entry.slug));
                continue;
            }
        };
        assert_eq!(
            out.connection_status,
            ConnectionStatus::Initiated,
            "{}",
            entry.slug
        );
        let url = Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
        let spec = kh.schemes().get("OAUTH2").unwrap().spec();
        let expected = keyhaven_catalog_fill(entry.setting(spec, "authorize_url").unwrap(), entry);
        let expected = Url::parse(&expected).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        let ok = url.scheme() == "https"
            && url.host_str() == expected.host_str()
            && url.path() == expected.path()
            && q.get("client_id").map(String::as_str) == Some("test-client-id")
            && q.get("response_type").map(String::as_str) == Some("code")
            && q.get("redirect_uri").map(String::as_str) == Some(keyhaven::DEFAULT_CALLBACK_URL)
            && q.get("state").is_some_and(|s| s.len() >= 32);
        let scopes = entry.scopes(spec);
        let scopes_ok = scopes.is_empty()
            || q.get("scope").map(String::as_str)
                == Some(
                    keyhaven_catalog_fill(
                        &scopes.join(entry.setting(spec, "scope_separator").unwrap_or(" ")),
                        entry,
                    )
                    .as_str(),
                );
        if !ok || !scopes_ok {
            failures.push(format!(
                "{}: unexpected authorization URL {url}",
                entry.slug
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        pinned_by_the_admin,
        ["auth0", "canvas-lms", "mastodon", "okta"],
        "the entries whose token URL's domain a connection parameter chooses"
    );
}

/// A connection parameter may not choose the domain that receives the integration's
/// client secret: it is one of the entry's listed values, or the admin writes the
/// URLs out.
#[tokio::test]
async fn the_client_secret_goes_only_to_the_providers_own_hosts() {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .app_credentials("zoho-crm", "zoho-id", Some("zoho-secret"))
        .app_credentials("okta", "okta-id", Some("okta-secret"))
        .build()
        .unwrap();
    let zoho = |dc: &str| {
        ConnectionRequest::for_app("zoho-crm")
            .scheme("OAUTH2")
            .param("dc_domain", dc)
    };
    for evil in ["evil.example", "com.evil.example", "evil"] {
        let err = kh.initiate_connection(zoho(evil)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{evil}: {err}");
        assert!(
            err.to_string().contains("dc_domain") && err.to_string().contains("one of com, eu"),
            "{err}"
        );
    }
    let out = kh.initiate_connection(zoho("eu")).await.unwrap();
    let url = Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("accounts.zoho.eu"));

    // A self-hosted instance: the end user may not name it...
    let err = kh
        .initiate_connection(
            ConnectionRequest::for_app("okta")
                .scheme("OAUTH2")
                .param("okta_domain", "evil.example"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("okta_domain"), "{err}");
    assert!(!err.to_string().contains("okta-secret"), "{err}");
    // ... the admin does, once for the integration.
    let pinned = kh
        .integrations()
        .create(
            keyhaven::NewIntegration::new("okta", "OAUTH2")
                .config("client_id", "okta-id")
                .config("client_secret", "okta-secret")
                .config(
                    "authorize_url",
                    "https://acme.okta.com/oauth2/default/v1/authorize",
                )
                .config("token_url", "https://acme.okta.com/oauth2/default/v1/token")
                .config(
                    "revocation_url",
                    "https://acme.okta.com/oauth2/default/v1/revoke",
                )
                .config("base_url", "https://acme.okta.com/api/v1")
                .config("connection_params", serde_json::json!({})),
        )
        .await
        .unwrap();
    let out = kh
        .initiate_connection(ConnectionRequest::for_integration(pinned.id.as_str()))
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Initiated);
}

fn keyhaven_catalog_fill(template: &str, entry: &keyhaven::AppEntry) -> String {
    let mut out = template.to_owned();
    for (k, v) in entry.example_params() {
        out = out.replace(&format!("{{{k}}}"), v.as_str().unwrap());
    }
    out
}

#[tokio::test]
async fn initiate_by_app_creates_the_integration_from_the_entry() {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .app_credentials("github", "gh-client", Some("gh-secret"))
        .build()
        .unwrap();
    // OpenAI: API keys only, so API_KEY without asking, sent as the entry says.
    let out = kh
        .initiate_connection(ConnectionRequest::for_app("openai").param("api_key", "sk-cat"))
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Active);
    let int = kh
        .integrations()
        .list(Some("openai"))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(int.auth_scheme, "API_KEY");
    assert_eq!(int.name, "OpenAI");
    assert_eq!(
        int.config_str("base_url"),
        Some("https://api.openai.com/v1")
    );
    // GitHub: OAUTH2 is preferred; the client comes from the configuration.
    let out = kh
        .initiate_connection(ConnectionRequest::for_app("github"))
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Initiated);
    let url = Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("github.com"));
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "client_id" && v == "gh-client")
    );
    let int = kh
        .integrations()
        .list(Some("github"))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(int.auth_scheme, "OAUTH2");
    assert!(
        int.secret_field_names()
            .contains(&"client_secret".to_owned())
    );
    // A scheme the app does not support is refused by name.
    let err = kh
        .initiate_connection(
            ConnectionRequest::for_app("openai")
                .scheme("BASIC_WITH_JWT")
                .param("username", "u")
                .param("password", "p"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not support BASIC_WITH_JWT"),
        "{err}"
    );
    // Without a configured client, the error says which fields and how to give them.
    let err = kh
        .initiate_connection(ConnectionRequest::for_app("gitlab"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("auth_config.client_id") && msg.contains("KEYHAVEN_GITLAB_CLIENT_ID"),
        "{msg}"
    );
    // The request's auth_config gives it too.
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("gitlab")
                .config("client_id", "gl")
                .config("client_secret", "gl-secret"),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Initiated);
}

#[tokio::test]
async fn template_parameters_are_required_and_checked() {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .app_credentials("shopify", "shop-client", Some("s"))
        .build()
        .unwrap();
    let before = kh.integrations().list(None).await.unwrap().len();
    let err = kh
        .initiate_connection(ConnectionRequest::for_app("shopify"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("connected_account_params.subdomain")
            && err.to_string().contains("required"),
        "{err}"
    );
    for bad in ["evil.example.com/x", "a@b", "x?y=1", "-x"] {
        let err = kh
            .initiate_connection(ConnectionRequest::for_app("shopify").param("subdomain", bad))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        assert!(
            err.to_string()
                .contains("connected_account_params.subdomain"),
            "{err}"
        );
    }
    assert_eq!(
        kh.integrations().list(None).await.unwrap().len(),
        before,
        "bad input stored nothing"
    );
    let out = kh
        .initiate_connection(ConnectionRequest::for_app("shopify").param("subdomain", "acme"))
        .await
        .unwrap();
    let url = Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("acme.myshopify.com"));
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "scope" && v.contains(',')),
        "comma-separated scopes"
    );
    let account = kh
        .connected_accounts()
        .get(out.connected_account_id.as_str())
        .await
        .unwrap();
    assert_eq!(
        account.params.get("subdomain").and_then(|v| v.as_str()),
        Some("acme")
    );
    // The API-key way into the same app fills the same template for requests.
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("shopify")
                .scheme("API_KEY")
                .param("subdomain", "acme")
                .param("api_key", "shpat"),
        )
        .await
        .unwrap();
    let req = keyhaven::OutgoingRequest::new(
        keyhaven::http::Method::GET,
        Url::parse("https://acme.myshopify.com/admin/api/x").unwrap(),
    );
    let req = kh
        .authorize(out.connected_account_id.as_str(), req)
        .await
        .unwrap();
    assert_eq!(req.headers["x-shopify-access-token"], "shpat");
}

#[tokio::test]
async fn a_directory_adds_and_overrides_apps_with_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme-internal.toml"),
        r#"
slug = "acme-internal"
name = "ACME internal API"
categories = ["developer-tools"]
docs_url = "https://docs.acme.example/auth"
schemes = ["API_KEY"]
api_base_url = "https://{region}.api.acme.example"
[api_key]
header_name = "x-acme-key"
header_format = "{api_key}"
[[params]]
name = "region"
description = "Your region: eu or us"
example = "eu"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("openai.toml"),
        r#"
slug = "openai"
name = "OpenAI via our gateway"
categories = ["ai"]
docs_url = "https://gateway.example/docs"
schemes = ["API_KEY"]
api_base_url = "https://gateway.example/openai/v1"
[api_key]
header_name = "x-gateway-key"
header_format = "{api_key}"
"#,
    )
    .unwrap();
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .catalog_dir(dir.path())
        .build()
        .unwrap();
    assert_eq!(
        kh.catalog().get("openai").unwrap().name,
        "OpenAI via our gateway"
    );
    assert!(kh.catalog().get("acme-internal").is_some());
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("acme-internal")
                .param("region", "eu")
                .param("api_key", "k1"),
        )
        .await
        .unwrap();
    let int = kh
        .integrations()
        .list(Some("acme-internal"))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        int.config_str("base_url"),
        Some("https://{region}.api.acme.example")
    );
    let req = keyhaven::OutgoingRequest::new(
        keyhaven::http::Method::GET,
        Url::parse("https://eu.api.acme.example/x").unwrap(),
    );
    let req = kh
        .authorize(out.connected_account_id.as_str(), req)
        .await
        .unwrap();
    assert_eq!(req.headers["x-acme-key"], "k1");

    // A bad file is refused with its name and problem, and nothing is built.
    std::fs::write(
        dir.path().join("broken.toml"),
        "slug = \"broken\"\nname = \"B\"\ncategories = [\"ai\"]\ndocs_url = \"http://insecure.example\"\nschemes = [\"API_KEY\"]\napi_base_url = \"https://{tenant}.b.example\"\n[api_key]\n",
    )
    .unwrap();
    let err = Keyhaven::builder()
        .store(MemoryStore::new())
        .catalog_dir(dir.path())
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("broken") && msg.contains("docs_url") && msg.contains("{tenant}"),
        "{msg}"
    );
}

#[test]
fn search_finds_by_slug_name_and_category() {
    let catalog = Catalog::builtin().unwrap();
    let hits: Vec<&str> = catalog
        .search("gmail")
        .iter()
        .map(|a| a.slug.as_str())
        .collect();
    assert_eq!(hits.first(), Some(&"gmail"));
    let google: Vec<&str> = catalog
        .search("Google")
        .iter()
        .map(|a| a.slug.as_str())
        .collect();
    assert!(
        google.contains(&"google-drive") && google.contains(&"google-sheets"),
        "{google:?}"
    );
    assert!(catalog.search("mail").iter().any(|a| a.slug == "gmail"));
    assert!(catalog.search("crm").iter().any(|a| a.slug == "hubspot"));
    assert!(catalog.search("no-such-app-anywhere").is_empty());
}

#[tokio::test]
async fn request_headers_of_an_entry_go_on_every_request() {
    let kh = kh();
    let out = kh
        .initiate_connection(ConnectionRequest::for_app("anthropic").param("api_key", "sk-ant"))
        .await
        .unwrap();
    let id = out.connected_account_id.to_string();
    let url = Url::parse("https://api.anthropic.com/v1/messages").unwrap();
    let req = kh
        .authorize(
            &id,
            keyhaven::OutgoingRequest::new(keyhaven::http::Method::POST, url.clone()),
        )
        .await
        .unwrap();
    assert_eq!(req.headers["x-api-key"], "sk-ant");
    assert_eq!(req.headers["anthropic-version"], "2023-06-01");
    // A header the caller set is kept.
    let mut mine = keyhaven::OutgoingRequest::new(keyhaven::http::Method::POST, url);
    mine.headers.insert(
        "anthropic-version",
        keyhaven::http::HeaderValue::from_static("2099-01-01"),
    );
    let req = kh.authorize(&id, mine).await.unwrap();
    assert_eq!(req.headers["anthropic-version"], "2099-01-01");
    // A header filled from a connection parameter.
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("plaid")
                .param("client_id", "abc123")
                .param("api_key", "plaid-secret"),
        )
        .await
        .unwrap();
    let url = Url::parse("https://production.plaid.com/accounts/get").unwrap();
    let req = kh
        .authorize(
            out.connected_account_id.as_str(),
            keyhaven::OutgoingRequest::new(keyhaven::http::Method::POST, url),
        )
        .await
        .unwrap();
    assert_eq!(req.headers["plaid-client-id"], "abc123");
    assert_eq!(req.headers["plaid-secret"], "plaid-secret");
    // Integrations refuse headers that could not be sent, or that replace the credentials.
    for bad in [
        keyhaven::serde_json::json!({"Authorization": "x"}),
        keyhaven::serde_json::json!({"bad header": "x"}),
        keyhaven::serde_json::json!({"x-v": 3}),
    ] {
        let err = kh
            .integrations()
            .create(keyhaven::NewIntegration::new("acme", "API_KEY").config("request_headers", bad))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("request_headers"), "{err}");
    }
}
