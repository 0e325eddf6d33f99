//! The hosted connect form: for schemes the user completes by typing something (an
//! API key, a login), the app may leave those fields out of the request; keyhaven
//! then answers with a link to its own form, where the end user types them, so the
//! app never sees the secret. The link carries a single-use token, kept like an OAuth
//! state (hashed, encrypted, expiring).

use keyhaven_core::{
    ConnectedAccount, ConnectedAccountId, ConnectionRequestOutput, ConnectionStatus, EntityId,
    Error, EventKind, FieldSpec, InitiateContext, Initiated, Integration, Label, PendingState,
    SchemeError, SecretFields, validate_fields,
};
use serde_json::{Map, Value};
use url::Url;

use crate::callback::CallbackOutcome;
use crate::connect::new_state;
use crate::integrations::{check_connection_params, connection_param_specs, effective_integration};
use crate::{Keyhaven, Registered};

/// The key that marks a pending state as a connect form's.
const FORM_MARKER: &str = "keyhaven_connect_form";
/// The key of the fields the app gave in its request, kept for the submit.
const GIVEN: &str = "given";
/// Where the form's values are named in errors.
const PLACE: &str = "connected_account_params";

/// What a hosted connect form shows.
#[derive(Debug, Clone)]
pub struct ConnectForm {
    /// The `INITIATED` account the form completes.
    pub account: ConnectedAccount,
    /// The app's name for people (`GitHub`), from the catalogue when it is there.
    pub app_name: String,
    /// The fields to ask for, in order; the app gave the others.
    pub fields: Vec<FieldSpec>,
    /// When the link stops working.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Whether a pending state belongs to a connect form.
pub(crate) fn is_form_state(pending: &PendingState) -> bool {
    pending.data.expose().get(FORM_MARKER) == Some(&Value::Bool(true))
}

fn refused(reason: &str) -> Error {
    crate::callback::link_refused("token", reason)
}

/// The fields of an integration's connections: the scheme's and the URL template's.
fn form_fields(scheme: &Registered, integration: &Integration) -> Vec<FieldSpec> {
    let mut fields = scheme.spec().params.clone();
    fields.extend(connection_param_specs(integration));
    fields
}

/// A form value is absent when it is empty: an optional field left blank.
fn non_empty(values: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    values
        .iter()
        .filter(|(_, v)| !matches!(v, Value::Null) && v.as_str().is_none_or(|s| !s.is_empty()))
}

/// What a form-initiated connection is waiting for.
pub(crate) struct FormStart {
    base: Url,
    given: SecretFields,
}

impl Keyhaven {
    /// `Some` when the request leaves out fields the user must type, the scheme takes
    /// them from the user (not by a redirect) and a connect form is configured. The
    /// fields the request does give are checked now.
    pub(crate) fn hosted_form_needed(
        &self,
        scheme: &Registered,
        fields: &[FieldSpec],
        given: &SecretFields,
    ) -> Result<Option<FormStart>, Error> {
        let Some(base) = &self.inner.settings.connect_form_url else {
            return Ok(None);
        };
        let missing = fields
            .iter()
            .any(|f| f.required && f.default.is_none() && !given.expose().contains_key(&f.name));
        if scheme.spec().interactive || !missing {
            return Ok(None);
        }
        for (key, value) in given.expose() {
            let spec = fields
                .iter()
                .find(|f| f.name == *key)
                .ok_or_else(|| Error::invalid(format!("{PLACE}.{key}"), "is not a known field"))?;
            spec.check(PLACE, value)?;
        }
        Ok(Some(FormStart {
            base: base.clone(),
            given: given.clone(),
        }))
    }

    /// Stores an `INITIATED` account and the form's token; answers with the link.
    pub(crate) async fn initiate_with_form(
        &self,
        form: FormStart,
        entity: EntityId,
        labels: Vec<Label>,
        redirect_url: Option<Url>,
        integration: Integration,
        created: bool,
    ) -> Result<ConnectionRequestOutput, Error> {
        let now = self.now();
        let token = new_state()?;
        let mut link = form.base;
        link.query_pairs_mut().append_pair("token", &token);
        let integration = self.store_integration(integration, created).await?;
        let mut account = ConnectedAccount::new(
            ConnectedAccountId::generate()?,
            entity,
            integration.id.clone(),
            integration.app.clone(),
            integration.auth_scheme.clone(),
            ConnectionStatus::Initiated,
            now,
        );
        account.status_reason = Some("waiting for the user to fill in the connect form".into());
        account.labels = labels;
        account.redirect_url = redirect_url.map(String::from);
        let events = vec![self.event(EventKind::Created, &account, None)?];
        self.store().insert_account(&account, None, &events).await?;
        let mut data = SecretFields::new();
        data.insert(FORM_MARKER, true);
        data.insert(GIVEN, Value::Object(form.given.expose().clone()));
        self.store()
            .put_pending_state(&PendingState::new(
                token,
                account.id.clone(),
                data,
                now + self.inner.settings.pending_ttl,
            ))
            .await?;
        self.purge_pending_now_and_then(now).await;
        tracing::info!(account = %account.id, entity = %account.entity_id, app = %account.app, "connection initiated; waiting for the connect form");
        self.announce(events);
        Ok(ConnectionRequestOutput {
            connection_status: account.status,
            connected_account_id: account.id,
            redirect_url: Some(link.to_string()),
        })
    }

    /// The form a connect link shows. Reading it does not use the link up.
    ///
    /// # Errors
    /// An unknown, used or expired token, or an account no longer waiting for it.
    pub async fn connect_form(&self, token: &str) -> Result<ConnectForm, Error> {
        self.open_form(token).await.map(|(form, _, _)| form)
    }

    async fn open_form(
        &self,
        token: &str,
    ) -> Result<(ConnectForm, PendingState, std::sync::Arc<Integration>), Error> {
        let (pending, account) = self.live_link_token(token, "token", is_form_state).await?;
        let integration = self.integration_of(&account).await?;
        let scheme = self.schemes().get(&integration.auth_scheme)?;
        let given = pending.data.expose().get(GIVEN).and_then(Value::as_object);
        let fields = form_fields(scheme, &integration)
            .into_iter()
            .filter(|f| given.is_none_or(|g| !g.contains_key(&f.name)))
            .collect();
        let app_name = self
            .catalog()
            .get(account.app.as_str())
            .map_or_else(|| account.app.to_string(), |e| e.name.clone());
        let form = ConnectForm {
            account,
            app_name,
            fields,
            expires_at: pending.expires_at,
        };
        Ok((form, pending, integration))
    }

    /// Completes a connection with what the user typed in its form: the account becomes
    /// `ACTIVE`, or `FAILED` when the provider refuses (a wrong password). Invalid input
    /// (a required field left empty) is an error that leaves the link usable.
    ///
    /// # Errors
    /// Invalid values, naming the field; an unknown, used or expired token; the
    /// provider unreachable (the link stays usable, to try again).
    pub async fn submit_connect_form(
        &self,
        token: &str,
        values: &Map<String, Value>,
    ) -> Result<CallbackOutcome, Error> {
        let (form, pending, integration) = self.open_form(token).await?;
        let scheme = self.schemes().get(&integration.auth_scheme)?;
        let mut merged = SecretFields::new();
        if let Some(Value::Object(given)) = pending.data.expose().get(GIVEN) {
            for (k, v) in given {
                merged.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in non_empty(values) {
            if !form.fields.iter().any(|f| f.name == *k) {
                return Err(Error::invalid(
                    format!("{PLACE}.{k}"),
                    "is not a field of this form",
                ));
            }
            merged.insert(k.clone(), v.clone());
        }
        let template = connection_param_specs(&integration);
        let params = validate_fields(&form_fields(scheme, &integration), PLACE, &merged)?;
        check_connection_params(&integration, &template, &params.public)?;
        let http = self.provider_client(&integration, &params.public)?;

        // Valid: use the link up, so that of two submits exactly one goes on.
        let Some(pending) = self.store().take_pending_state(token).await? else {
            return Err(refused("this link was used meanwhile"));
        };
        let effective = effective_integration(&integration, &params.public);
        let account = form.account;
        let cx = InitiateContext::new(
            &effective,
            &account.id,
            &account.entity_id,
            &params,
            self.now(),
        )
        .with_http(&http);
        let result = match scheme.initiate(cx).await {
            Ok(Initiated::Active { credentials }) => Ok(credentials),
            Ok(Initiated::Redirect { .. }) => {
                return Err(Error::Internal(format!(
                    "scheme {} asked for a redirect from a connect form",
                    integration.auth_scheme
                )));
            }
            Err(SchemeError::Rejected { message }) => Err(message),
            Err(e) => {
                // Kept for another try: an outage is not the user's fault, and a host
                // typed here that resolves inward is theirs to correct.
                self.store().put_pending_state(&pending).await?;
                if let Some(refused) = self.refused_host(&integration, &params.public).await {
                    return Err(refused);
                }
                return Err(e.into());
            }
        };
        self.finish_connection(account, result, Some(params.public))
            .await
    }
}
