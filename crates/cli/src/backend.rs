//! The commands' operations on either backend: the library on a local store, or a
//! keyhaven server. Both answer the same JSON (the server's shapes), so output and
//! scripts do not depend on the mode.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use keyhaven::{AccountFilter, ConnectionRequest, Keyhaven, NewIntegration};
use keyhaven_server::proxy::{ProxyLimits, ProxyRequest, ProxyResponse};
use serde_json::{Value, json};

use crate::local::StoreArgs;
use crate::remote::{Remote, enc};
use crate::{CliError, Exit};

/// Where commands run.
#[derive(Debug)]
pub(crate) enum Backend {
    /// The library on a local store.
    Local(Keyhaven),
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

fn parse_err(what: &str) -> impl Fn(serde_json::Error) -> CliError + '_ {
    move |e| CliError::new(Exit::Invalid, format!("{what}: {e}"))
}

/// `apps`: the catalogue, locally or from the server.
pub(crate) async fn apps(
    server: Option<&str>,
    api_key: &Option<String>,
    query: Option<&str>,
    catalog_dir: Option<PathBuf>,
) -> Result<Vec<Value>, CliError> {
    if let Some(server) = server {
        let remote = Remote::new(server, api_key.clone(), None)?;
        let list = remote
            .get(&format!("/api/v1/apps?query={}", enc(query.unwrap_or(""))))
            .await?;
        return Ok(list["items"].as_array().cloned().unwrap_or_default());
    }
    let mut catalog = keyhaven::Catalog::builtin().map_err(|e| CliError::other(e.to_string()))?;
    if let Some(dir) = catalog_dir {
        let kh = Keyhaven::in_memory();
        let names: Vec<&str> = kh.schemes().names().collect();
        catalog
            .load_dir(&dir, &names)
            .map_err(|e| CliError::new(Exit::Invalid, e.to_string()))?;
    }
    catalog
        .search(query.unwrap_or(""))
        .iter()
        .map(|e| serde_json::to_value(e.as_ref()).map_err(|e| CliError::other(e.to_string())))
        .collect()
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
            None => Ok(Self::Local(crate::local::open(store).await?)),
        }
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
        match self {
            Self::Remote(r) => r.post("/api/v1/integrations", &body).await,
            Self::Local(kh) => {
                let new: NewIntegration =
                    serde_json::from_value(body).map_err(parse_err("integration"))?;
                let i = kh.integrations().create(new).await?;
                Ok(keyhaven_server::integration_view(kh, &i))
            }
        }
    }

    pub(crate) async fn integrations(&self, app: Option<&str>) -> Result<Vec<Value>, CliError> {
        match self {
            Self::Remote(r) => {
                let path = match app {
                    Some(a) => format!("/api/v1/integrations?appName={}", enc(a)),
                    None => "/api/v1/integrations".to_owned(),
                };
                Ok(r.get(&path).await?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default())
            }
            Self::Local(kh) => Ok(kh
                .integrations()
                .list(app)
                .await?
                .iter()
                .map(|i| keyhaven_server::integration_view(kh, i))
                .collect()),
        }
    }

    pub(crate) async fn integration(&self, id: &str) -> Result<Value, CliError> {
        match self {
            Self::Remote(r) => r.get(&format!("/api/v1/integrations/{}", enc(id))).await,
            Self::Local(kh) => Ok(keyhaven_server::integration_view(
                kh,
                &kh.integrations().get(id).await?,
            )),
        }
    }

    pub(crate) async fn delete_integration(&self, id: &str) -> Result<(), CliError> {
        match self {
            Self::Remote(r) => r
                .delete(&format!("/api/v1/integrations/{}", enc(id)))
                .await
                .map(drop),
            Self::Local(kh) => Ok(kh.integrations().delete(id).await?),
        }
    }

    /// What connecting to `app` (or through `integration`) with `scheme` asks for.
    pub(crate) async fn needed(
        &self,
        app: &str,
        scheme: Option<&str>,
        integration: Option<&str>,
    ) -> Result<Needed, CliError> {
        let scheme = scheme.map(str::to_ascii_uppercase);
        match self {
            Self::Local(kh) => {
                let (name, mut fields) = match integration {
                    Some(id) => {
                        let i = kh.integrations().get(id).await?;
                        let template = i
                            .config
                            .get(keyhaven::CONNECTION_PARAMS)
                            .and_then(Value::as_object)
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| Field {
                                        name: k.clone(),
                                        description: v.as_str().unwrap_or_default().to_owned(),
                                        secret: false,
                                        required: true,
                                    })
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default();
                        (i.auth_scheme.clone(), template)
                    }
                    None => {
                        let entry = kh.catalog().get(app);
                        let name = scheme
                            .clone()
                            .or_else(|| {
                                entry.and_then(|e| {
                                    e.preferred_scheme(|s| kh.schemes().get(s).is_ok())
                                        .map(str::to_owned)
                                })
                            })
                            .unwrap_or_else(|| "OAUTH2".to_owned());
                        let template = entry
                            .map(|e| {
                                e.params
                                    .iter()
                                    .map(|p| Field {
                                        name: p.name.clone(),
                                        description: p.description.clone(),
                                        secret: false,
                                        required: true,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        (name, template)
                    }
                };
                let s = kh.schemes().get(&name)?;
                let spec = s.spec();
                let mut all: Vec<Field> = spec
                    .params
                    .iter()
                    .map(|f| Field {
                        name: f.name.clone(),
                        description: f.description.clone(),
                        secret: f.secret,
                        required: f.required && f.default.is_none(),
                    })
                    .collect();
                all.append(&mut fields);
                Ok(Needed {
                    scheme: name,
                    interactive: spec.interactive,
                    fields: all,
                })
            }
            Self::Remote(r) => {
                let (name, fields) = match integration {
                    Some(id) => {
                        let i = r.get(&format!("/api/v1/integrations/{}", enc(id))).await?;
                        let name = i["authScheme"].as_str().unwrap_or("OAUTH2").to_owned();
                        (name, i["expectedInputFields"].clone())
                    }
                    None => {
                        let entry = r.get(&format!("/api/v1/apps/{}", enc(app))).await.ok();
                        let name = scheme
                            .clone()
                            .or_else(|| {
                                entry
                                    .as_ref()
                                    .and_then(|e| e["preferredScheme"].as_str().map(str::to_owned))
                            })
                            .unwrap_or_else(|| "OAUTH2".to_owned());
                        let fields = entry
                            .as_ref()
                            .and_then(|e| e["auth_schemes"].as_array())
                            .and_then(|schemes| {
                                schemes
                                    .iter()
                                    .find(|s| s["auth_mode"].as_str() == Some(name.as_str()))
                            })
                            .map(|s| s["fields"].clone())
                            .unwrap_or(Value::Null);
                        (name, fields)
                    }
                };
                let fields = fields
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|f| Field {
                                name: f["name"].as_str().unwrap_or_default().to_owned(),
                                description: f["description"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                                secret: f["is_secret"].as_bool().unwrap_or(false),
                                required: f["required"].as_bool().unwrap_or(false)
                                    && f["default"].is_null(),
                            })
                            .filter(|f| !f.name.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Needed {
                    interactive: name.starts_with("OAUTH2") && name != "OAUTH2_CLIENT_CREDENTIALS",
                    scheme: name,
                    fields,
                })
            }
        }
    }

    pub(crate) async fn initiate(&self, body: &Value) -> Result<Value, CliError> {
        match self {
            Self::Remote(r) => r.post("/api/v1/connectedAccounts", body).await,
            Self::Local(kh) => {
                let request: ConnectionRequest = serde_json::from_value(body.clone())
                    .map_err(parse_err("connection request"))?;
                let out = kh.initiate_connection(request).await?;
                serde_json::to_value(out).map_err(|e| CliError::other(e.to_string()))
            }
        }
    }

    pub(crate) async fn accounts(&self, args: &ListArgs) -> Result<Value, CliError> {
        match self {
            Self::Remote(r) => {
                let mut query = Vec::new();
                let statuses: Vec<String> = args
                    .statuses
                    .iter()
                    .map(|s| s.to_ascii_uppercase())
                    .collect();
                for (key, values) in [
                    ("entityId", &args.entities),
                    ("appNames", &args.apps),
                    ("status", &statuses),
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
                r.get(&format!("/api/v1/connectedAccounts?{}", query.join("&")))
                    .await
            }
            Self::Local(kh) => {
                let upper: Vec<String> = args
                    .statuses
                    .iter()
                    .map(|s| s.to_ascii_uppercase())
                    .collect();
                let filter = AccountFilter {
                    entity_ids: args
                        .entities
                        .iter()
                        .map(keyhaven::EntityId::new)
                        .collect::<Result<_, _>>()?,
                    apps: args
                        .apps
                        .iter()
                        .map(keyhaven::AppSlug::new)
                        .collect::<Result<_, _>>()?,
                    integration_ids: args
                        .integrations
                        .iter()
                        .map(|i| keyhaven::IntegrationId::parse(i))
                        .collect::<Result<_, _>>()?,
                    statuses: upper.iter().map(|s| s.parse()).collect::<Result<_, _>>()?,
                    labels: args
                        .labels
                        .iter()
                        .map(keyhaven::Label::new)
                        .collect::<Result<_, _>>()?,
                    after: args
                        .cursor
                        .as_deref()
                        .map(keyhaven::ConnectedAccountId::parse)
                        .transpose()?,
                    limit: args.limit.unwrap_or(0),
                };
                let page = kh.connected_accounts().list(&filter).await?;
                let mut integrations = HashMap::new();
                let mut items = Vec::new();
                for a in &page.items {
                    items.push(keyhaven_server::account_view(kh, a, &mut integrations).await);
                }
                Ok(json!({"items": items, "nextCursor": page.next_cursor}))
            }
        }
    }

    pub(crate) async fn account(&self, id: &str) -> Result<Value, CliError> {
        match self {
            Self::Remote(r) => {
                r.get(&format!("/api/v1/connectedAccounts/{}", enc(id)))
                    .await
            }
            Self::Local(kh) => {
                let a = kh.connected_accounts().get(id).await?;
                Ok(keyhaven_server::account_view(kh, &a, &mut HashMap::new()).await)
            }
        }
    }

    pub(crate) async fn delete_account(&self, id: &str) -> Result<(), CliError> {
        match self {
            Self::Remote(r) => r
                .delete(&format!("/api/v1/connectedAccounts/{}", enc(id)))
                .await
                .map(drop),
            // The process ends soon after: revoke before, not in the background.
            Self::Local(kh) => Ok(kh.connected_accounts().delete_and_revoke(id).await?),
        }
    }

    /// `refresh`, `enable` or `disable`.
    pub(crate) async fn action(&self, id: &str, action: &str) -> Result<Value, CliError> {
        match self {
            Self::Remote(r) => {
                r.post(
                    &format!("/api/v1/connectedAccounts/{}/{action}", enc(id)),
                    &json!({}),
                )
                .await
            }
            Self::Local(kh) => {
                let accounts = kh.connected_accounts();
                let a = match action {
                    "refresh" => accounts.refresh(id).await?,
                    "enable" => accounts.enable(id).await?,
                    _ => accounts.disable(id).await?,
                };
                Ok(keyhaven_server::account_view(kh, &a, &mut HashMap::new()).await)
            }
        }
    }

    /// Waits until the account leaves INITIATED, or `timeout`.
    pub(crate) async fn wait(&self, id: &str, timeout: Duration) -> Result<Value, CliError> {
        match self {
            Self::Local(kh) => {
                let a = kh.wait_for_connection(id, timeout).await?;
                Ok(keyhaven_server::account_view(kh, &a, &mut HashMap::new()).await)
            }
            Self::Remote(r) => {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let secs = left.as_secs_f64().min(60.0);
                    match r
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
        }
    }

    /// The account's credentials: `{connectedAccountId, expiresAt, credentials}`.
    pub(crate) async fn credentials(&self, id: &str) -> Result<Value, CliError> {
        match self {
            Self::Remote(r) => {
                r.call(
                    reqwest::Method::GET,
                    &format!("/api/v1/connectedAccounts/{}/credentials", enc(id)),
                    None,
                    true,
                )
                .await
            }
            Self::Local(kh) => {
                let c = kh.credentials(id).await?;
                Ok(json!({
                    "connectedAccountId": id,
                    "expiresAt": c.expires_at(),
                    "credentials": c.expose().expose(),
                }))
            }
        }
    }

    /// Sends a request with the account's credentials.
    pub(crate) async fn request(
        &self,
        id: &str,
        request: &ProxyRequest,
    ) -> Result<ProxyResponse, CliError> {
        match self {
            Self::Local(kh) => {
                let proxy = keyhaven_server::proxy::Proxy::new(ProxyLimits::default())?;
                Ok(proxy.send(kh, id, request).await?)
            }
            Self::Remote(r) => {
                let body =
                    serde_json::to_value(request).map_err(|e| CliError::other(e.to_string()))?;
                let v = r
                    .post(
                        &format!("/api/v1/connectedAccounts/{}/proxy", enc(id)),
                        &body,
                    )
                    .await?;
                serde_json::from_value(v)
                    .map_err(|e| CliError::other(format!("the server's proxy answer: {e}")))
            }
        }
    }
}

/// The request `keyhaven request` sends.
pub(crate) fn proxy_request(
    method: String,
    path: String,
    data: Option<String>,
    headers: &[String],
) -> Result<ProxyRequest, CliError> {
    let body = match data {
        None => None,
        Some(d) => {
            let text = if d == "@-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                    CliError::usage(format!("cannot read the body from stdin: {e}"))
                })?;
                s
            } else if let Some(file) = d.strip_prefix('@') {
                std::fs::read_to_string(file).map_err(|e| {
                    CliError::usage(format!("cannot read the body from {file}: {e}"))
                })?
            } else {
                d
            };
            Some(serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
    };
    let mut map = std::collections::BTreeMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| CliError::usage(format!("header {h:?} is not \"Name: value\"")))?;
        map.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    Ok(ProxyRequest {
        method: Some(method.to_ascii_uppercase()),
        path,
        headers: map,
        body,
    })
}
