//! Initiating connections: resolve the integration, check the request, run the scheme, store.

use keyhaven_core::{
    AccountFilter, AppSlug, ConnectedAccount, ConnectedAccountId, ConnectionRequest,
    ConnectionRequestOutput, ConnectionStatus, EntityId, Error, FieldSpec, InitiateContext,
    Initiated, Integration, IntegrationId, Label, PendingState, validate_fields,
};

use url::Url;

use crate::Keyhaven;
use crate::integrations::{
    build_integration, check_connection_params, connection_param_specs, effective_integration,
    not_found, redirect_allowlist, split_scopes, validate_config,
};

/// One end user of the app, as returned by [`Keyhaven::entity`].
#[derive(Debug, Clone)]
pub struct Entity<'a> {
    kh: &'a Keyhaven,
    id: EntityId,
}

impl Keyhaven {
    /// The entity `id` (validated: 1 to 128 characters of `[A-Za-z0-9._@:+-]`).
    ///
    /// # Errors
    /// An invalid id.
    pub fn entity(&self, id: &str) -> Result<Entity<'_>, Error> {
        Ok(Entity {
            kh: self,
            id: EntityId::new(id)?,
        })
    }

    /// The `"default"` entity.
    pub fn default_entity(&self) -> Entity<'_> {
        Entity {
            kh: self,
            id: EntityId::default(),
        }
    }

    /// Connects an entity (the request's `entity_id`, `"default"` when absent) to a service.
    ///
    /// With `integration_id`, that integration is used. With `app` alone, the oldest
    /// integration of the app with the requested scheme (`OAUTH2` when none) is used,
    /// and created from the request's `auth_config` when there is none yet.
    ///
    /// # Errors
    /// Any invalid field, named in the error; an unknown scheme or integration. Nothing
    /// is stored then.
    pub async fn initiate_connection(
        &self,
        request: ConnectionRequest,
    ) -> Result<ConnectionRequestOutput, Error> {
        let entity = match request.entity_id.as_deref() {
            Some(e) => EntityId::new(e)?,
            None => EntityId::default(),
        };
        let labels = parse_labels(&request.labels)?;
        let redirect_url = request
            .redirect_url
            .as_deref()
            .map(parse_redirect_url)
            .transpose()?;
        let app = request.app.as_deref().map(AppSlug::new).transpose()?;
        let (integration, created) = self.resolve_integration(&request, app).await?;
        if integration.disabled {
            return Err(Error::Conflict(format!(
                "integration {} is disabled: enable it (integrations().enable, or the API's enable call) to connect through it",
                integration.id
            )));
        }
        if let Some(url) = &redirect_url {
            self.check_redirect_url(url, &integration)?;
        }
        let scheme = self.schemes().get(&integration.auth_scheme)?;
        let template_params = connection_param_specs(&integration);
        let mut fields = scheme.spec().params.clone();
        fields.extend(template_params.iter().cloned());
        if let Some(form) =
            self.hosted_form_needed(scheme, &fields, &request.connected_account_params)?
        {
            // The parameters the app gave are checked now (the form checks them all
            // again with what the user types).
            let given = request
                .connected_account_params
                .expose()
                .iter()
                .filter(|(k, _)| template_params.iter().any(|p| p.name == **k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            check_connection_params(&integration, &template_params, &given)?;
            return self
                .initiate_with_form(form, entity, labels, redirect_url, integration, created)
                .await;
        }
        let params = validate_fields(
            &fields,
            "connected_account_params",
            &request.connected_account_params,
        )?;
        check_connection_params(&integration, &template_params, &params.public)?;
        let effective = effective_integration(&integration, &params.public);

        let account_id = ConnectedAccountId::generate()?;
        let now = self.now();
        let state = new_state()?;
        let callback_url = self.callback_url().clone();
        let http = self.provider_client(&integration, &params.public)?;
        let cx = InitiateContext::new(&effective, &account_id, &entity, &params, now)
            .with_redirect_url(redirect_url.as_ref())
            .with_callback(&state, &callback_url)
            .with_http(&http);
        let initiated = match scheme.initiate(cx).await {
            Ok(initiated) => Ok(initiated),
            // The provider refused the credentials: a FAILED account says so, and
            // never an ACTIVE one. Bad input and outages store nothing.
            Err(keyhaven_core::SchemeError::Rejected { message }) => Err(message),
            Err(e) => {
                // A host typed here that resolves inward is the caller's mistake.
                if let Some(refused) = self.refused_host(&integration, &params.public).await {
                    return Err(refused);
                }
                return Err(e.into());
            }
        };

        let integration = self.store_integration(integration, created).await?;
        let mut account = ConnectedAccount::new(
            account_id,
            entity,
            integration.id.clone(),
            integration.app.clone(),
            integration.auth_scheme.clone(),
            ConnectionStatus::Active,
            now,
        );
        account.labels = labels;
        account.params = params.public;
        account.redirect_url = redirect_url.map(String::from);
        let events;
        let user_url = match initiated {
            Err(reason) => {
                account.status = ConnectionStatus::Failed;
                account.status_reason = Some(
                    reason
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(500)
                        .collect(),
                );
                events = self.created_events(&account)?;
                self.store().insert_account(&account, None, &events).await?;
                None
            }
            Ok(Initiated::Active { credentials }) => {
                account.expires_at = credentials.expires_at();
                events = self.created_events(&account)?;
                self.store()
                    .insert_account(&account, Some(&credentials), &events)
                    .await?;
                None
            }
            Ok(Initiated::Redirect { url, pending }) => {
                account.status = ConnectionStatus::Initiated;
                account.status_reason =
                    Some("waiting for the user to finish at the provider".into());
                events = self.created_events(&account)?;
                self.store().insert_account(&account, None, &events).await?;
                let pending = PendingState::new(
                    state,
                    account.id.clone(),
                    pending,
                    now + self.inner.settings.pending_ttl,
                );
                self.store().put_pending_state(&pending).await?;
                self.purge_pending_now_and_then(now).await;
                Some(url.to_string())
            }
        };
        tracing::info!(account = %account.id, entity = %account.entity_id, app = %account.app, status = %account.status, "connection initiated");
        self.announce(events);
        Ok(ConnectionRequestOutput {
            connection_status: account.status,
            connected_account_id: account.id,
            redirect_url: user_url,
        })
    }

    /// Stores an integration made for this request (once: a concurrent initiate may
    /// have stored one first, which is then used).
    pub(crate) async fn store_integration(
        &self,
        integration: Integration,
        created: bool,
    ) -> Result<Integration, Error> {
        if !created {
            return Ok(integration);
        }
        let stored = self
            .store()
            .find_or_insert_integration(&integration)
            .await?;
        if stored.id == integration.id {
            tracing::info!(integration = %stored.id, app = %stored.app, scheme = %stored.auth_scheme, "integration created by initiate");
        }
        Ok(stored)
    }

    /// The integration a request names, or the one its app should use. The flag says
    /// whether it is a new one, not stored yet.
    async fn resolve_integration(
        &self,
        request: &ConnectionRequest,
        app: Option<AppSlug>,
    ) -> Result<(Integration, bool), Error> {
        let scheme_name = request.auth_scheme.as_deref().map(str::to_ascii_uppercase);
        if let Some(id) = request.integration_id.as_deref() {
            let parsed = IntegrationId::parse(id)?;
            let integration = self
                .store()
                .get_integration(&parsed)
                .await?
                .ok_or_else(|| not_found(id))?;
            if let Some(app) = app.filter(|a| *a != integration.app) {
                return Err(Error::invalid(
                    "app",
                    format!(
                        "integration {id} is for app {:?}, not {:?}; leave app out or pick an integration of {app:?}",
                        integration.app.as_str(),
                        app.as_str()
                    ),
                ));
            }
            if let Some(name) = scheme_name.filter(|s| *s != integration.auth_scheme) {
                return Err(Error::invalid(
                    "auth_scheme",
                    format!(
                        "integration {id} uses {}, not {name}; leave auth_scheme out or pick another integration",
                        integration.auth_scheme
                    ),
                ));
            }
            if !request.auth_config.is_empty() {
                return Err(Error::invalid(
                    "auth_config",
                    format!("integration {id} already has its auth config; leave auth_config out"),
                ));
            }
            return Ok((integration, false));
        }
        let Some(app) = app else {
            return Err(Error::invalid(
                "integration_id",
                "give integration_id, or app to use (or create) that app's integration",
            ));
        };
        let entry = self.inner.catalog.get(app.as_str()).cloned();
        let scheme_name = match (scheme_name, &entry) {
            (Some(name), _) => name,
            (None, Some(entry)) => entry
                .preferred_scheme(|s| self.schemes().get(s).is_ok())
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::invalid(
                        "auth_scheme",
                        format!(
                            "app {app} supports {}, none of which is registered; enable its cargo feature or register a scheme",
                            entry.schemes.join(", ")
                        ),
                    )
                })?,
            (None, None) => ConnectionRequest::DEFAULT_SCHEME.into(),
        };
        let scheme = self.schemes().get(&scheme_name)?;
        let existing = self
            .store()
            .list_integrations(Some(&app))
            .await?
            .into_iter()
            .find(|i| i.auth_scheme == scheme.name());
        match existing {
            Some(integration) => {
                if !request.auth_config.is_empty() {
                    // Every field the request gives must be what the integration has.
                    let (given, scopes) = split_scopes(scheme, &request.auth_config)?;
                    let config = validate_config(scheme, &given)?;
                    let scopes_differ = scopes.is_some_and(|mut s| {
                        let mut had = integration.scopes.clone();
                        s.sort();
                        had.sort();
                        s != had
                    });
                    let differs = scopes_differ
                        || given.keys().any(|k| {
                            config.public.get(k) != integration.config.get(k)
                                || config.secret.expose().get(k)
                                    != integration.secrets.expose().get(k)
                        });
                    if differs {
                        return Err(Error::invalid(
                            "auth_config",
                            format!(
                                "differs from the auth config of integration {} that app {app} already has for {}; leave auth_config out to use it, or create another integration and pass its integration_id",
                                integration.id, integration.auth_scheme
                            ),
                        ));
                    }
                }
                Ok((integration, false))
            }
            None => match entry {
                Some(entry) => {
                    let integration = self.integration_from_catalog(
                        app,
                        &entry,
                        scheme,
                        &request.auth_config,
                        None,
                        None,
                    )?;
                    Ok((integration, true))
                }
                // A name nobody defined (most often a typo of a catalogue slug) is
                // refused rather than made into an integration.
                None if request.auth_config.is_empty() => Err(Error::UnknownApp {
                    closest: self.inner.catalog.closest(app.as_str(), 3),
                    app: app.to_string(),
                }),
                None => Ok((
                    build_integration(self, app, scheme, None, &[], &request.auth_config)?,
                    true,
                )),
            },
        }
    }
}

impl Keyhaven {
    /// A new integration of a catalogue app: the entry's endpoints, scopes and
    /// parameters, the request's `auth_config` on top, and the app's client id and
    /// secret from the configuration when the request has none.
    pub(crate) fn integration_from_catalog(
        &self,
        app: AppSlug,
        entry: &keyhaven_catalog::AppEntry,
        scheme: &crate::Registered,
        requested: &keyhaven_core::SecretFields,
        name: Option<String>,
        scopes: Option<&[String]>,
    ) -> Result<Integration, Error> {
        if !entry.supports(scheme.name()) {
            return Err(Error::invalid(
                "auth_scheme",
                format!(
                    "app {app} does not support {}; it supports {}",
                    scheme.name(),
                    entry.schemes.join(", ")
                ),
            ));
        }
        // The entry's settings that this scheme (or every integration) takes: a scheme
        // registered in place of a built-in one may read fewer.
        let known = crate::integrations::config_field_names(scheme);
        let spec = scheme.spec();
        let mut config = keyhaven_core::SecretFields::new();
        for (k, v) in entry.auth_config(spec).expose() {
            if known.iter().any(|n| n == k) {
                config.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in requested.expose() {
            config.insert(k.clone(), v.clone());
        }
        // What each deployment gives (an OAuth client), when the request did not.
        for field in spec.config.iter().filter(|f| f.per_deployment) {
            if !config.expose().contains_key(&field.name)
                && let Some(value) = self.app_setting(app.as_str(), &field.name)
            {
                config.insert(field.name.clone(), value);
            }
            if field.required && !config.expose().contains_key(&field.name) {
                let given: Vec<&FieldSpec> =
                    spec.config.iter().filter(|f| f.per_deployment).collect();
                let names = given
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ");
                let vars = given
                    .iter()
                    .map(|f| crate::app_setting_var(app.as_str(), &f.name))
                    .collect::<Vec<_>>()
                    .join(" and ");
                return Err(Error::invalid(
                    format!("auth_config.{}", field.name),
                    format!(
                        "is missing for app {app} ({} {}): pass {names} in auth_config, set them with the builder's app_credentials, or set {vars}",
                        entry.name,
                        scheme.name(),
                    ),
                ));
            }
        }
        let default_scopes = entry.scopes(spec);
        let name = name.or_else(|| Some(entry.name.clone()));
        build_integration(
            self,
            app,
            scheme,
            name,
            // Scopes the request gives replace the catalogue's.
            match (scopes, split_scopes(scheme, requested)?.1.is_some()) {
                (Some(s), _) => s,
                (None, true) => &[],
                (None, false) => &default_scopes,
            },
            &config,
        )
    }

    /// Removes expired pending states and events past their retention, at most once
    /// a minute per process.
    pub(crate) async fn purge_pending_now_and_then(&self, now: chrono::DateTime<chrono::Utc>) {
        use std::sync::atomic::Ordering;
        let last = self.inner.last_purge.load(Ordering::Relaxed);
        let secs = now.timestamp();
        if secs - last < 60
            || self
                .inner
                .last_purge
                .compare_exchange(last, secs, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(e) = self.purge_expired().await {
            tracing::warn!(error = %e, "could not purge expired pending states or old events");
        }
    }

    /// Removes the pending states that expired (OAuth redirects and connect links
    /// never finished) and the events older than the retention
    /// ([`KeyhavenBuilder::event_retention`](crate::KeyhavenBuilder::event_retention)).
    /// Runs by itself now and then when connections are initiated; a server calls it
    /// on a timer too. Returns how many states and events went.
    ///
    /// # Errors
    /// The store cannot be written.
    pub async fn purge_expired(&self) -> Result<(u64, u64), Error> {
        let now = self.now();
        let states = self.store().purge_expired_pending_states(now).await?;
        let events = self
            .store()
            .purge_events(now - self.inner.settings.event_retention)
            .await?;
        if states + events > 0 {
            tracing::debug!(
                states,
                events,
                "expired pending states and old events removed"
            );
        }
        Ok((states, events))
    }

    /// Refuses a redirect URL that neither the global nor the integration's allowlist
    /// covers. With no allowlist at all, the URL is taken: only the app itself (the
    /// library's caller, the admin key at the server) gives one, and the redirect
    /// carries no secret; an allowlist, once configured, is enforced.
    fn check_redirect_url(&self, url: &Url, integration: &Integration) -> Result<(), Error> {
        let own = redirect_allowlist(integration);
        let global = &self.inner.settings.redirect_allowlist;
        if global.is_empty() && own.is_empty() {
            return Ok(());
        }
        let allowed = global
            .iter()
            .chain(own.iter())
            .any(|prefix| url_under(url, prefix));
        if allowed {
            Ok(())
        } else {
            Err(Error::invalid(
                "redirect_url",
                format!(
                    "{} is not on the redirect allowlist; allow its origin globally (builder allow_redirect_url) or on the integration (auth_config.redirect_allowlist)",
                    url.origin().ascii_serialization()
                ),
            ))
        }
    }
}

/// Whether `url` is under `prefix`: same scheme, host and port, and a path under
/// the prefix's path (at a `/` boundary).
pub(crate) fn url_under(url: &Url, prefix: &Url) -> bool {
    if url.scheme() != prefix.scheme()
        || url.host_str() != prefix.host_str()
        || url.port_or_known_default() != prefix.port_or_known_default()
    {
        return false;
    }
    let base = prefix.path();
    let path = url.path();
    base == "/" || path == base || path.starts_with(&format!("{}/", base.trim_end_matches('/')))
}

/// A single-use OAuth state: 256 random bits, URL-safe.
pub(crate) fn new_state() -> Result<String, Error> {
    keyhaven_core::random_hex::<32>()
}

impl<'a> Entity<'a> {
    /// The entity's id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Connects this entity: [`Keyhaven::initiate_connection`] with its id.
    ///
    /// # Errors
    /// Those of [`Keyhaven::initiate_connection`], and a request naming another entity.
    pub async fn initiate_connection(
        &self,
        mut request: ConnectionRequest,
    ) -> Result<ConnectionRequestOutput, Error> {
        match request.entity_id.as_deref() {
            Some(other) if other != self.id.as_str() => {
                return Err(Error::invalid(
                    "entity_id",
                    format!(
                        "the request names entity {other:?} but was made for entity {:?}; leave entity_id out",
                        self.id.as_str()
                    ),
                ));
            }
            _ => request.entity_id = Some(self.id.to_string()),
        }
        self.kh.initiate_connection(request).await
    }

    /// Every connected account of this entity, oldest first.
    ///
    /// # Errors
    /// A store failure.
    pub async fn connections(&self) -> Result<Vec<ConnectedAccount>, Error> {
        self.kh
            .connected_accounts()
            .list_all(AccountFilter {
                entity_ids: vec![self.id.clone()],
                ..Default::default()
            })
            .await
    }

    /// The newest ACTIVE account of this entity for `app`, if any.
    ///
    /// # Errors
    /// An invalid app slug, or a store failure.
    pub async fn connection(&self, app: &str) -> Result<Option<ConnectedAccount>, Error> {
        let filter = AccountFilter {
            entity_ids: vec![self.id.clone()],
            apps: vec![AppSlug::new(app)?],
            statuses: vec![ConnectionStatus::Active],
            newest_first: true,
            limit: 1,
            ..Default::default()
        };
        Ok(self
            .kh
            .connected_accounts()
            .list(&filter)
            .await?
            .items
            .into_iter()
            .next())
    }

    /// A request to the API of this entity's newest `ACTIVE` account of `app`, with its
    /// credentials ([`Keyhaven::request`]).
    ///
    /// ```no_run
    /// # async fn demo(kh: keyhaven::Keyhaven) -> Result<(), keyhaven::Error> {
    /// let repos = kh.entity("alice")?.request("github").await?.get("/user/repos").send().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An invalid app slug, no `ACTIVE` account of the app for this entity (not found:
    /// connect one first), or a store failure.
    pub async fn request(&self, app: &str) -> Result<crate::ApiRequest, Error> {
        let account = self.connection(app).await?.ok_or_else(|| Error::NotFound {
            kind: "ACTIVE connected account of this app for this entity",
            id: format!("{app} of {}", self.id),
            hint: "connect the entity to the app first (initiate_connection)",
        })?;
        Ok(self.kh.request(account.id.as_str()))
    }
}

fn parse_labels(raw: &[String]) -> Result<Vec<Label>, Error> {
    let mut out: Vec<Label> = Vec::with_capacity(raw.len());
    for l in raw {
        let label = Label::new(l.as_str())?;
        if !out.contains(&label) {
            out.push(label);
        }
    }
    if out.len() > keyhaven_core::LABELS_MAX_COUNT {
        return Err(Error::invalid(
            "labels",
            format!(
                "an account may carry at most {} labels; {} were given",
                keyhaven_core::LABELS_MAX_COUNT,
                out.len()
            ),
        ));
    }
    Ok(out)
}

fn parse_redirect_url(raw: &str) -> Result<Url, Error> {
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(u),
        _ => Err(Error::invalid(
            "redirect_url",
            "must be an absolute http(s) URL such as https://app.example.com/connected",
        )),
    }
}
