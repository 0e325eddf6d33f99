//! Integrations: the app's auth configuration for one service.

use std::sync::OnceLock;

use keyhaven_core::{
    AppSlug, ConnectionRequest, Error, FieldKind, FieldSpec, Integration, IntegrationId,
    SecretFields, ValidatedFields, validate_fields,
};
use serde::Deserialize;
use serde_json::Value;

use crate::{Keyhaven, Registered};

/// A new integration. Deserializes from both spellings of each field
/// (`app` / `appName`, `auth_scheme` / `authScheme`, `auth_config` / `authConfig`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NewIntegration {
    /// The service.
    #[serde(alias = "appName", alias = "app_name", alias = "appId")]
    pub app: String,
    /// A name; the app slug and scheme when absent.
    pub name: Option<String>,
    /// The scheme; `OAUTH2` when absent.
    #[serde(alias = "authScheme")]
    pub auth_scheme: Option<String>,
    /// OAuth scopes.
    pub scopes: Vec<String>,
    /// The scheme's config fields plus the common ones (`base_url`). Secret ones are encrypted.
    #[serde(alias = "authConfig")]
    pub auth_config: SecretFields,
}

impl NewIntegration {
    /// An integration of `app` with `scheme`.
    pub fn new(app: impl Into<String>, scheme: impl Into<String>) -> Self {
        Self {
            app: app.into(),
            auth_scheme: Some(scheme.into()),
            ..Self::default()
        }
    }

    /// Sets the name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets a config field.
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.auth_config.insert(key, value);
        self
    }

    /// Adds a scope.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }
}

/// A change to an integration: what is `None` (or empty) stays as it is.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct IntegrationUpdate {
    /// A new name.
    pub name: Option<String>,
    /// New scopes, replacing the old ones.
    pub scopes: Option<Vec<String>>,
    /// Auth config fields to set (client id and secret, URLs ...); the others stay.
    /// `scopes` in it count as `scopes` above.
    pub auth_config: SecretFields,
    /// Let a URL field (`base_url`, `token_url` ...) move to another host while
    /// connected accounts use the integration. Off by default: those URLs decide
    /// where the accounts' credentials are sent, so moving them hands every
    /// account's credentials to the new host.
    pub allow_new_destinations: bool,
}

impl IntegrationUpdate {
    /// A change of nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Renames the integration.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replaces the scopes.
    pub fn scopes(mut self, scopes: Vec<String>) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Sets one auth config field.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.auth_config.insert(key.into(), value.into());
        self
    }

    /// Lets URL fields move to other hosts although accounts use the integration:
    /// their credentials go to the new hosts from then on. See
    /// [`IntegrationUpdate::allow_new_destinations`].
    pub fn allow_new_destinations(mut self) -> Self {
        self.allow_new_destinations = true;
        self
    }
}

/// The value of URL field `name` of `integration`, wherever it is kept.
fn url_field(integration: &Integration, name: &str) -> Option<String> {
    integration
        .config
        .get(name)
        .or_else(|| integration.secrets.expose().get(name))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A URL's origin (scheme, host, port), or the whole string when it is not a URL
/// (a template such as `https://{shop}.example.com`).
fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_owned(),
    }
}

/// Config fields every integration may have, whatever its scheme.
fn common_config() -> &'static [FieldSpec] {
    static COMMON: OnceLock<Vec<FieldSpec>> = OnceLock::new();
    COMMON.get_or_init(|| {
        vec![
            FieldSpec::optional(
                "base_url",
                "The base URL of the service's API, for proxied requests.",
            )
            .kind(FieldKind::Url),
            FieldSpec::optional(
                "redirect_allowlist",
                "URL prefixes that redirect_url may point under, besides the global allowlist.",
            )
            .kind(FieldKind::StringList),
            FieldSpec::optional(
                "request_headers",
                "Headers every request to the API gets besides the credentials ({name: value}, such as an API version).",
            )
            .kind(FieldKind::Object),
            FieldSpec::optional(
                crate::egress::ALLOW_PRIVATE_HOSTS,
                "Let connection parameters fill URLs with private or local hosts (127.0.0.1, 10.x, 169.254.x, localhost ...); off by default, since end users type them.",
            )
            .kind(FieldKind::Bool),
            FieldSpec::optional(
                keyhaven_catalog::CONNECTION_PARAMS,
                "Parameters each connection gives ({name: description}) to fill the {name} templates of the URLs.",
            )
            .kind(FieldKind::Object),
            FieldSpec::optional(
                crate::egress::CONNECTION_PARAM_VALUES,
                "The values a connection parameter may take ({name: [values]}); a parameter that chooses the domain of the token URL must have them.",
            )
            .kind(FieldKind::Object),
        ]
    })
}

/// The names of the config fields `scheme` and every integration take.
pub(crate) fn config_field_names(scheme: &Registered) -> Vec<String> {
    scheme
        .spec()
        .config
        .iter()
        .chain(common_config())
        .map(|f| f.name.clone())
        .collect()
}

/// Checks an auth config against the scheme's config fields and the common ones.
pub(crate) fn validate_config(
    scheme: &Registered,
    input: &SecretFields,
) -> Result<ValidatedFields, Error> {
    let mut fields = scheme.spec().config.clone();
    for common in common_config() {
        if !fields.iter().any(|f| f.name == common.name) {
            fields.push(common.clone());
        }
    }
    validate_fields(&fields, "auth_config", input)
}

fn validate_scopes(scopes: &[String]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "scopes",
                format!(
                    "{scope:?} is not a scope: give each scope as its own item, without spaces"
                ),
            ));
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

/// Takes `scopes` out of an auth config, as Composio's integrations carry them: a
/// list of scopes, or one string of scopes separated by commas or spaces. Answers the
/// rest of the config and the scopes, if it had them. A scheme with a config field of
/// its own called `scopes` keeps it there.
pub(crate) fn split_scopes(
    scheme: &Registered,
    auth_config: &SecretFields,
) -> Result<(SecretFields, Option<Vec<String>>), Error> {
    let value = match auth_config.expose().get("scopes") {
        Some(value) if scheme.spec().config_field("scopes").is_none() => value,
        _ => return Ok((auth_config.clone(), None)),
    };
    let scopes: Vec<String> = match value {
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::invalid("auth_config.scopes", "must be a list of strings"))?,
        Value::String(text) => text
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => {
            return Err(Error::invalid(
                "auth_config.scopes",
                "give a list of scopes, or one string of scopes separated by commas or spaces",
            ));
        }
    };
    let mut rest = auth_config.clone();
    rest.remove("scopes");
    Ok((rest, Some(scopes)))
}

/// Builds an integration (not stored) after checking every field. Scopes given in
/// `auth_config.scopes` are added to `scopes`.
pub(crate) fn build_integration(
    kh: &Keyhaven,
    app: AppSlug,
    scheme: &Registered,
    name: Option<String>,
    scopes: &[String],
    auth_config: &SecretFields,
) -> Result<Integration, Error> {
    let (auth_config, given) = split_scopes(scheme, auth_config)?;
    let mut wanted = scopes.to_vec();
    for scope in given.into_iter().flatten() {
        if !wanted.contains(&scope) {
            wanted.push(scope);
        }
    }
    let config = validate_config(scheme, &auth_config)?;
    let scopes = validate_scopes(&wanted)?;
    let name = match name {
        Some(n) if n.trim().is_empty() || n.chars().count() > 200 => {
            return Err(Error::invalid("name", "must be 1 to 200 characters"));
        }
        Some(n) => n,
        None => format!("{app} ({})", scheme.name()),
    };
    if let Some(Value::Object(headers)) = config.public.get("request_headers") {
        for (name, value) in headers {
            let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && value
                    .as_str()
                    .is_some_and(|v| http::HeaderValue::from_str(v).is_ok())
                && !name.eq_ignore_ascii_case("authorization");
            if !valid {
                return Err(Error::invalid(
                    format!("auth_config.request_headers.{name}"),
                    "must be a valid header name (not Authorization) with a string value",
                ));
            }
        }
    }
    if let Some(Value::Array(entries)) = config.public.get("redirect_allowlist") {
        for entry in entries.iter().filter_map(Value::as_str) {
            crate::parse_http_url("auth_config.redirect_allowlist", entry)?;
        }
    }
    let now = kh.now();
    let mut integration = Integration::new(
        IntegrationId::generate()?,
        app,
        name,
        scheme.name().to_owned(),
        now,
    );
    integration.scopes = scopes;
    integration.config = config.public;
    integration.secrets = config.secret;
    scheme.check_integration(&integration)?;
    Ok(integration)
}

/// The redirect allowlist entries of an integration.
pub(crate) fn redirect_allowlist(integration: &Integration) -> Vec<url::Url> {
    match integration.config.get("redirect_allowlist") {
        Some(Value::Array(entries)) => entries
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|e| url::Url::parse(e).ok())
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn not_found(id: &str) -> Error {
    Error::NotFound {
        kind: "integration",
        id: id.to_owned(),
        hint: "list the integrations to find the right id, or initiate by app to create one",
    }
}

/// The integrations of a [`Keyhaven`].
#[derive(Debug, Clone, Copy)]
pub struct Integrations<'a> {
    kh: &'a Keyhaven,
}

impl<'a> Integrations<'a> {
    pub(crate) fn new(kh: &'a Keyhaven) -> Self {
        Self { kh }
    }

    /// Creates an integration; several may exist for one app.
    ///
    /// # Errors
    /// An invalid app slug, an unknown scheme, a config field that is unknown,
    /// missing, empty or malformed, a bad scope. Nothing is stored then.
    pub async fn create(&self, new: NewIntegration) -> Result<Integration, Error> {
        let app = AppSlug::new(new.app)?;
        let scheme_name = new
            .auth_scheme
            .as_deref()
            .unwrap_or(ConnectionRequest::DEFAULT_SCHEME);
        let scheme = self.kh.schemes().get(scheme_name)?;
        // A catalogue app starts from its entry's settings; what the request gives wins.
        if let Some(entry) = self
            .kh
            .catalog()
            .get(app.as_str())
            .filter(|e| e.supports(scheme.name()))
            .cloned()
        {
            let integration = self.kh.integration_from_catalog(
                app,
                &entry,
                scheme,
                &new.auth_config,
                new.name,
                (!new.scopes.is_empty()).then_some(new.scopes.as_slice()),
            )?;
            self.kh.store().insert_integration(&integration).await?;
            tracing::info!(integration = %integration.id, app = %integration.app, scheme = %integration.auth_scheme, "integration created from the catalogue");
            return Ok(integration);
        }
        let integration = build_integration(
            self.kh,
            app,
            scheme,
            new.name,
            &new.scopes,
            &new.auth_config,
        )?;
        self.kh.store().insert_integration(&integration).await?;
        tracing::info!(integration = %integration.id, app = %integration.app, scheme = %integration.auth_scheme, "integration created");
        Ok(integration)
    }

    /// One integration.
    ///
    /// # Errors
    /// A malformed id, or none with that id.
    pub async fn get(&self, id: &str) -> Result<Integration, Error> {
        let parsed = IntegrationId::parse(id)?;
        self.kh
            .store()
            .get_integration(&parsed)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// One integration, as [`Integrations::get`] but from a copy kept in this
    /// process for at most [`Integrations::CACHED_FOR`]: changes made through this
    /// `Keyhaven` show at once, changes another process sharing the store made
    /// within that time. For views shown many times a second (the server renders
    /// every account with its integration's base URL, and a refresh storm needs the
    /// same integration a thousand times); read with `get` where the stored value
    /// matters. Refreshes use the same copies, and one that fails with a copy is
    /// tried again with the integration as stored when it has changed since.
    ///
    /// # Errors
    /// A malformed id, or none with that id.
    pub async fn get_cached(&self, id: &str) -> Result<Integration, Error> {
        let cache = &self.kh.inner.cache;
        cache
            .integration_or_read(id, Self::CACHED_FOR, self.get(id))
            .await
    }

    /// How long [`Integrations::get_cached`] keeps an integration: as long as a
    /// request target is kept.
    pub const CACHED_FOR: std::time::Duration = crate::request::TARGET_TTL;

    /// The integrations, of one app or all, oldest first.
    ///
    /// # Errors
    /// A malformed app slug, or a store failure.
    pub async fn list(&self, app: Option<&str>) -> Result<Vec<Integration>, Error> {
        let app = app.map(AppSlug::new).transpose()?;
        Ok(self.kh.store().list_integrations(app.as_ref()).await?)
    }

    /// Changes an integration: its name, scopes and auth config fields. The fields
    /// given replace those of the same name (the others are kept), and the whole is
    /// checked again as at creation; the app and the scheme stay.
    ///
    /// A URL field (`base_url`, `token_url` ...) decides where the credentials of
    /// the integration's accounts are sent. While accounts use the integration,
    /// such a field may change within its origin (scheme, host and port) only,
    /// unless the change says [`IntegrationUpdate::allow_new_destinations`]: a
    /// server's admin key, which cannot read credentials, must not be able to send
    /// them to a host of its choosing either.
    ///
    /// # Errors
    /// None with that id, a field that is unknown, empty or malformed, or
    /// ([`Error::Conflict`]) a URL field moved to another host while accounts use
    /// the integration: nothing changes then.
    pub async fn update(&self, id: &str, change: IntegrationUpdate) -> Result<Integration, Error> {
        let stored = self.get(id).await?;
        let scheme = self.kh.schemes().get(&stored.auth_scheme)?;
        let mut auth_config = stored.secrets.clone();
        for (k, v) in &stored.config {
            auth_config.insert(k.clone(), v.clone());
        }
        for (k, v) in change.auth_config.expose() {
            auth_config.insert(k.clone(), v.clone());
        }
        let (auth_config, given) = split_scopes(scheme, &auth_config)?;
        let scopes = change
            .scopes
            .or(given)
            .unwrap_or_else(|| stored.scopes.clone());
        let mut updated = build_integration(
            self.kh,
            stored.app.clone(),
            scheme,
            Some(change.name.unwrap_or_else(|| stored.name.clone())),
            &scopes,
            &auth_config,
        )?;
        updated.id = stored.id.clone();
        updated.created_at = stored.created_at;
        updated.disabled = stored.disabled;
        if !change.allow_new_destinations {
            self.refuse_new_destinations(scheme, &stored, &updated)
                .await?;
        }
        self.save(updated).await
    }

    /// [`Error::Conflict`] when `updated` moves a URL field of `stored` to another
    /// origin (or sets or removes one) while connected accounts use it.
    async fn refuse_new_destinations(
        &self,
        scheme: &Registered,
        stored: &Integration,
        updated: &Integration,
    ) -> Result<(), Error> {
        let mut moved: Vec<&str> = scheme
            .spec()
            .config
            .iter()
            .chain(common_config())
            .filter(|f| f.kind == FieldKind::Url)
            .map(|f| f.name.as_str())
            .filter(|name| {
                let (old, new) = (url_field(stored, name), url_field(updated, name));
                old != new && old.as_deref().map(origin) != new.as_deref().map(origin)
            })
            .collect();
        moved.sort_unstable();
        moved.dedup();
        if moved.is_empty() {
            return Ok(());
        }
        let filter = keyhaven_core::AccountFilter {
            integration_ids: vec![stored.id.clone()],
            ..Default::default()
        };
        let held = self.kh.store().count_accounts(&filter).await?;
        if held == 0 {
            return Ok(());
        }
        Err(Error::Conflict(format!(
            "{} of integration {} would send the credentials of its {held} connected account(s) to another host; \
             change a URL within its scheme, host and port, or make a new integration for the new host and connect the accounts again through it \
             (the library can move them with IntegrationUpdate::allow_new_destinations)",
            moved.join(", "),
            stored.id
        )))
    }

    /// Enables a disabled integration: connections may be made through it again.
    ///
    /// # Errors
    /// None with that id.
    pub async fn enable(&self, id: &str) -> Result<Integration, Error> {
        self.set_disabled(id, false).await
    }

    /// Disables an integration: no new connection is made through it (initiating
    /// answers a conflict) until it is enabled; its accounts keep working.
    ///
    /// # Errors
    /// None with that id.
    pub async fn disable(&self, id: &str) -> Result<Integration, Error> {
        self.set_disabled(id, true).await
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<Integration, Error> {
        let mut integration = self.get(id).await?;
        if integration.disabled == disabled {
            return Ok(integration);
        }
        integration.disabled = disabled;
        integration.updated_at = self.kh.now();
        self.save(integration).await
    }

    async fn save(&self, integration: Integration) -> Result<Integration, Error> {
        // The store forgets the cached copies: requests of its accounts go by the
        // new settings from now on.
        if !self.kh.store().update_integration(&integration).await? {
            return Err(not_found(integration.id.as_str()));
        }
        tracing::info!(integration = %integration.id, app = %integration.app, disabled = integration.disabled, "integration changed");
        Ok(integration)
    }

    /// Deletes an integration no account uses.
    ///
    /// # Errors
    /// None with that id, or connected accounts still use it (delete them first).
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let parsed = IntegrationId::parse(id)?;
        match self.kh.store().delete_integration(&parsed).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(not_found(id)),
            Err(keyhaven_core::StoreError::Conflict(why)) => Err(Error::Conflict(why)),
            Err(e) => Err(e.into()),
        }
    }
}

/// The connection parameters an integration declares, as required, non-secret fields.
pub(crate) fn connection_param_specs(integration: &Integration) -> Vec<FieldSpec> {
    match integration.config.get(keyhaven_catalog::CONNECTION_PARAMS) {
        Some(Value::Object(params)) => params
            .iter()
            .map(|(name, description)| {
                FieldSpec::required(
                    name,
                    description.as_str().unwrap_or("A connection parameter."),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks the values of connection parameters: they go into hosts and paths, so only
/// letters, digits, '.', '-' and '_' are allowed (no '/', '@', ':' or '?'), one of
/// the listed values where the integration lists them; they may not choose the
/// domain that receives the integration's secrets; and a host they fill must be a
/// public one unless the integration allows private hosts.
pub(crate) fn check_connection_params(
    integration: &Integration,
    specs: &[FieldSpec],
    values: &serde_json::Map<String, Value>,
) -> Result<(), Error> {
    for spec in specs {
        let Some(v) = values.get(&spec.name).and_then(Value::as_str) else {
            continue;
        };
        let ok = v.len() <= 253
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return Err(Error::invalid(
                format!("connected_account_params.{}", spec.name),
                "may hold only letters, digits, '.', '-' and '_' (it becomes part of a URL): give the bare name, such as acme for acme.example.com",
            ));
        }
        if let Some(allowed) = crate::egress::allowed_values(integration, &spec.name)
            && !allowed.iter().any(|a| a.as_str() == Some(v))
        {
            let listed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            return Err(Error::invalid(
                format!("connected_account_params.{}", spec.name),
                format!("must be one of {}", listed.join(", ")),
            ));
        }
    }
    crate::egress::check_secret_destinations(integration, values)?;
    crate::egress::check_param_hosts(integration, values)
}

fn fill(value: &Value, params: &serde_json::Map<String, Value>) -> Value {
    match value {
        Value::String(s) => Value::String(keyhaven_catalog::fill_template(s, params)),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), fill(v, params)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, params)).collect()),
        other => other.clone(),
    }
}

/// The integration as one connection sees it: the `{templates}` of its config and
/// scopes filled with the connection's parameters.
pub(crate) fn effective_integration<'a>(
    integration: &'a Integration,
    params: &serde_json::Map<String, Value>,
) -> std::borrow::Cow<'a, Integration> {
    if !integration
        .config
        .contains_key(keyhaven_catalog::CONNECTION_PARAMS)
    {
        return std::borrow::Cow::Borrowed(integration);
    }
    let mut filled = integration.clone();
    filled.config = integration
        .config
        .iter()
        .map(|(k, v)| {
            let value = if k == keyhaven_catalog::CONNECTION_PARAMS {
                v.clone()
            } else {
                fill(v, params)
            };
            (k.clone(), value)
        })
        .collect();
    filled.scopes = integration
        .scopes
        .iter()
        .map(|s| keyhaven_catalog::fill_template(s, params))
        .collect();
    std::borrow::Cow::Owned(filled)
}
