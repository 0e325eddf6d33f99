//! The commands' operations, written once as calls of keyhaven's API: over HTTP to
//! a server (`--server`), or in-process to the same router over the local store
//! ([`keyhaven_server::InProcess`]). Both run the server's handlers and answer its
//! JSON, so output and scripts do not depend on the mode.

use std::path::PathBuf;
use std::time::Duration;

use keyhaven::Keyhaven;
use keyhaven_server::{InProcess, KeyKind, ServerConfig};
use reqwest::Method;
use serde_json::{Value, json};

use crate::local::StoreArgs;
use crate::remote::{Remote, decode, enc};
use crate::{CliError, Exit};

/// Where commands run.
#[derive(Debug)]
pub(crate) enum Backend {
    /// The API in this process, over the local store.
    Local {
        /// The library, for what a command does beside the API (the OAuth callback).
        kh: Keyhaven,
        /// Its API.
        api: InProcess,
    },
    /// A keyhaven server.
    Remote(Remote),
}

/// Filters of `accounts list`.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct ListArgs {
    /// Only this entity's (repeat for several).
    #[arg(long = "entity")]
    entities: Vec<String>,
    /// Only this app's (repeat).
    #[arg(long = "app")]
    apps: Vec<String>,
    /// Only accounts in this status (repeat): INITIATED, ACTIVE, FAILED, EXPIRED, INACTIVE.
    #[arg(long = "status")]
    statuses: Vec<String>,
    /// Only accounts with this label (repeat: all must match).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Only this integration's (repeat).
    #[arg(long = "integration")]
    integrations: Vec<String>,
    /// At most this many (then `--cursor` with the printed next cursor).
    #[arg(long)]
    limit: Option<usize>,
    /// Continue after this account id.
    #[arg(long)]
    cursor: Option<String>,
}

/// What a connection needs typed in, for `connect`'s prompts.
#[derive(Debug, Clone)]
pub(crate) struct Needed {
    pub(crate) scheme: String,
    /// The user goes to the provider (OAuth): nothing to type.
    pub(crate) interactive: bool,
    pub(crate) fields: Vec<Field>,
}

/// One field a connection takes.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) secret: bool,
    pub(crate) required: bool,
}

impl Field {
    /// The API's field views (`AuthSchemeField`), as prompts.
    fn all_of(fields: &Value) -> Vec<Self> {
        fields
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|f| Self {
                        name: f["name"].as_str().unwrap_or_default().to_owned(),
                        description: f["description"].as_str().unwrap_or_default().to_owned(),
                        secret: f["is_secret"].as_bool().unwrap_or(false),
                        required: f["required"].as_bool().unwrap_or(false)
                            && f["default"].is_null(),
                    })
                    .filter(|f| !f.name.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `apps`: the catalogue, from the server or from this keyhaven's (with the entries
/// of `catalog_dir`), through the same route either way.
pub(crate) async fn apps(
    server: Option<&str>,
    api_key: &Option<String>,
    query: Option<&str>,
    catalog_dir: Option<PathBuf>,
) -> Result<Vec<Value>, CliError> {
    let backend = match server {
        Some(server) => Backend::Remote(Remote::new(server, api_key.clone(), None)?),
        None => {
            // The catalogue needs no store: nothing is written.
            let mut builder = Keyhaven::builder().store(keyhaven::MemoryStore::new());
            if let Some(dir) = catalog_dir {
                builder = builder.catalog_dir(dir);
            }
            Backend::local(builder.build()?)?
        }
    };
    let list = backend
        .get(&format!("/api/v1/apps?query={}", enc(query.unwrap_or(""))))
        .await?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

impl Backend {
    pub(crate) async fn new(
        server: Option<&str>,
        api_key: &Option<String>,
        credentials_key: &Option<String>,
        store: &StoreArgs,
    ) -> Result<Self, CliError> {
        match server {
            Some(server) => Ok(Self::Remote(Remote::new(
                server,
                api_key.clone(),
                credentials_key.clone(),
            )?)),
            None => Self::local(crate::local::open(store).await?),
        }
    }

    /// The API over `kh`, in this process.
    pub(crate) fn local(kh: Keyhaven) -> Result<Self, CliError> {
        let api = InProcess::new(kh.clone(), ServerConfig::default())?;
        Ok(Self::Local { kh, api })
    }

    /// The library, when the commands run on a local store.
    pub(crate) fn keyhaven(&self) -> Option<&Keyhaven> {
        match self {
            Self::Local { kh, .. } => Some(kh),
            Self::Remote(_) => None,
        }
    }

    /// One call of the API: its JSON answer, or an error with the exit code of its
    /// status.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: KeyKind,
    ) -> Result<Value, CliError> {
        match self {
            Self::Remote(r) => {
                r.call(method, path, body, key == KeyKind::Credentials)
                    .await
            }
            Self::Local { api, .. } => {
                let body = body
                    .map(serde_json::to_vec)
                    .transpose()
                    .map_err(|e| CliError::other(format!("encoding a request: {e}")))?;
                let answer = api.call(method, path, body, key).await?;
                decode(
                    answer.status.as_u16(),
                    &String::from_utf8_lossy(&answer.body),
                )
            }
        }
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::GET, path, None, KeyKind::Admin).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(Method::POST, path, Some(body), KeyKind::Admin)
            .await
    }

    async fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::DELETE, path, None, KeyKind::Admin).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_integration(
        &self,
        app: &str,
        scheme: Option<String>,
        name: Option<String>,
        client_id: Option<String>,
        client_secret: Option<String>,
        scopes: Vec<String>,
        config: Vec<(String, String)>,
    ) -> Result<Value, CliError> {
        let mut auth_config = serde_json::Map::new();
        for (k, v) in config {
            // JSON objects and lists (authorize_params, request_headers ...) as JSON.
            let value = match serde_json::from_str::<Value>(&v) {
                Ok(j @ (Value::Object(_) | Value::Array(_))) => j,
                _ => Value::String(v),
            };
            auth_config.insert(k, value);
        }
        if let Some(id) = client_id {
            auth_config.insert("client_id".into(), Value::String(id));
        }
        if let Some(secret) = client_secret {
            auth_config.insert("client_secret".into(), Value::String(secret));
        }
        let mut body = json!({"appId": app, "authConfig": auth_config});
        if let Some(s) = scheme {
            body["authScheme"] = json!(s.to_ascii_uppercase());
        }
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        if !scopes.is_empty() {
            body["scopes"] = json!(scopes);
        }
        self.post("/api/v1/integrations", &body).await
    }

    pub(crate) async fn integrations(&self, app: Option<&str>) -> Result<Vec<Value>, CliError> {
        let path = match app {
            Some(a) => format!("/api/v1/integrations?appName={}", enc(a)),
            None => "/api/v1/integrations".to_owned(),
        };
        Ok(self.get(&path).await?["items"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    pub(crate) async fn integration(&self, id: &str) -> Result<Value, CliError> {
        self.get(&format!("/api/v1/integrations/{}", enc(id))).await
    }

    pub(crate) async fn delete_integration(&self, id: &str) -> Result<(), CliError> {
        self.delete(&format!("/api/v1/integrations/{}", enc(id)))
            .await
            .map(drop)
    }

    /// What connecting to `app` (or through `integration`) with `scheme` asks for:
    /// the integration's fields, else the app's catalogue entry's for the scheme,
    /// else the scheme's own.
    pub(crate) async fn needed(
        &self,
        app: &str,
        scheme: Option<&str>,
        integration: Option<&str>,
    ) -> Result<Needed, CliError> {
        if let Some(id) = integration {
            let i = self.integration(id).await?;
            return Ok(Needed {
                scheme: i["authScheme"].as_str().unwrap_or_default().to_owned(),
                interactive: i["interactive"].as_bool().unwrap_or(false),
                fields: Field::all_of(&i["expectedInputFields"]),
            });
        }
        let entry = match self.get(&format!("/api/v1/apps/{}", enc(app))).await {
            Ok(entry) => Some(entry),
            Err(e) if e.exit == Exit::NotFound => None,
            Err(e) => return Err(e),
        };
        let name = scheme
            .map(str::to_ascii_uppercase)
            .or_else(|| {
                entry
                    .as_ref()
                    .and_then(|e| e["preferredScheme"].as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| keyhaven::ConnectionRequest::DEFAULT_SCHEME.to_owned());
        let of_name = |schemes: &Value| {
            schemes
                .as_array()
                .and_then(|all| all.iter().find(|s| s["auth_mode"] == name.as_str()))
                .cloned()
        };
        let found = match entry.as_ref().and_then(|e| of_name(&e["schemeDetails"])) {
            Some(s) => s,
            None => of_name(&self.get("/api/v1/schemes").await?["items"]).ok_or_else(|| {
                CliError::new(
                    Exit::Invalid,
                    format!(
                        "there is no auth scheme {name:?} here; `GET /api/v1/schemes` lists them"
                    ),
                )
            })?,
        };
        Ok(Needed {
            interactive: found["interactive"].as_bool().unwrap_or(false),
            fields: Field::all_of(&found["fields"]),
            scheme: name,
        })
    }

    pub(crate) async fn initiate(&self, body: &Value) -> Result<Value, CliError> {
        self.post("/api/v1/connectedAccounts", body).await
    }

    pub(crate) async fn accounts(&self, args: &ListArgs) -> Result<Value, CliError> {
        let mut query = Vec::new();
        for (key, values) in [
            ("entityId", &args.entities),
            ("appNames", &args.apps),
            ("status", &args.statuses),
            ("labels", &args.labels),
            ("integrationId", &args.integrations),
        ] {
            if !values.is_empty() {
                query.push(format!("{key}={}", enc(&values.join(","))));
            }
        }
        if let Some(l) = args.limit {
            query.push(format!("limit={l}"));
        }
        if let Some(c) = &args.cursor {
            query.push(format!("cursor={}", enc(c)));
        }
        self.get(&format!("/api/v1/connectedAccounts?{}", query.join("&")))
            .await
    }

    pub(crate) async fn account(&self, id: &str) -> Result<Value, CliError> {
        self.get(&format!("/api/v1/connectedAccounts/{}", enc(id)))
            .await
    }

    /// Deletes the account; locally, its revocation at the provider is awaited (the
    /// process ends soon after).
    pub(crate) async fn delete_account(&self, id: &str) -> Result<(), CliError> {
        self.delete(&format!("/api/v1/connectedAccounts/{}", enc(id)))
            .await
            .map(drop)
    }

    /// `refresh`, `enable` or `disable`.
    pub(crate) async fn action(&self, id: &str, action: &str) -> Result<Value, CliError> {
        self.post(
            &format!("/api/v1/connectedAccounts/{}/{action}", enc(id)),
            &json!({}),
        )
        .await
    }

    /// Waits until the account leaves INITIATED, or `timeout`: long polls of at
    /// most a minute each.
    pub(crate) async fn wait(&self, id: &str, timeout: Duration) -> Result<Value, CliError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let secs = left.as_secs_f64().min(60.0);
            match self
                .get(&format!(
                    "/api/v1/connectedAccounts/{}/wait?timeout={secs:.3}",
                    enc(id)
                ))
                .await
            {
                Err(e) if e.exit == Exit::TimedOut && left.as_secs_f64() > 60.0 => {}
                Err(e) if e.exit == Exit::TimedOut => {
                    return Err(CliError::new(
                        Exit::TimedOut,
                        format!(
                            "connected account {id} is still INITIATED after {timeout:?}: the user has not finished connecting"
                        ),
                    ));
                }
                other => return other,
            }
        }
    }

    /// The account's credentials: `{connectedAccountId, expiresAt, credentials}`.
    pub(crate) async fn credentials(&self, id: &str) -> Result<Value, CliError> {
        self.call(
            Method::GET,
            &format!("/api/v1/connectedAccounts/{}/credentials", enc(id)),
            None,
            KeyKind::Credentials,
        )
        .await
    }

    /// The account's credentials, to print: read through the server (which records
    /// the read), or here, recorded as a token printed (nothing is printed when the
    /// record cannot be written).
    pub(crate) async fn token(&self, id: &str) -> Result<Value, CliError> {
        let Self::Local { kh, .. } = self else {
            return self.credentials(id).await;
        };
        let now = keyhaven::chrono::Utc::now();
        let caller = keyhaven::AuditCaller {
            key: Some("cli".to_owned()),
            ..keyhaven::AuditCaller::default()
        };
        let result = kh.credentials(id).await;
        let mut entry = keyhaven::AuditEntry::new(
            now,
            keyhaven::AuditAction::TokenPrinted,
            id,
            match &result {
                Ok(_) => "granted".to_owned(),
                Err(e) => e.kind().to_string(),
            },
        )
        .by(caller);
        if let Ok(account) = kh.connected_accounts().get(id).await {
            entry = entry.of(&account);
        }
        let recorded = kh.audit().record(&entry).await;
        let credentials = result?;
        recorded.map_err(|e| CliError::new(Exit::Unavailable, e.to_string()))?;
        Ok(serde_json::json!({
            "connectedAccountId": id,
            "expiresAt": credentials.expires_at(),
            "credentials": credentials.expose().expose(),
        }))
    }

    /// The recorded uses of an account's credentials.
    pub(crate) async fn audit(
        &self,
        id: &str,
        since: Option<&str>,
        until: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, CliError> {
        let mut query = format!("/api/v1/connectedAccounts/{}/audit?", enc(id));
        for (name, value) in [
            ("since", since.map(str::to_owned)),
            ("until", until.map(str::to_owned)),
            ("limit", limit.map(|l| l.to_string())),
        ] {
            if let Some(value) = value {
                query.push_str(&format!("{name}={}&", enc(&value)));
            }
        }
        let answer = self.get(query.trim_end_matches(['?', '&'])).await?;
        Ok(answer["items"].as_array().cloned().unwrap_or_default())
    }

    /// Sends a request with the account's credentials: through the library here, or
    /// through the server's passthrough route.
    pub(crate) async fn request(
        &self,
        id: &str,
        request: CliRequest,
    ) -> Result<reqwest::Response, CliError> {
        match self {
            Self::Local { kh, .. } => {
                let mut outgoing = kh
                    .request(id)
                    .method(request.method)
                    .path(request.path)
                    .headers(&request.headers)
                    .caller(keyhaven::AuditCaller {
                        key: Some("cli".to_owned()),
                        ..keyhaven::AuditCaller::default()
                    });
                if let Some(body) = request.body {
                    outgoing = outgoing.body(body);
                }
                Ok(outgoing.send().await?)
            }
            Self::Remote(r) => r.passthrough(id, request).await,
        }
    }
}

/// What `keyhaven request` sends.
#[derive(Debug)]
pub(crate) struct CliRequest {
    pub(crate) method: Method,
    /// A path under the account's API (or a URL under it).
    pub(crate) path: String,
    pub(crate) headers: keyhaven::http::HeaderMap,
    pub(crate) body: Option<Vec<u8>>,
}

/// The request `keyhaven request` sends: a body given as JSON goes with
/// `content-type: application/json` unless a header says otherwise.
pub(crate) fn cli_request(
    method: &str,
    path: String,
    data: Option<String>,
    headers: &[String],
) -> Result<CliRequest, CliError> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CliError::usage(format!("{method:?} is not an HTTP method")))?;
    let body = match data {
        None => None,
        Some(d) => Some(if d == "@-" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .map_err(|e| CliError::usage(format!("cannot read the body from stdin: {e}")))?;
            bytes
        } else if let Some(file) = d.strip_prefix('@') {
            std::fs::read(file)
                .map_err(|e| CliError::usage(format!("cannot read the body from {file}: {e}")))?
        } else {
            d.into_bytes()
        }),
    };
    let mut map = keyhaven::http::HeaderMap::new();
    for (n, h) in headers.iter().enumerate() {
        // Never echoed: a mistyped header is most often a credential
        // (`Authorization=Bearer ...`).
        let (name, value) = h.split_once(':').ok_or_else(|| {
            CliError::usage(format!(
                "header {} (-H) is not \"Name: value\" (not shown: it may hold a secret)",
                n + 1
            ))
        })?;
        let name = keyhaven::http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| CliError::usage(format!("{:?} is not a header name", name.trim())))?;
        let value = keyhaven::http::HeaderValue::from_str(value.trim())
            .map_err(|_| CliError::usage(format!("the value of header {name} cannot be sent")))?;
        map.append(name, value);
    }
    if body
        .as_deref()
        .is_some_and(|b| serde_json::from_slice::<Value>(b).is_ok())
    {
        map.entry(keyhaven::http::header::CONTENT_TYPE)
            .or_insert(keyhaven::http::HeaderValue::from_static("application/json"));
    }
    Ok(CliRequest {
        method,
        path,
        headers: map,
        body,
    })
}
