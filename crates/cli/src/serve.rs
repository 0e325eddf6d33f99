//! `keyhaven serve`: the REST API, the OAuth callback and the hosted pages.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyhaven::secrecy::SecretString;
use keyhaven::url::Url;
use keyhaven::{EventKind, Keyhaven, KeyhavenBuilder};
use keyhaven_server::proxy::ProxyLimits;
use keyhaven_server::{AdminKey, AppState, CREDENTIALS_KEY_FILE, RateLimit, ServerConfig, Webhook};
use serde::Deserialize;

use crate::local::{StoreArgs, Use, open_store};
use crate::{CliError, output};

/// The default address: loopback only.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:9210";

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A TOML file with the settings below (listen, data_dir, database_url,
    /// public_url, redirect_allowlist, cors_origins, audit_log, audit_store, metrics_listen,
    /// tls_cert, tls_key, trusted_proxies,
    /// webhook_attempts,
    /// webhook_first_retry, webhook_lease, event_retention_days,
    /// proxy_max_response_bytes, api_read_timeout, header_timeout, body_timeout,
    /// idle_timeout, request_timeout, max_connections, rate_limit, rate_limit_burst, [[webhooks]]).
    #[arg(long, env = "KEYHAVEN_CONFIG")]
    config: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, env = "KEYHAVEN_LISTEN")]
    listen: Option<SocketAddr>,
    /// The URL the world reaches this server at (the OAuth callback and the connect
    /// form are under it). Default: http://LISTEN.
    #[arg(long, env = "KEYHAVEN_PUBLIC_URL")]
    public_url: Option<String>,
    /// URL prefixes that redirect URLs may point under (repeat, or comma-separated in the environment).
    #[arg(
        long = "allow-redirect",
        env = "KEYHAVEN_REDIRECT_ALLOWLIST",
        value_delimiter = ','
    )]
    allow_redirect: Vec<String>,
    /// Origins allowed to call the API from browsers (CORS); none by default.
    #[arg(
        long = "cors-origin",
        env = "KEYHAVEN_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// The credentials key (reads credentials, nothing else); when absent, one is
    /// generated on first start and shown once.
    #[arg(long, env = "KEYHAVEN_CREDENTIALS_KEY", hide_env_values = true)]
    credentials_key: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM: the server's certificate, then
    /// its intermediates); needs --tls-key. Read again on SIGHUP.
    #[arg(long, env = "KEYHAVEN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM). Read again on SIGHUP.
    #[arg(long, env = "KEYHAVEN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A reverse proxy in front of this server (an address or a network, such as
    /// 10.0.0.0/8; repeat or separate with commas): requests from it have their
    /// client's address taken from X-Forwarded-For (rate limits, the audit log).
    #[arg(
        long = "trusted-proxy",
        env = "KEYHAVEN_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
    /// A key that reads GET /metrics and nothing else (the admin key reads them too).
    #[arg(long, env = "KEYHAVEN_METRICS_KEY", hide_env_values = true)]
    metrics_key: Option<String>,
    /// Also serve GET /metrics with no key on this address: a port only the scraper
    /// reaches, such as 127.0.0.1:9211.
    #[arg(long, env = "KEYHAVEN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Where credential reads are recorded, one JSON line each. Default:
    /// audit.log in the data directory.
    #[arg(long, env = "KEYHAVEN_AUDIT_LOG", conflicts_with = "audit_store")]
    audit_log: Option<PathBuf>,
    /// Record uses of credentials in the store (its audit_log table) instead of a
    /// file: one trail for every instance sharing a PostgreSQL database.
    #[arg(long, env = "KEYHAVEN_AUDIT_STORE")]
    audit_store: bool,
    /// A URL that receives status changes as signed webhooks.
    #[arg(long, env = "KEYHAVEN_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// The webhook's signing secret (HMAC-SHA256).
    #[arg(long, env = "KEYHAVEN_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Tries per webhook event (with back-off: 1 s, 2 s, 4 s ...).
    #[arg(long, env = "KEYHAVEN_WEBHOOK_ATTEMPTS")]
    webhook_attempts: Option<u32>,
    /// Seconds before the first retry of a webhook delivery, doubled for each
    /// further one up to an hour [default: 1].
    #[arg(long, env = "KEYHAVEN_WEBHOOK_FIRST_RETRY", value_name = "SECONDS")]
    webhook_first_retry: Option<f64>,
    /// Seconds a webhook delivery claimed by one instance is held before another
    /// may claim it (an instance that dies mid-try delays that delivery this long);
    /// at least 11 [default: 60].
    #[arg(long, env = "KEYHAVEN_WEBHOOK_LEASE", value_name = "SECONDS")]
    webhook_lease: Option<f64>,
    /// Days events are kept in the store's event log (replayed to event streams
    /// that reconnect with Last-Event-ID; webhook deliveries are made from them)
    /// [default: 7].
    #[arg(long, env = "KEYHAVEN_EVENT_RETENTION_DAYS", value_name = "DAYS")]
    event_retention_days: Option<f64>,
    /// The largest API answer the proxy reads, in bytes; a larger one is refused
    /// with 502. Default: 10485760 (10 MiB).
    #[arg(long, env = "KEYHAVEN_PROXY_MAX_RESPONSE_BYTES")]
    proxy_max_response_bytes: Option<u64>,
    /// Seconds an account's API may stay silent while it answers a proxied request
    /// (before the head of its answer, and between two parts of its body); then the
    /// request fails (503) or its body is cut [default: 60].
    #[arg(long, env = "KEYHAVEN_API_READ_TIMEOUT", value_name = "SECONDS")]
    api_read_timeout: Option<f64>,
    /// Seconds a client has to send a request's headers, from when it connects or
    /// starts its next request; then the connection is dropped [default: 10].
    #[arg(long, env = "KEYHAVEN_HEADER_TIMEOUT", value_name = "SECONDS")]
    header_timeout: Option<f64>,
    /// Seconds a client has to send a request's body once the server reads it;
    /// then 408 [default: 30].
    #[arg(long, env = "KEYHAVEN_BODY_TIMEOUT", value_name = "SECONDS")]
    body_timeout: Option<f64>,
    /// Seconds a kept-alive connection may wait for its next request before it is
    /// closed [default: 60].
    #[arg(long, env = "KEYHAVEN_IDLE_TIMEOUT", value_name = "SECONDS")]
    idle_timeout: Option<f64>,
    /// Seconds a request may take before it is cancelled and answered 503; event
    /// streams and the long-poll wait are not cut [default: 60].
    #[arg(long, env = "KEYHAVEN_REQUEST_TIMEOUT", value_name = "SECONDS")]
    request_timeout: Option<f64>,
    /// Connections served at once; more wait in the kernel's queue [default: 10000,
    /// or the open-file limit less 256 when lower].
    #[arg(long, env = "KEYHAVEN_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Requests per second per client address on the OAuth callback and the connect
    /// form, and for requests with a missing or wrong key; more get 429. 0 turns the
    /// limit off [default: 20].
    #[arg(long, env = "KEYHAVEN_RATE_LIMIT", value_name = "PER_SECOND")]
    rate_limit: Option<u32>,
    /// Requests per client address allowed at once before the rate applies
    /// [default: 60].
    #[arg(long, env = "KEYHAVEN_RATE_LIMIT_BURST", value_name = "REQUESTS")]
    rate_limit_burst: Option<u32>,
}

/// A webhook in the TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    url: String,
    secret: String,
    #[serde(default)]
    events: Vec<String>,
}

/// The TOML file's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    redirect_allowlist: Vec<String>,
    #[serde(default)]
    cors_origins: Vec<String>,
    audit_log: Option<PathBuf>,
    audit_store: Option<bool>,
    metrics_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    webhook_attempts: Option<u32>,
    webhook_first_retry: Option<f64>,
    webhook_lease: Option<f64>,
    event_retention_days: Option<f64>,
    proxy_max_response_bytes: Option<u64>,
    api_read_timeout: Option<f64>,
    header_timeout: Option<f64>,
    body_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    request_timeout: Option<f64>,
    max_connections: Option<usize>,
    rate_limit: Option<u32>,
    rate_limit_burst: Option<u32>,
    #[serde(default)]
    webhooks: Vec<FileWebhook>,
}

/// A timeout setting: the flag's or the file's seconds, else `default`.
pub(crate) fn seconds(
    name: &str,
    flag: Option<f64>,
    file: Option<f64>,
    default: Duration,
) -> Result<Duration, CliError> {
    match flag.or(file) {
        None => Ok(default),
        Some(s) => Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "{name} must be a positive number of seconds, such as 10 or 0.5 (got {s})"
                ))
            }),
    }
}

/// The connection and rate limits, from the flags, else the file, else the
/// defaults.
fn limits(
    args: &ServeArgs,
    file: &FileConfig,
    mut config: ServerConfig,
) -> Result<ServerConfig, CliError> {
    config.header_read_timeout = seconds(
        "header_timeout",
        args.header_timeout,
        file.header_timeout,
        config.header_read_timeout,
    )?;
    config.body_read_timeout = seconds(
        "body_timeout",
        args.body_timeout,
        file.body_timeout,
        config.body_read_timeout,
    )?;
    config.idle_timeout = seconds(
        "idle_timeout",
        args.idle_timeout,
        file.idle_timeout,
        config.idle_timeout,
    )?;
    config.request_timeout = seconds(
        "request_timeout",
        args.request_timeout,
        file.request_timeout,
        config.request_timeout,
    )?;
    config.webhook_first_retry = seconds(
        "webhook_first_retry",
        args.webhook_first_retry,
        file.webhook_first_retry,
        config.webhook_first_retry,
    )?;
    config.webhook_lease = seconds(
        "webhook_lease",
        args.webhook_lease,
        file.webhook_lease,
        config.webhook_lease,
    )?;
    if config.webhook_lease < Duration::from_secs(11) {
        return Err(CliError::usage(
            "webhook_lease must be at least 11 seconds (longer than a try, 10 s)".to_owned(),
        ));
    }
    if let Some(max) = args.max_connections.or(file.max_connections) {
        if max == 0 {
            return Err(CliError::usage(
                "max_connections must be at least 1".to_owned(),
            ));
        }
        config.max_connections = max;
    }
    let default = RateLimit::default();
    let per_second = args
        .rate_limit
        .or(file.rate_limit)
        .unwrap_or(default.per_second);
    let burst = args
        .rate_limit_burst
        .or(file.rate_limit_burst)
        .unwrap_or(default.burst);
    config.rate_limit = if per_second == 0 {
        None
    } else if burst == 0 {
        return Err(CliError::usage(
            "rate_limit_burst must be at least 1 (turn the limit off with rate_limit = 0)"
                .to_owned(),
        ));
    } else {
        Some(RateLimit { per_second, burst })
    };
    Ok(config)
}

/// Raises this process's soft limit of open files to its hard limit (as far as
/// 1,048,576), so that the default connection limit, which is derived from it, is
/// not held to the 1,024 many systems start with.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        const MOST: u64 = 1 << 20;
        let limit = getrlimit(Resource::Nofile);
        let wanted = limit.maximum.unwrap_or(MOST).min(MOST);
        if limit.current.is_some_and(|c| c < wanted) {
            let raised = Rlimit {
                current: Some(wanted),
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
}

fn webhook(url: &str, secret: String, events: &[String]) -> Result<Webhook, CliError> {
    let url = Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| CliError::usage(format!("webhook URL {url:?} is not an http(s) URL")))?;
    if secret.is_empty() {
        let mut shown = url.clone();
        shown.set_query(None);
        return Err(CliError::usage(format!(
            "webhook {shown} needs a secret to sign with"
        )));
    }
    let events = events
        .iter()
        .map(|e| {
            EventKind::parse(e).ok_or_else(|| {
                CliError::usage(format!(
                    "unknown webhook event {e:?}; the events are {}",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Webhook {
        url,
        secret: SecretString::from(secret),
        events,
    })
}

pub(crate) async fn serve(
    args: ServeArgs,
    store_args: StoreArgs,
    api_key: Option<String>,
) -> Result<(), CliError> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
            toml::from_str(&text)
                .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
    raise_open_file_limit();
    // Everything the settings say is checked before anything is created.
    let limited = limits(&args, &file, ServerConfig::default())?;
    let listen = args.listen.or(file.listen).unwrap_or_else(|| {
        DEFAULT_LISTEN
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9210)))
    });
    let mut webhooks = Vec::new();
    if let Some(url) = &args.webhook_url {
        webhooks.push(webhook(
            url,
            args.webhook_secret.clone().unwrap_or_default(),
            &[],
        )?);
    }
    for w in file.webhooks {
        webhooks.push(webhook(&w.url, w.secret, &w.events)?);
    }
    let mut cors_origins = args.cors_origins;
    cors_origins.extend(file.cors_origins);
    cors_origins.retain(|o| !o.is_empty());
    for origin in &cors_origins {
        if Url::parse(origin).is_err() {
            return Err(CliError::usage(format!(
                "CORS origin {origin:?} is not an origin such as https://app.example.com"
            )));
        }
    }
    let max_response_bytes = args
        .proxy_max_response_bytes
        .or(file.proxy_max_response_bytes)
        .unwrap_or(keyhaven_server::proxy::DEFAULT_MAX_RESPONSE_BYTES);
    if max_response_bytes == 0 {
        return Err(CliError::usage(
            "--proxy-max-response-bytes must be at least 1 (the default is 10485760, 10 MiB)",
        ));
    }
    let store_args = StoreArgs {
        data_dir: store_args.data_dir.or(file.data_dir),
        database_url: store_args.database_url.or(file.database_url),
        keys: store_args.keys,
    };
    let tls = match (
        args.tls_cert.as_ref().or(file.tls_cert.as_ref()),
        args.tls_key.as_ref().or(file.tls_key.as_ref()),
    ) {
        (Some(cert), Some(key)) => Some(
            keyhaven_server::Tls::from_pem_files(cert, key)
                .map_err(|e| CliError::usage(e.to_string()))?,
        ),
        (None, None) => None,
        _ => {
            return Err(CliError::usage(
                "tls_cert and tls_key go together: give both, or neither".to_owned(),
            ));
        }
    };
    let trusted_proxies =
        args.trusted_proxies
            .iter()
            .chain(&file.trusted_proxies)
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<keyhaven_server::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(keyhaven_server::IpNet::from))
                .map_err(|_| {
                    CliError::usage(format!(
                        "trusted proxy {p:?} is neither an address nor a network such as 10.0.0.0/8"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
    let data_dir = store_args.dir();
    let (store, description) = open_store(&store_args, Use::Serving).await?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::unavailable(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::other(e.to_string()))?;
    let public_url = args.public_url.or(file.public_url).unwrap_or_else(|| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{local}")
    });
    let public_url = Url::parse(public_url.trim_end_matches('/'))
        .map_err(|e| CliError::usage(format!("public URL {public_url:?}: {e}")))?;

    let audit_path = args
        .audit_log
        .or(file.audit_log)
        .unwrap_or_else(|| data_dir.join("audit.log"));
    let in_store = args.audit_store || file.audit_store.unwrap_or(false);
    let audit = if in_store {
        keyhaven::AuditLog::to_store(store.clone())
    } else {
        keyhaven::AuditLog::to_file(&audit_path)
    }
    .map_err(|e| CliError::other(e.to_string()))?;
    let audit_place = if in_store {
        "the store's audit_log table".to_owned()
    } else {
        audit_path.display().to_string()
    };
    let retention_days = args
        .event_retention_days
        .or(file.event_retention_days)
        .unwrap_or(keyhaven::DEFAULT_EVENT_RETENTION_DAYS as f64);
    let retention = Duration::try_from_secs_f64(retention_days * 86_400.0)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            CliError::usage(format!(
                "event_retention_days must be a positive number of days, not {retention_days}"
            ))
        })?;
    let api_read_timeout = seconds(
        "api_read_timeout",
        args.api_read_timeout,
        file.api_read_timeout,
        keyhaven::request::READ_TIMEOUT,
    )?;
    let mut builder: KeyhavenBuilder = Keyhaven::builder()
        .shared_store(store)
        .event_retention(retention)
        .read_timeout(api_read_timeout)
        .audit_log(audit.clone())
        .callback_url(&AppState::callback_url(&public_url))
        .connect_form_url(&AppState::connect_form_url(&public_url));
    for prefix in args
        .allow_redirect
        .iter()
        .chain(&file.redirect_allowlist)
        .filter(|p| !p.is_empty())
    {
        builder = builder.allow_redirect_url(prefix);
    }
    let kh = builder.build().map_err(CliError::from)?;

    let admin_key = match api_key {
        Some(key) => AdminKey::from_plain(&key),
        None => {
            let (key, shown) = AdminKey::load_or_create(&data_dir).map_err(CliError::other)?;
            if let Some(plain) = shown {
                output::line(format!(
                    "admin API key (shown once, stored hashed in {}): {plain}",
                    data_dir.display()
                ))?;
            }
            key
        }
    };
    let credentials_key = match args.credentials_key {
        Some(key) => AdminKey::from_plain(&key),
        None => {
            let (key, shown) =
                AdminKey::load_or_create_file(&data_dir, CREDENTIALS_KEY_FILE, "khc_")
                    .map_err(CliError::other)?;
            if let Some(plain) = shown {
                output::line(format!(
                    "credentials key (reads credentials only; shown once, stored hashed in {}): {plain}",
                    data_dir.display()
                ))?;
            }
            key
        }
    };

    let config = ServerConfig {
        public_url: public_url.clone(),
        cors_origins,
        webhook_attempts: args.webhook_attempts.or(file.webhook_attempts).unwrap_or(8),
        webhooks,
        proxy: ProxyLimits { max_response_bytes },
        trusted_proxies,
        ..limited
    };
    let metrics_listener = match args.metrics_listen.or(file.metrics_listen) {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CliError::other(format!("cannot listen for metrics on {addr}: {e}"))
            })?;
            Some(l)
        }
        None => None,
    };
    output::line(format!(
        "keyhaven listening on {}://{local} (public URL {}, {description}, {} webhook(s), audit log {}, at most {} connections)",
        if tls.is_some() { "https" } else { "http" },
        public_url.as_str().trim_end_matches('/'),
        config.webhooks.len(),
        audit_place,
        config.max_connections,
    ))?;
    if let Some(l) = &metrics_listener {
        let addr = l.local_addr().map_err(|e| CliError::other(e.to_string()))?;
        output::line(format!("metrics (no key) at http://{addr}/metrics"))?;
    }
    let mut state = AppState::new(kh, admin_key);
    state.credentials_key = Some(credentials_key);
    state.metrics_key = args.metrics_key.as_deref().map(AdminKey::from_plain);
    state.config = config;
    let state = Arc::new(state);
    let metrics = match metrics_listener {
        Some(listener) => {
            let state = state.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = keyhaven_server::serve_metrics(listener, state).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }))
        }
        None => None,
    };
    match tls {
        Some(tls) => {
            let reloads = reload_on_hangup(tls.clone());
            let served = keyhaven_server::serve_with(listener, tls, state, shutdown_signal()).await;
            reloads.abort();
            served
        }
        None => keyhaven_server::serve(listener, state, shutdown_signal()).await,
    }
    .map_err(|e| CliError::other(e.to_string()))?;
    if let Some(m) = metrics {
        m.abort();
    }
    // A clean stop: every queued audit line is written before the process ends.
    audit.close();
    output::line("keyhaven stopped")?;
    Ok(())
}

/// Reads the TLS certificate and key again on each SIGHUP; a pair that does not
/// load is logged and the one in use stays.
fn reload_on_hangup(tls: keyhaven_server::Tls) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP: the TLS certificate is not reloaded");
                return;
            };
            while hangups.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate not reloaded; the one in use stays");
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tls;
    })
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
