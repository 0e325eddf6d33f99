//! What SQL stores share: rows as plain values, their encoding (JSON columns,
//! microsecond times, encrypted secrets), and the account listing query.

use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountFilter, AppSlug, ConnectedAccount, ConnectedAccountId, ConnectionStatus, Credentials,
    EntityId, Integration, IntegrationId, Label, SecretFields, StoreError,
};
use sha2::{Digest, Sha256};

use crate::crypto::KeyRing;

/// The columns of an account row, in the order [`AccountRow`] reads them.
pub(crate) const ACCOUNT_COLUMNS: &str = "id, entity_id, integration_id, app, auth_scheme, status, status_reason, labels, params, redirect_url, expires_at, version, created_at, updated_at";

/// The columns of an integration row, in the order [`IntegrationRow`] reads them.
pub(crate) const INTEGRATION_COLUMNS: &str =
    "id, app, name, auth_scheme, scopes, config, secrets, created_at, updated_at, disabled";

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| StoreError::Corrupt(format!("time {v} is out of range")))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Associated data binding an encrypted value to its row and column.
pub(crate) fn aad(table_column: &str, id: &str) -> String {
    format!("{table_column}:{id}")
}

pub(crate) const AAD_CREDENTIALS: &str = "connected_accounts.credentials";
pub(crate) const AAD_SECRETS: &str = "integrations.secrets";
pub(crate) const AAD_PENDING: &str = "pending_states.data";

/// Pending states are stored by hash, so that the table alone cannot complete a flow.
pub(crate) fn state_hash(state: &str) -> String {
    keyhaven_core::to_hex(&Sha256::digest(state.as_bytes()))
}

/// An integration as stored.
#[derive(Debug, Clone)]
pub(crate) struct IntegrationRow {
    pub(crate) id: String,
    pub(crate) app: String,
    pub(crate) name: String,
    pub(crate) auth_scheme: String,
    pub(crate) scopes: String,
    pub(crate) config: String,
    pub(crate) secrets: Option<Vec<u8>>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) disabled: bool,
}

impl IntegrationRow {
    pub(crate) fn encode(i: &Integration, keys: &KeyRing) -> Result<Self, StoreError> {
        let secrets = if i.secrets.is_empty() {
            None
        } else {
            let json = i.secrets.to_json();
            Some(keys.encrypt(&aad(AAD_SECRETS, i.id.as_str()), secrecy_bytes(&json))?)
        };
        Ok(Self {
            id: i.id.to_string(),
            app: i.app.to_string(),
            name: i.name.clone(),
            auth_scheme: i.auth_scheme.clone(),
            scopes: serde_json::to_string(&i.scopes).map_err(|e| corrupt("scopes", e))?,
            config: serde_json::to_string(&i.config).map_err(|e| corrupt("config", e))?,
            secrets,
            created_at: micros(i.created_at),
            updated_at: micros(i.updated_at),
            disabled: i.disabled,
        })
    }

    pub(crate) fn decode(self, keys: &KeyRing) -> Result<Integration, StoreError> {
        let secrets = match &self.secrets {
            Some(blob) => {
                let plain = keys.decrypt(&aad(AAD_SECRETS, &self.id), blob)?;
                secret_fields(&plain, "integration secrets")?
            }
            None => SecretFields::new(),
        };
        Ok({
            let mut integration = Integration::new(
                IntegrationId::parse(&self.id).map_err(|e| corrupt("integration id", e))?,
                AppSlug::new(self.app).map_err(|e| corrupt("app", e))?,
                self.name,
                self.auth_scheme,
                from_micros(self.created_at)?,
            );
            integration.scopes =
                serde_json::from_str(&self.scopes).map_err(|e| corrupt("scopes", e))?;
            integration.config =
                serde_json::from_str(&self.config).map_err(|e| corrupt("config", e))?;
            integration.secrets = secrets;
            integration.updated_at = from_micros(self.updated_at)?;
            integration.disabled = self.disabled;
            integration
        })
    }
}

fn secrecy_bytes(s: &secrecy::SecretString) -> &[u8] {
    use secrecy::ExposeSecret;
    s.expose_secret().as_bytes()
}

fn secret_fields(plain: &[u8], what: &str) -> Result<SecretFields, StoreError> {
    let text = std::str::from_utf8(plain)
        .map_err(|_| StoreError::Corrupt(format!("{what} are not UTF-8")))?;
    SecretFields::from_json(text)
        .map_err(|_| StoreError::Corrupt(format!("{what} are not a JSON object")))
}

/// Encrypts credentials for an account row: the blob and the expiry column.
pub(crate) fn encode_credentials(
    keys: &KeyRing,
    id: &ConnectedAccountId,
    c: &Credentials,
) -> Result<(Vec<u8>, Option<i64>), StoreError> {
    let json = c.expose().to_json();
    let blob = keys.encrypt(&aad(AAD_CREDENTIALS, id.as_str()), secrecy_bytes(&json))?;
    Ok((blob, c.expires_at().map(micros)))
}

/// Decrypts the credentials of an account row.
pub(crate) fn decode_credentials(
    keys: &KeyRing,
    id: &str,
    blob: &[u8],
    expires_at: Option<i64>,
) -> Result<Credentials, StoreError> {
    let plain = keys.decrypt(&aad(AAD_CREDENTIALS, id), blob)?;
    let fields = secret_fields(&plain, "credentials")?;
    Ok(Credentials::new(
        fields,
        expires_at.map(from_micros).transpose()?,
    ))
}

/// What a pending state's encrypted value begins with since its account and expiry
/// are bound to it: the tag, then `{account_id}\n{expires_at in µs}\n`, then the
/// scheme's data as JSON. The state's hash is the value's associated data, so the
/// whole row is bound: a value moved to another row, or a row whose account or
/// expiry was changed in the database, is refused. Values written before (the data
/// alone, which begins with `{`) name no account, and are refused as unknown.
const PENDING_TAG: &[u8] = b"keyhaven-pending-2\n";

/// Encrypts the data of a pending state, bound to its row: its hash (associated
/// data), its account and its expiry (in the value).
pub(crate) fn encode_pending(
    keys: &KeyRing,
    hash: &str,
    pending: &keyhaven_core::PendingState,
) -> Result<Vec<u8>, StoreError> {
    let json = pending.data.to_json();
    let data = secrecy_bytes(&json);
    let head = format!(
        "{}\n{}\n",
        pending.account_id.as_str(),
        micros(pending.expires_at)
    );
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(
        PENDING_TAG.len() + head.len() + data.len(),
    ));
    plain.extend_from_slice(PENDING_TAG);
    plain.extend_from_slice(head.as_bytes());
    plain.extend_from_slice(data);
    keys.encrypt(&aad(AAD_PENDING, hash), &plain)
}

/// Decrypts the data of a pending state and checks that it was written for the
/// row's `account` and `expires` (µs): `None` for a value written before pending
/// states were bound to their account (see [`PENDING_TAG`]).
///
/// # Errors
/// [`StoreError::Corrupt`] when the value does not decrypt for this row, or names
/// another account or expiry than the row does: the row was changed outside
/// keyhaven.
pub(crate) fn decode_pending(
    keys: &KeyRing,
    hash: &str,
    account: &str,
    expires: i64,
    blob: &[u8],
) -> Result<Option<SecretFields>, StoreError> {
    let plain = keys.decrypt(&aad(AAD_PENDING, hash), blob)?;
    let Some(rest) = plain.strip_prefix(PENDING_TAG) else {
        return Ok(None);
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let (Some(bound_account), Some(bound_expires), Some(data)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(StoreError::Corrupt(
            "a pending state's value is truncated".into(),
        ));
    };
    if bound_account != account.as_bytes() || bound_expires != expires.to_string().as_bytes() {
        return Err(StoreError::Corrupt(
            "a pending state's row names another account or expiry than it was written with: the row was changed outside keyhaven, and is refused".into(),
        ));
    }
    secret_fields(data, "pending state data").map(Some)
}

/// An account as stored (without its credentials).
#[derive(Debug, Clone)]
pub(crate) struct AccountRow {
    pub(crate) id: String,
    pub(crate) entity_id: String,
    pub(crate) integration_id: String,
    pub(crate) app: String,
    pub(crate) auth_scheme: String,
    pub(crate) status: String,
    pub(crate) status_reason: Option<String>,
    pub(crate) labels: String,
    pub(crate) params: String,
    pub(crate) redirect_url: Option<String>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) version: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl AccountRow {
    pub(crate) fn encode(a: &ConnectedAccount) -> Result<Self, StoreError> {
        Ok(Self {
            id: a.id.to_string(),
            entity_id: a.entity_id.to_string(),
            integration_id: a.integration_id.to_string(),
            app: a.app.to_string(),
            auth_scheme: a.auth_scheme.clone(),
            status: a.status.as_str().to_owned(),
            status_reason: a.status_reason.clone(),
            labels: serde_json::to_string(&a.labels).map_err(|e| corrupt("labels", e))?,
            params: serde_json::to_string(&a.params).map_err(|e| corrupt("params", e))?,
            redirect_url: a.redirect_url.clone(),
            expires_at: a.expires_at.map(micros),
            version: i64::try_from(a.version).map_err(|e| corrupt("version", e))?,
            created_at: micros(a.created_at),
            updated_at: micros(a.updated_at),
        })
    }

    pub(crate) fn decode(self) -> Result<ConnectedAccount, StoreError> {
        let labels: Vec<String> =
            serde_json::from_str(&self.labels).map_err(|e| corrupt("labels", e))?;
        Ok({
            let mut account = ConnectedAccount::new(
                ConnectedAccountId::parse(&self.id).map_err(|e| corrupt("account id", e))?,
                EntityId::new(self.entity_id).map_err(|e| corrupt("entity id", e))?,
                IntegrationId::parse(&self.integration_id)
                    .map_err(|e| corrupt("integration id", e))?,
                AppSlug::new(self.app).map_err(|e| corrupt("app", e))?,
                self.auth_scheme,
                self.status
                    .parse::<ConnectionStatus>()
                    .map_err(|e| corrupt("status", e))?,
                from_micros(self.created_at)?,
            );
            account.status_reason = self.status_reason;
            account.labels = labels
                .into_iter()
                .map(Label::new)
                .collect::<Result<_, _>>()
                .map_err(|e| corrupt("label", e))?;
            account.params =
                serde_json::from_str(&self.params).map_err(|e| corrupt("params", e))?;
            account.redirect_url = self.redirect_url;
            account.expires_at = self.expires_at.map(from_micros).transpose()?;
            account.version = u64::try_from(self.version).map_err(|e| corrupt("version", e))?;
            account.updated_at = from_micros(self.updated_at)?;
            account
        })
    }
}

/// A value bound to a listing query.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// The conditions of `filter` (its cursor and limit aside), their values pushed on
/// `args`, with placeholders written by `ph(n)` (1-based).
fn conditions(
    filter: &AccountFilter,
    ph: &dyn Fn(usize) -> String,
    args: &mut Vec<Arg>,
) -> Vec<String> {
    let mut conds: Vec<String> = Vec::new();
    let push = |args: &mut Vec<Arg>, a: Arg| {
        args.push(a);
        ph(args.len())
    };
    let any_of =
        |column: &str, values: Vec<String>, args: &mut Vec<Arg>, conds: &mut Vec<String>| {
            if values.is_empty() {
                return;
            }
            let list: Vec<String> = values
                .into_iter()
                .map(|v| push(args, Arg::Text(v)))
                .collect();
            conds.push(format!("{column} IN ({})", list.join(", ")));
        };
    any_of(
        "entity_id",
        filter.entity_ids.iter().map(ToString::to_string).collect(),
        args,
        &mut conds,
    );
    any_of(
        "app",
        filter.apps.iter().map(ToString::to_string).collect(),
        args,
        &mut conds,
    );
    any_of(
        "integration_id",
        filter
            .integration_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
        args,
        &mut conds,
    );
    any_of(
        "status",
        filter
            .statuses
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        args,
        &mut conds,
    );
    let mut labels: Vec<String> = filter.labels.iter().map(ToString::to_string).collect();
    labels.sort();
    labels.dedup();
    // One indexed EXISTS per label: the other conditions narrow the rows first, and
    // each label is then a primary-key probe of account_labels.
    for label in labels {
        let p = push(args, Arg::Text(label));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM account_labels l WHERE l.label = {p} AND l.account_id = connected_accounts.id)"
        ));
    }
    conds
}

pub(crate) fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// The count query for `filter` (its cursor and limit aside), with placeholders
/// written by `ph(n)` (1-based).
pub(crate) fn count_query(
    filter: &AccountFilter,
    ph: &dyn Fn(usize) -> String,
) -> (String, Vec<Arg>) {
    let mut args: Vec<Arg> = Vec::new();
    let conds = conditions(filter, ph, &mut args);
    (
        format!(
            "SELECT COUNT(*) FROM connected_accounts{}",
            where_clause(&conds)
        ),
        args,
    )
}

/// The listing query for `filter`, with placeholders written by `ph(n)` (1-based).
/// Fetches one row more than the page, to know whether another page follows.
pub(crate) fn list_query(
    filter: &AccountFilter,
    ph: &dyn Fn(usize) -> String,
) -> (String, Vec<Arg>) {
    let mut args: Vec<Arg> = Vec::new();
    let mut conds = conditions(filter, ph, &mut args);
    let push = |args: &mut Vec<Arg>, a: Arg| {
        args.push(a);
        ph(args.len())
    };
    if let Some(after) = &filter.after {
        let p = push(&mut args, Arg::Text(after.to_string()));
        let op = if filter.newest_first { "<" } else { ">" };
        conds.push(format!("id {op} {p}"));
    }
    let limit = push(&mut args, Arg::Int(filter.effective_limit() as i64 + 1));
    (
        format!(
            "SELECT {ACCOUNT_COLUMNS} FROM connected_accounts{} ORDER BY id{order} LIMIT {limit}",
            where_clause(&conds),
            order = if filter.newest_first { " DESC" } else { "" }
        ),
        args,
    )
}

/// Cuts the extra row off a listing and makes the cursor.
pub(crate) fn page(
    mut items: Vec<ConnectedAccount>,
    filter: &AccountFilter,
) -> keyhaven_core::Page<ConnectedAccount> {
    let limit = filter.effective_limit();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|a| a.id.to_string())
    } else {
        None
    };
    keyhaven_core::Page::new(items, next_cursor)
}

/// Encrypted credentials as an update writes them: `None` keeps the stored ones,
/// `Some((None, None))` clears them.
pub(crate) type CredentialsWrite = Option<(Option<Vec<u8>>, Option<i64>)>;

/// What a compare-and-set account update writes, prepared the same way by every SQL store.
pub(crate) struct PreparedUpdate {
    /// The account as it will be stored (version bumped).
    pub(crate) next: ConnectedAccount,
    /// Its row.
    pub(crate) row: AccountRow,
    /// The version the stored row must still have.
    pub(crate) expected: i64,
    /// The credentials column, if it changes.
    pub(crate) credentials: CredentialsWrite,
}

pub(crate) fn prepare_update(
    keys: &KeyRing,
    account: &ConnectedAccount,
    credentials: keyhaven_core::CredentialsUpdate<'_>,
) -> Result<PreparedUpdate, StoreError> {
    use keyhaven_core::CredentialsUpdate as U;
    let mut next = account.clone();
    next.version = account.version + 1;
    let row = AccountRow::encode(&next)?;
    let expected =
        i64::try_from(account.version).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let credentials = match credentials {
        U::Keep => None,
        U::Set(c) | U::Refreshed(c) => {
            let (blob, expiry) = encode_credentials(keys, &account.id, c)?;
            Some((Some(blob), expiry))
        }
        U::Clear => Some((None, None)),
    };
    Ok(PreparedUpdate {
        next,
        row,
        expected,
        credentials,
    })
}

/// The error of an update that matched no row: the account is gone, or another
/// writer got there first.
pub(crate) fn update_refused(id: &str, current: Option<i64>, expected: i64) -> StoreError {
    match current {
        None => StoreError::Missing {
            kind: "connected account",
            id: id.to_owned(),
        },
        Some(v) => StoreError::Conflict(format!(
            "connected account {id} changed since it was read (version {v} now, {expected} given)"
        )),
    }
}

/// A pending state read back from its row; `None` for one written before pending
/// states were bound to their account (refused as unknown).
pub(crate) fn pending_state(
    keys: &KeyRing,
    state: &str,
    hash: &str,
    account: &str,
    blob: &[u8],
    expires: i64,
) -> Result<Option<keyhaven_core::PendingState>, StoreError> {
    let Some(data) = decode_pending(keys, hash, account, expires, blob)? else {
        tracing::warn!(
            "a pending state written by an earlier keyhaven (not bound to its account) was refused; its user must start the connection again"
        );
        return Ok(None);
    };
    Ok(Some(keyhaven_core::PendingState::new(
        state.to_owned(),
        ConnectedAccountId::parse(account).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        data,
        from_micros(expires)?,
    )))
}

/// An account row and its credentials blob, decrypted.
pub(crate) fn account_and_credentials(
    keys: &KeyRing,
    row: AccountRow,
    blob: Option<Vec<u8>>,
    expiry: Option<i64>,
) -> Result<(ConnectedAccount, Option<Credentials>), StoreError> {
    let credentials = blob
        .map(|b| decode_credentials(keys, &row.id, &b, expiry))
        .transpose()?;
    Ok((row.decode()?, credentials))
}

/// Whether a schema at `found` (the newest migration recorded) is the `expected`
/// one of this build.
pub(crate) fn schema_is(found: i64, expected: usize) -> Result<(), StoreError> {
    let expected = i64::try_from(expected).unwrap_or(i64::MAX);
    if found < expected {
        Err(StoreError::Unavailable(format!(
            "the schema is at version {found}, this keyhaven needs {expected}: start keyhaven again to migrate it"
        )))
    } else if found > expected {
        Err(StoreError::Unavailable(format!(
            "the schema is at version {found}, newer than this keyhaven knows ({expected}): run the newer keyhaven"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn pending(account: &str) -> keyhaven_core::PendingState {
        let mut data = SecretFields::new();
        data.insert("code_verifier", "verifier-1");
        keyhaven_core::PendingState::new(
            "the-state",
            ConnectedAccountId::parse(account).unwrap(),
            data,
            from_micros(1_800_000_000_000_000).unwrap(),
        )
    }

    #[test]
    fn a_pending_state_reads_back_only_for_its_own_row() {
        let keys = KeyRing::new(MasterKey::generate().unwrap(), []);
        let hash = state_hash("the-state");
        let p = pending("ca_account01");
        let expires = micros(p.expires_at);
        let blob = encode_pending(&keys, &hash, &p).unwrap();

        let read = pending_state(&keys, "the-state", &hash, "ca_account01", &blob, expires)
            .unwrap()
            .unwrap();
        assert_eq!(read.account_id.as_str(), "ca_account01");
        assert_eq!(read.expires_at, p.expires_at);
        assert_eq!(read.data.get_str("code_verifier"), Some("verifier-1"));

        // Another account, a later expiry, another row's hash: refused.
        for (account, exp, h) in [
            ("ca_account02", expires, hash.as_str()),
            ("ca_account01", expires + 1, hash.as_str()),
            ("ca_account01", expires, &*state_hash("other-state")),
        ] {
            let e = pending_state(&keys, "the-state", h, account, &blob, exp).unwrap_err();
            assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
        }
    }

    #[test]
    fn a_pending_state_written_before_the_binding_is_unknown() {
        let keys = KeyRing::new(MasterKey::generate().unwrap(), []);
        let hash = state_hash("the-state");
        let p = pending("ca_account01");
        // What earlier versions wrote: the data alone.
        let legacy = keys
            .encrypt(&aad(AAD_PENDING, &hash), secrecy_bytes(&p.data.to_json()))
            .unwrap();
        let read = pending_state(
            &keys,
            "the-state",
            &hash,
            "ca_account01",
            &legacy,
            micros(p.expires_at),
        );
        assert!(read.unwrap().is_none());
        // A tagged value cut short is corrupt.
        let cut = keys
            .encrypt(
                &aad(AAD_PENDING, &hash),
                b"keyhaven-pending-2\nca_account01",
            )
            .unwrap();
        let e = pending_state(&keys, "the-state", &hash, "ca_account01", &cut, 0).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
