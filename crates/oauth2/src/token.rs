//! Token answers as providers really send them, and the credentials kept from them.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyhaven_core::{Credentials, SecretFields};
use oauth2::basic::BasicTokenType;
use oauth2::{AccessToken, RefreshToken, Scope, TokenResponse};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A token endpoint's answer, read leniently: `expires_in` as a number or a string,
/// `token_type` in any case (or missing: bearer), `scope` separated by spaces or
/// commas, `id_token` and any other fields kept.
#[derive(Serialize, Deserialize)]
pub struct ProviderTokenResponse {
    access_token: AccessToken,
    #[serde(default = "bearer", deserialize_with = "lenient_token_type")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(default, deserialize_with = "lenient_scopes")]
    scope: Option<Vec<Scope>>,
    #[serde(default)]
    id_token: Option<AccessToken>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn lenient_token_type<'de, D: Deserializer<'de>>(d: D) -> Result<BasicTokenType, D::Error> {
    let raw = Option::<String>::deserialize(d)?.unwrap_or_else(|| "bearer".into());
    Ok(match raw.to_ascii_lowercase().as_str() {
        "bearer" | "" => BasicTokenType::Bearer,
        "mac" => BasicTokenType::Mac,
        other => BasicTokenType::Extension(other.to_owned()),
    })
}

fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok().map(|f| f.max(0.0) as u64),
        _ => None,
    })
}

fn lenient_scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(
            s.split([' ', ','])
                .filter(|p| !p.is_empty())
                .map(|p| Scope::new(p.to_owned()))
                .collect(),
        ),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(|p| Scope::new(p.to_owned()))
                .collect(),
        ),
        _ => None,
    })
}

impl fmt::Debug for ProviderTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderTokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenResponse for ProviderTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scope.as_ref()
    }
}

/// The credential fields of an OAuth account (a typed view of its [`Credentials`]).
pub mod fields {
    /// The access token.
    pub const ACCESS_TOKEN: &str = "access_token";
    /// The refresh token, when the provider gave one.
    pub const REFRESH_TOKEN: &str = "refresh_token";
    /// The token type, lowercase (`bearer`).
    pub const TOKEN_TYPE: &str = "token_type";
    /// The granted scopes, space-separated.
    pub const SCOPE: &str = "scope";
    /// The OpenID Connect id token, when given.
    pub const ID_TOKEN: &str = "id_token";
    /// Any other fields of the token answer.
    pub const EXTRA: &str = "extra";
}

/// A typed, read-only view of an OAuth account's credentials.
#[derive(Clone, Copy)]
pub struct OAuth2Tokens<'a>(&'a Credentials);

impl<'a> OAuth2Tokens<'a> {
    /// Views `credentials` as OAuth tokens.
    pub fn new(credentials: &'a Credentials) -> Self {
        Self(credentials)
    }
    /// The access token. Security: a secret.
    pub fn access_token(&self) -> Option<&'a str> {
        self.0.get_str(fields::ACCESS_TOKEN)
    }
    /// The refresh token. Security: a secret.
    pub fn refresh_token(&self) -> Option<&'a str> {
        self.0.get_str(fields::REFRESH_TOKEN)
    }
    /// The id token. Security: a secret.
    pub fn id_token(&self) -> Option<&'a str> {
        self.0.get_str(fields::ID_TOKEN)
    }
    /// The granted scopes.
    pub fn scopes(&self) -> Vec<&'a str> {
        self.0
            .get_str(fields::SCOPE)
            .map(|s| s.split(' ').collect())
            .unwrap_or_default()
    }
    /// When the access token expires.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at()
    }
}

impl fmt::Debug for OAuth2Tokens<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OAuth2Tokens").field(self.0).finish()
    }
}

/// Credentials from a token answer. `previous` supplies what a refresh answer may
/// leave out: the refresh token (kept unless rotated) and the id token.
pub(crate) fn credentials_from(
    answer: &ProviderTokenResponse,
    previous: Option<&Credentials>,
    default_lifetime: Option<u64>,
    now: DateTime<Utc>,
) -> Credentials {
    let mut f = SecretFields::new();
    f.insert(fields::ACCESS_TOKEN, answer.access_token.secret().as_str());
    f.insert(fields::TOKEN_TYPE, answer.token_type.as_ref().to_owned());
    let old = |key: &str| previous.and_then(|p| p.get_str(key)).map(str::to_owned);
    let refresh_token = answer.refresh_token.as_ref().map(|r| r.secret().clone());
    if let Some(rt) = refresh_token.or_else(|| old(fields::REFRESH_TOKEN)) {
        f.insert(fields::REFRESH_TOKEN, rt);
    }
    let scope = answer
        .scope
        .as_ref()
        .map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" "))
        .or_else(|| old(fields::SCOPE));
    if let Some(scope) = scope {
        f.insert(fields::SCOPE, scope);
    }
    if let Some(id) = answer
        .id_token
        .as_ref()
        .map(|t| t.secret().clone())
        .or_else(|| old(fields::ID_TOKEN))
    {
        f.insert(fields::ID_TOKEN, id);
    }
    if !answer.extra.is_empty() {
        f.insert(fields::EXTRA, Value::Object(answer.extra.clone()));
    }
    let lifetime = answer.expires_in.or(default_lifetime);
    Credentials::new(f, lifetime.and_then(|s| expiry(now, s)))
}

/// `now` plus `seconds`; `None` (no expiry) when the provider's lifetime is too
/// large for a date, rather than an overflow.
fn expiry(now: DateTime<Utc>, seconds: u64) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(seconds).ok()?;
    now.checked_add_signed(chrono::Duration::try_seconds(seconds)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `expires_in` of 10^16 seconds or more panicked (`TimeDelta::seconds` out of
    /// bounds) while a provider's token answer was read. The callback fuzz test
    /// (crates/facade/tests/fuzz_callback.rs) finds it when this fix is undone.
    #[test]
    fn huge_lifetimes_are_no_expiry_not_a_panic() {
        let now = Utc::now();
        for seconds in ["1e16", "10000000000000000", "18446744073709551615", "1e300"] {
            let answer: ProviderTokenResponse =
                serde_json::from_str(&format!(r#"{{"access_token":"t","expires_in":{seconds}}}"#))
                    .unwrap();
            assert_eq!(
                credentials_from(&answer, None, None, now).expires_at(),
                None
            );
        }
        assert_eq!(expiry(now, 60), Some(now + chrono::Duration::seconds(60)));
        assert_eq!(expiry(now, u64::MAX), None);
    }

    fn parse(json: &str) -> ProviderTokenResponse {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn provider_quirks_are_read() {
        let a = parse(
            r#"{"access_token":"t","token_type":"Bearer","expires_in":"3600","scope":"a,b c"}"#,
        );
        assert_eq!(a.expires_in, Some(3600));
        assert_eq!(a.token_type, BasicTokenType::Bearer);
        let scopes: Vec<_> = a
            .scope
            .unwrap()
            .into_iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(scopes, ["a", "b", "c"]);
        let b = parse(
            r#"{"access_token":"t","token_type":"BEARER","expires_in":7200.0,"team":{"id":"T1"}}"#,
        );
        assert_eq!(b.expires_in, Some(7200));
        assert!(b.extra.contains_key("team"));
        let c = parse(r#"{"access_token":"t"}"#);
        assert_eq!(c.token_type, BasicTokenType::Bearer);
        assert_eq!(c.expires_in, None);
        assert!(!format!("{c:?}").contains("\"t\""));
    }

    #[test]
    fn a_refresh_without_refresh_token_keeps_the_old_one() {
        let now = Utc::now();
        let first = credentials_from(
            &parse(r#"{"access_token":"a1","refresh_token":"r1","expires_in":60,"id_token":"i1"}"#),
            None,
            None,
            now,
        );
        let second = credentials_from(
            &parse(r#"{"access_token":"a2","expires_in":60}"#),
            Some(&first),
            None,
            now,
        );
        let view = OAuth2Tokens::new(&second);
        assert_eq!(view.access_token(), Some("a2"));
        assert_eq!(view.refresh_token(), Some("r1"));
        assert_eq!(view.id_token(), Some("i1"));
        let third = credentials_from(
            &parse(r#"{"access_token":"a3","refresh_token":"r2"}"#),
            Some(&second),
            Some(30),
            now,
        );
        assert_eq!(OAuth2Tokens::new(&third).refresh_token(), Some("r2"));
        assert_eq!(
            third.expires_at(),
            Some(now + chrono::Duration::seconds(30))
        );
    }
}
