//! `keyhaven connect APP`: one command that connects an account and waits for the
//! user, like `composio add`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::backend::Backend;
use crate::{CliError, Exit, output};

#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// The app, such as github or openai.
    app: Option<String>,
    /// The entity (end user) the account belongs to.
    #[arg(long, default_value = "default")]
    entity: String,
    /// Use this integration (int_...) instead of the app's.
    #[arg(long)]
    integration: Option<String>,
    /// A label to find the account by later (repeat).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A connection field, key=value (repeat): api_key=..., subdomain=...
    #[arg(long = "param", value_parser = parse_key_value)]
    params: Vec<(String, String)>,
    /// The auth scheme (default: the app's preferred one).
    #[arg(long)]
    scheme: Option<String>,
    /// Where the user lands after connecting (must be on the redirect allowlist).
    #[arg(long)]
    redirect_url: Option<String>,
    /// Open the URL in the browser.
    #[arg(long)]
    open: bool,
    /// Print the URL and the account id, and do not wait.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait: seconds, or with s, m or h.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
}

/// `key=value`.
pub(crate) fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

/// `90`, `90s`, `5m`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 5m or 1h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "ms" => n / 1000.0,
        _ => return Err(format!("{text:?}: use s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Asks for a secret: without echo at a terminal, else one line of stdin. `None`
/// when stdin has nothing more.
pub(crate) fn ask_secret(name: &str, description: &str) -> Result<Option<String>, CliError> {
    if std::io::stdin().is_terminal() {
        let answer = rpassword::prompt_password(format!("{name} ({description}): "))
            .map_err(|e| CliError::other(format!("cannot read {name}: {e}")))?;
        return Ok(Some(answer.trim().to_owned()));
    }
    read_line()
}

/// Asks for a value that is not secret.
fn ask_visible(name: &str, description: &str) -> Result<Option<String>, CliError> {
    if std::io::stdin().is_terminal() {
        let mut err = std::io::stderr();
        let _ = write!(err, "{name} ({description}): ");
        let _ = err.flush();
    }
    read_line()
}

fn read_line() -> Result<Option<String>, CliError> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::other(format!("cannot read stdin: {e}")))?;
    Ok((n > 0).then(|| line.trim_end_matches(['\r', '\n']).to_owned()))
}

pub(crate) async fn connect(
    backend: Backend,
    args: ConnectArgs,
    json: bool,
) -> Result<Exit, CliError> {
    let app = match (&args.app, &args.integration) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => String::new(),
        (None, None) => {
            return Err(CliError::usage(
                "name the app (keyhaven connect github) or give --integration",
            ));
        }
    };
    let needed = backend
        .needed(&app, args.scheme.as_deref(), args.integration.as_deref())
        .await?;
    let mut params = Map::new();
    for (k, v) in &args.params {
        params.insert(k.clone(), Value::String(v.clone()));
    }
    if !needed.interactive {
        for field in needed.fields.iter().filter(|f| f.required) {
            if params.contains_key(&field.name) {
                continue;
            }
            let answer = if field.secret {
                ask_secret(&field.name, &field.description)?
            } else {
                ask_visible(&field.name, &field.description)?
            };
            match answer.filter(|a| !a.is_empty()) {
                Some(a) => {
                    params.insert(field.name.clone(), Value::String(a));
                }
                None => {
                    return Err(CliError::new(
                        Exit::Invalid,
                        format!(
                            "{} needs {}: {} (give --param {}=... or type it when asked)",
                            needed.scheme, field.name, field.description, field.name
                        ),
                    ));
                }
            }
        }
    }
    let mut body = json!({
        "entityId": args.entity,
        "labels": args.labels,
        "connected_account_params": params,
    });
    match &args.integration {
        Some(i) => body["integrationId"] = json!(i),
        None => {
            body["appName"] = json!(app);
            body["authScheme"] = json!(needed.scheme);
        }
    }
    if let Some(r) = &args.redirect_url {
        body["redirectUri"] = json!(r);
    }
    let out = backend.initiate(&body).await?;
    let id = out["connectedAccountId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let status = out["connectionStatus"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = out["redirectUrl"].as_str().map(str::to_owned);

    if status != "INITIATED" {
        // ACTIVE (or FAILED) at once: nothing to wait for.
        let account = backend.account(&id).await?;
        return report(&account, json);
    }
    if args.no_wait {
        output::initiated(&out, json)?;
        if let (true, Some(u)) = (args.open, &url) {
            open_browser(u);
        }
        return Ok(Exit::Ok);
    }
    if let Some(u) = &url {
        output::visit(u, &id, json)?;
        if args.open {
            open_browser(u);
        }
    }
    // On a local store nothing else may be there to take the provider's callback:
    // serve it here while waiting, when its address is free.
    let _callback = match backend.keyhaven() {
        Some(kh) if needed.interactive => local_callback(kh).await,
        _ => None,
    };
    wait_and_report(&backend, &id, args.timeout, json).await
}

/// Waits with a spinner, then prints the account; the exit code tells the outcome.
pub(crate) async fn wait_and_report(
    backend: &Backend,
    id: &str,
    timeout: Duration,
    json: bool,
) -> Result<Exit, CliError> {
    let spinner =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!(
        "waiting for the connection to finish (up to {}s; Ctrl-C stops waiting)",
        timeout.as_secs()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let result = backend.wait(id, timeout).await;
    spinner.finish_and_clear();
    match result {
        Ok(account) => report(&account, json),
        Err(e) if e.exit == Exit::TimedOut => Err(CliError::new(
            Exit::TimedOut,
            format!(
                "still INITIATED after {}s: the user has not finished; `keyhaven wait {id}` waits again",
                timeout.as_secs()
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Prints the account; ACTIVE is success, anything else a failure.
fn report(account: &Value, json: bool) -> Result<Exit, CliError> {
    let status = account["status"].as_str().unwrap_or_default();
    if status == "ACTIVE" {
        output::account(account, json)?;
        return Ok(Exit::Ok);
    }
    if json {
        output::account(account, json)?;
    }
    Err(CliError::new(
        Exit::Failed,
        format!(
            "connection {} is {status}: {}",
            account["id"].as_str().unwrap_or_default(),
            account["statusReason"]
                .as_str()
                .unwrap_or("the provider did not say why")
        ),
    ))
}

fn open_browser(url: &str) {
    if let Err(e) = webbrowser::open(url) {
        output::warn(&format!(
            "cannot open a browser ({e}); open the URL yourself"
        ));
    }
}

/// Serves the OAuth callback on the callback URL's address while the command waits.
async fn local_callback(kh: &keyhaven::Keyhaven) -> Option<tokio::task::JoinHandle<()>> {
    let url = kh.callback_url();
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return None;
    }
    let listener = tokio::net::TcpListener::bind((host, port)).await.ok()?;
    // Only the callback and the pages are used: an admin key no one knows.
    let state = Arc::new(keyhaven_server::AppState::new(
        kh.clone(),
        keyhaven_server::AdminKey::from_plain(&keyhaven::random_hex::<32>().ok()?),
    ));
    Some(tokio::spawn(async move {
        let _ = keyhaven_server::serve(listener, state, std::future::pending()).await;
    }))
}
