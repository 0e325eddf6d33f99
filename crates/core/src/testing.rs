//! The conformance suite every auth scheme runs (feature `testing`): what the facade,
//! the catalogue and the server rely on a scheme to do, checked on the scheme alone.
//!
//! ```ignore
//! #[tokio::test]
//! async fn conforms() {
//!     let fixture = Fixture::new()
//!         .param("api_key", "sk-fixture-secret-1")
//!         .secret("sk-fixture-secret-1");
//!     keyhaven_core::testing::assert_conforms(&MyScheme, fixture).await;
//! }
//! ```
//!
//! Checked: the spec is well formed (names, defaults, catalogue table, per-deployment
//! fields only in the config) and the same at each call; field validation names the field and never
//! shows a secret value; the fixture's integration passes the scheme's own check; a
//! connection starts (credentials at once, or a redirect that carries the state and
//! no secret); the credentials are put on a request, with nothing secret in its
//! `Debug`; incomplete credentials are refused with an error, not a panic; refresh
//! and revoke keep their contract; no secret of the fixture appears in any `Debug`,
//! `Display` or error the scheme produced.

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::Value;
use url::Url;

use crate::{
    AccountContext, AppSlug, AuthScheme, ConnectedAccount, ConnectedAccountId, ConnectionStatus,
    Credentials, EntityId, FieldSpec, InitiateContext, Initiated, Integration, IntegrationId,
    OutgoingRequest, SecretFields, validate_fields,
};

/// What a scheme's conformance run connects with.
#[derive(Debug, Clone, Default)]
pub struct Fixture {
    params: SecretFields,
    config: SecretFields,
    credentials: Option<SecretFields>,
    secrets: Vec<String>,
    api_url: Option<String>,
}

impl Fixture {
    /// An empty fixture.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection field (`connected_account_params`), valid for the scheme.
    #[must_use]
    pub fn param(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.params.insert(key, value);
        self
    }

    /// An integration setting (`auth_config`), valid for the scheme.
    #[must_use]
    pub fn config(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.config.insert(key, value);
        self
    }

    /// Credentials to use the account with, for schemes whose connection needs the
    /// user or the provider (a redirect, a login endpoint): with them, the
    /// connection is only started, and these are authorized, refreshed and revoked.
    #[must_use]
    pub fn credentials(mut self, fields: SecretFields) -> Self {
        self.credentials = Some(fields);
        self
    }

    /// A value that must never appear in a `Debug`, `Display` or error.
    #[must_use]
    pub fn secret(mut self, value: &str) -> Self {
        self.secrets.push(value.to_owned());
        self
    }

    /// The API URL the authorized request goes to (default
    /// `https://api.example.com/v1/items?page=2`).
    #[must_use]
    pub fn api_url(mut self, url: &str) -> Self {
        self.api_url = Some(url.to_owned());
        self
    }
}

/// Runs the suite; panics with every problem found.
pub async fn assert_conforms(scheme: &dyn AuthScheme, fixture: Fixture) {
    let problems = check(scheme, &fixture).await;
    assert!(
        problems.is_empty(),
        "scheme {} breaks the scheme contract:\n- {}",
        scheme.name(),
        problems.join("\n- ")
    );
}

/// Runs the suite; answers every problem found (empty: the scheme conforms).
pub async fn check(scheme: &dyn AuthScheme, fixture: &Fixture) -> Vec<String> {
    let mut run = Run {
        problems: Vec::new(),
        secrets: fixture.secrets.clone(),
    };
    run.spec(scheme);
    run.validation(scheme, fixture);
    let Some(integration) = run.integration(scheme, fixture) else {
        return run.problems;
    };
    let credentials = run.connect(scheme, fixture, &integration).await;
    if let Some(credentials) = credentials {
        run.use_account(scheme, fixture, &integration, &credentials)
            .await;
    }
    run.shown("the scheme's Debug", &format!("{scheme:?}"));
    run.problems
}

struct Run {
    problems: Vec<String>,
    secrets: Vec<String>,
}

fn fixed_now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn is_snake(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
}

impl Run {
    fn problem(&mut self, text: impl Into<String>) {
        self.problems.push(text.into());
    }

    /// Something the scheme produced, which must show no secret of the fixture.
    fn shown(&mut self, what: &str, text: &str) {
        let leaked: Vec<String> = self
            .secrets
            .iter()
            .filter(|s| !s.is_empty() && text.contains(s.as_str()))
            .cloned()
            .collect();
        if !leaked.is_empty() {
            self.problem(format!("{what} shows a secret of the fixture"));
        }
    }

    fn spec(&mut self, scheme: &dyn AuthScheme) {
        let name = scheme.name();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            self.problem(format!(
                "name {name:?} is not SCREAMING_SNAKE_CASE of at most 64 characters"
            ));
        }
        let spec = scheme.spec();
        if spec != scheme.spec() {
            self.problem("spec() answers differently from one call to the next: it must describe the scheme, the same each time");
        }
        if spec.display_name.trim().is_empty() {
            self.problem("spec().display_name is empty");
        }
        if let Some(table) = &spec.catalog_table
            && !is_snake(table)
        {
            self.problem(format!(
                "spec().catalog_table {table:?} is not a snake_case name"
            ));
        }
        for (place, fields) in [("params", &spec.params), ("config", &spec.config)] {
            let mut seen = std::collections::BTreeSet::new();
            for f in fields.iter() {
                if !is_snake(&f.name) {
                    self.problem(format!(
                        "spec().{place} field {:?} is not a snake_case name",
                        f.name
                    ));
                }
                if !seen.insert(f.name.as_str()) {
                    self.problem(format!("spec().{place} has {} twice", f.name));
                }
                if f.description.trim().is_empty() {
                    self.problem(format!("spec().{place}.{} has no description", f.name));
                }
                if f.required && f.default.is_some() {
                    self.problem(format!(
                        "spec().{place}.{} is required and has a default",
                        f.name
                    ));
                }
                if let Some(default) = &f.default
                    && let Err(e) = f.check(place, default)
                {
                    self.problem(format!(
                        "spec().{place}.{}'s default does not pass its own check: {e}",
                        f.name
                    ));
                }
                if place == "params" && f.per_deployment {
                    self.problem(format!(
                        "spec().params.{} is per deployment: only config fields can be",
                        f.name
                    ));
                }
            }
        }
    }

    fn validation(&mut self, scheme: &dyn AuthScheme, fixture: &Fixture) {
        let spec = scheme.spec();
        let place = "connected_account_params";
        match validate_fields(&spec.params, place, &fixture.params) {
            Ok(_) => {}
            Err(e) => self.problem(format!("the fixture's params are refused: {e}")),
        }
        // Each required field left out, emptied, and an unknown field added: refused,
        // naming the field, showing no secret.
        for f in spec.params.iter().filter(|f| f.required) {
            let mut without = fixture.params.clone();
            without.remove(&f.name);
            self.refused(&spec.params, place, &without, f);
        }
        for f in &spec.params {
            let mut emptied = fixture.params.clone();
            emptied.insert(f.name.clone(), "");
            self.refused(&spec.params, place, &emptied, f);
        }
        let mut unknown = fixture.params.clone();
        unknown.insert("no_such_field_xyz", "x");
        match validate_fields(&spec.params, place, &unknown) {
            Ok(_) => self.problem("an unknown connection field is accepted"),
            Err(e) => {
                if !e.to_string().contains("no_such_field_xyz") {
                    self.problem(format!(
                        "the error for an unknown field does not name it: {e}"
                    ));
                }
            }
        }
    }

    fn refused(
        &mut self,
        fields: &[FieldSpec],
        place: &str,
        input: &SecretFields,
        field: &FieldSpec,
    ) {
        match validate_fields(fields, place, input) {
            Ok(_) if field.required => self.problem(format!(
                "{place}.{} missing or empty is accepted, but it is required",
                field.name
            )),
            Ok(_) => {}
            Err(e) => {
                let text = e.to_string();
                if !text.contains(&format!("{place}.{}", field.name)) {
                    self.problem(format!(
                        "the error for {place}.{} does not name the field: {text}",
                        field.name
                    ));
                }
                self.shown(&format!("the error for {place}.{}", field.name), &text);
            }
        }
    }

    /// The fixture's integration, checked by the spec and the scheme.
    fn integration(&mut self, scheme: &dyn AuthScheme, fixture: &Fixture) -> Option<Integration> {
        let config = match validate_fields(&scheme.spec().config, "auth_config", &fixture.config) {
            Ok(c) => c,
            Err(e) => {
                self.problem(format!("the fixture's config is refused: {e}"));
                return None;
            }
        };
        let app = AppSlug::new("conformance").ok()?;
        let mut integration = Integration::new(
            IntegrationId::generate().ok()?,
            app,
            "conformance",
            scheme.name(),
            fixed_now(),
        );
        integration.config = config.public;
        integration.secrets = config.secret;
        if let Err(e) = scheme.check_integration(&integration) {
            self.problem(format!(
                "check_integration refuses the fixture's integration: {e}"
            ));
            return None;
        }
        Some(integration)
    }

    /// Starts a connection; answers the credentials to use the account with.
    async fn connect(
        &mut self,
        scheme: &dyn AuthScheme,
        fixture: &Fixture,
        integration: &Integration,
    ) -> Option<Credentials> {
        let spec = scheme.spec();
        let params =
            match validate_fields(&spec.params, "connected_account_params", &fixture.params) {
                Ok(p) => p,
                Err(_) => return None,
            };
        let account_id = ConnectedAccountId::generate().ok()?;
        let entity = EntityId::new("conformance-user").ok()?;
        let state = "c".repeat(43);
        let callback = Url::parse("https://keyhaven.example/api/v1/oauth/callback").ok()?;
        let mut cx = InitiateContext::new(integration, &account_id, &entity, &params, fixed_now());
        if spec.interactive {
            cx = cx.with_callback(&state, &callback);
        }
        let outcome = scheme.initiate(cx).await;
        self.shown("initiate's answer", &format!("{outcome:?}"));
        match (outcome, &fixture.credentials) {
            (Ok(Initiated::Active { credentials }), _) => {
                if spec.interactive {
                    self.problem("an interactive scheme connected without the user");
                }
                if credentials.expose().is_empty() && !spec.params.is_empty() {
                    self.problem("initiate answered empty credentials from given fields");
                }
                Some(credentials)
            }
            (Ok(Initiated::Redirect { url, pending }), given) => {
                if !spec.interactive {
                    self.problem(
                        "initiate redirected, but the spec says the user need not take part (with_user_in_browser)",
                    );
                }
                if !url.as_str().contains(&state) {
                    self.problem("the redirect does not carry the state it was given");
                }
                self.shown("the redirect URL", url.as_str());
                self.shown("the pending data's Debug", &format!("{pending:?}"));
                given.clone().map(Credentials::without_expiry)
            }
            (Err(e), Some(given)) => {
                // Needs the provider (a login endpoint): the given credentials stand in.
                self.shown("initiate's error", &e.to_string());
                Some(Credentials::without_expiry(given.clone()))
            }
            (Err(e), None) => {
                self.problem(format!(
                    "initiate refused the fixture: {e} (give .credentials(...) for a scheme that needs the provider)"
                ));
                None
            }
        }
    }

    /// Authorizes a request, refreshes and revokes.
    async fn use_account(
        &mut self,
        scheme: &dyn AuthScheme,
        fixture: &Fixture,
        integration: &Integration,
        credentials: &Credentials,
    ) {
        let Some(account) = account(scheme, integration) else {
            return;
        };
        let cx = AccountContext::new(integration, &account, credentials, fixed_now());
        let target = fixture
            .api_url
            .as_deref()
            .unwrap_or("https://api.example.com/v1/items?page=2");
        let Ok(url) = Url::parse(target) else {
            self.problem(format!("the fixture's api_url {target:?} is not a URL"));
            return;
        };
        let plain = OutgoingRequest::new(Method::GET, url);
        let mut request = plain.clone();
        match scheme.authorize(&cx, &mut request) {
            Ok(()) => {
                let changed = request.headers != plain.headers || request.url != plain.url;
                if !changed && !credentials.expose().is_empty() {
                    self.problem(
                        "authorize left the request as it was: the credentials were not applied",
                    );
                }
                self.shown("the authorized request's Debug", &format!("{request:?}"));
            }
            Err(e) => self.problem(format!(
                "authorize failed with the connection's credentials: {e}"
            )),
        }
        // Incomplete credentials: an error (or nothing to add), never a panic.
        let empty = Credentials::without_expiry(SecretFields::new());
        let cx_empty = AccountContext::new(integration, &account, &empty, fixed_now());
        let mut request = plain.clone();
        if let Err(e) = scheme.authorize(&cx_empty, &mut request) {
            self.shown("authorize's error", &e.to_string());
        }
        self.shown("the credentials' Debug", &format!("{credentials:?}"));
        match scheme
            .refresh(AccountContext::new(
                integration,
                &account,
                credentials,
                fixed_now(),
            ))
            .await
        {
            Ok(Some(renewed)) => {
                if renewed.expose().is_empty() {
                    self.problem(
                        "refresh answered empty credentials; answer Ok(None) to keep them",
                    );
                }
                self.shown("the refreshed credentials' Debug", &format!("{renewed:?}"));
            }
            Ok(None) => {}
            Err(e) => self.shown("refresh's error", &e.to_string()),
        }
        if let Err(e) = scheme
            .revoke(AccountContext::new(
                integration,
                &account,
                credentials,
                fixed_now(),
            ))
            .await
        {
            self.shown("revoke's error", &e.to_string());
        }
    }
}

fn account(scheme: &dyn AuthScheme, integration: &Integration) -> Option<ConnectedAccount> {
    Some(ConnectedAccount {
        id: ConnectedAccountId::generate().ok()?,
        entity_id: EntityId::new("conformance-user").ok()?,
        integration_id: integration.id.clone(),
        app: integration.app.clone(),
        auth_scheme: scheme.name().to_owned(),
        status: ConnectionStatus::Active,
        status_reason: None,
        labels: Vec::new(),
        params: serde_json::Map::new(),
        redirect_url: None,
        expires_at: None,
        version: 1,
        created_at: fixed_now(),
        updated_at: fixed_now(),
    })
}
