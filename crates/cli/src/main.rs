//! `keyhaven`: connect accounts, read them, use their credentials, and serve the API.
//!
//! Every command works on a local data directory (the library, no server) or, with
//! `--server URL` (or `KEYHAVEN_SERVER`), against a keyhaven server. `--json` prints
//! JSON; otherwise tables for people. Errors are one line on stderr, and the exit code
//! says what happened (see `keyhaven --help`).

mod backend;
mod connect;
mod local;
mod output;
mod remote;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::backend::Backend;
use crate::local::StoreArgs;

/// mimalloc, not the system allocator: a server request allocates a few dozen
/// small buffers (headers, the JSON, the log line), and glibc's malloc and free
/// took about a tenth of the server's CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CODES: &str = "Exit codes:
  0  done (connect: the account is ACTIVE)
  1  an error not listed below
  2  bad usage (an unknown flag, a missing argument)
  3  not found (no such account, integration or app)
  4  invalid input, refused by keyhaven; nothing changed
  5  the connection FAILED, or the account is not ACTIVE, or the provider refused
  6  timed out: the account is still INITIATED
  7  the server refused the key
  8  the server, the database or the provider could not be reached
  9  request: the API answered with an error status (4xx or 5xx)
141  stdout was closed before everything was printed (as in `keyhaven apps | head -2`):
     the command stops quietly, as Unix tools stopped by SIGPIPE do";

/// What a run ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    NotFound = 3,
    Invalid = 4,
    Failed = 5,
    TimedOut = 6,
    Unauthorized = 7,
    Unavailable = 8,
    ApiError = 9,
    /// stdout is a closed pipe: stop without a word, with the status a shell shows
    /// for a program killed by SIGPIPE (128 + 13).
    ClosedStdout = 141,
}

/// An error of the command line: one line for people, and an exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    exit: Exit,
    message: String,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self::new(Exit::Error, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Exit::Unavailable, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Exit::NotFound, message)
    }

    /// stdout is closed (the reader of the pipe went away): no message.
    pub(crate) fn closed_stdout() -> Self {
        Self::new(Exit::ClosedStdout, "")
    }

    pub(crate) fn from_store(e: keyhaven::StoreError) -> Self {
        keyhaven::Error::from(e).into()
    }
}

impl From<keyhaven::Error> for CliError {
    fn from(e: keyhaven::Error) -> Self {
        let exit = match e.kind() {
            keyhaven::ErrorKind::InvalidInput => Exit::Invalid,
            keyhaven::ErrorKind::NotFound => Exit::NotFound,
            keyhaven::ErrorKind::Conflict | keyhaven::ErrorKind::Rejected => Exit::Failed,
            keyhaven::ErrorKind::Unavailable => Exit::Unavailable,
            keyhaven::ErrorKind::TimedOut => Exit::TimedOut,
            _ => Exit::Error,
        };
        Self::new(exit, e.to_string())
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "keyhaven",
    version,
    about = "A connection broker: your users' accounts on other services, kept fresh.",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options of every command.
#[derive(Debug, clap::Args)]
struct Global {
    /// Talk to this keyhaven server instead of the local data directory.
    #[arg(long, global = true, env = "KEYHAVEN_SERVER")]
    server: Option<String>,
    /// The server's admin key (serve: the admin key to accept).
    #[arg(long, global = true, env = "KEYHAVEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The server's credentials key, for `token`.
    #[arg(
        long,
        global = true,
        env = "KEYHAVEN_CREDENTIALS_KEY",
        hide_env_values = true
    )]
    credentials_key: Option<String>,
    /// The local data directory (default ./keyhaven-data).
    #[arg(long, global = true, env = "KEYHAVEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL store instead of the data directory (needs KEYHAVEN_MASTER_KEY).
    #[arg(
        long,
        global = true,
        env = "KEYHAVEN_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// A command that prints the master key (base64; older keys on further lines),
    /// instead of KEYHAVEN_MASTER_KEY or the data directory's master.key: for keys
    /// kept in Vault, 1Password or a TPM. Run with `sh -c`.
    #[arg(
        long,
        global = true,
        env = "KEYHAVEN_MASTER_KEY_COMMAND",
        conflicts_with = "kms_key_id"
    )]
    master_key_command: Option<String>,
    /// Keep the master key wrapped by this AWS KMS key (an id, ARN or alias), in
    /// master.key.kms in the data directory, never in plain; AWS credentials from
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the region from KEYHAVEN_KMS_REGION or
    /// AWS_REGION.
    #[arg(long, global = true, env = "KEYHAVEN_KMS_KEY_ID")]
    kms_key_id: Option<String>,
    /// The KMS's address, for a KMS other than AWS's (LocalStack, moto).
    #[arg(long, global = true, env = "KEYHAVEN_KMS_ENDPOINT")]
    kms_endpoint: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Log lines on stderr as JSON objects (one per line, with the request id) or as
    /// text for people; `auto`: text on a terminal, JSON otherwise (a file, a
    /// journal, a container's log). Never ANSI colours outside a terminal.
    #[arg(long, global = true, env = "KEYHAVEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Text for people.
    Pretty,
}

/// Starts the log: `KEYHAVEN_LOG` filters (default `info` for `serve`, `warn` for
/// commands), written to stderr in `format` by a thread of its own, so that a
/// request never waits for the write (when its queue is full, lines wait rather
/// than being dropped). The returned guard writes what is queued when dropped, at
/// the end of `main`; a process killed with SIGKILL loses what was still queued.
fn init_logging(
    command: &Command,
    format: LogFormat,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYHAVEN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match command {
            Command::Serve(_) => "info",
            _ => "warn",
        })
    });
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !terminal,
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("keyhaven-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        builder.init();
    }
    guard
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API, the OAuth callback and the hosted pages.
    Serve(Box<serve::ServeArgs>),
    /// List or search the app catalogue.
    Apps {
        /// Part of an app's slug, name or category.
        query: Option<String>,
        /// Extra catalogue entries (TOML files).
        #[arg(long, env = "KEYHAVEN_CATALOG_DIR")]
        catalog_dir: Option<PathBuf>,
    },
    /// Create, list, show and delete integrations.
    #[command(subcommand)]
    Integrations(IntegrationsCmd),
    /// Connect an account: prints where to go, then waits until it is ACTIVE or FAILED.
    Connect(connect::ConnectArgs),
    /// Wait until an INITIATED account is ACTIVE or FAILED.
    Wait {
        /// The account (ca_...).
        id: String,
        /// How long to wait: seconds, or with s, m or h.
        #[arg(long, default_value = "5m", value_parser = connect::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List, show, delete, refresh, enable and disable connected accounts.
    #[command(subcommand)]
    Accounts(AccountsCmd),
    /// Print a fresh credential of an account, for scripts (refreshes it if needed).
    Token {
        /// The account (ca_...).
        id: String,
        /// The field to print (default: the access token, API key or token).
        #[arg(long)]
        field: Option<String>,
    },
    /// Print the recorded uses of an account's credentials (reads, tokens printed,
    /// requests sent), oldest first.
    Audit {
        /// The account (ca_...).
        id: String,
        /// Only uses at or after this time (RFC 3339, such as 2026-11-30T08:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only uses before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many, the newest (default and at most 10000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Send an authenticated request to an account's API and print the answer.
    Request {
        /// The account (ca_...).
        id: String,
        /// GET, POST, PUT, PATCH, DELETE ...
        method: String,
        /// A path under the account's API base URL, such as /user.
        path: String,
        /// The body (JSON is sent as JSON; @FILE reads a file, @- stdin).
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// A header, "Name: value" (repeat).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print the status and headers too.
        #[arg(short = 'i', long)]
        include: bool,
    },
    /// Manage the encryption keys of the local store.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum IntegrationsCmd {
    /// Create an integration of an app (from the catalogue's entry).
    Create {
        /// The app, such as github.
        app: String,
        /// The auth scheme (default: the app's preferred one).
        #[arg(long)]
        scheme: Option<String>,
        /// A name.
        #[arg(long)]
        name: Option<String>,
        /// The OAuth client id.
        #[arg(long)]
        client_id: Option<String>,
        /// The OAuth client secret (asked for without echo when a client id is
        /// given and this is not).
        #[arg(long, env = "KEYHAVEN_CLIENT_SECRET", hide_env_values = true)]
        client_secret: Option<String>,
        /// A scope to ask for (repeat); default: the catalogue's.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Another setting, key=value (repeat).
        #[arg(long = "config", value_parser = connect::parse_key_value)]
        config: Vec<(String, String)>,
    },
    /// List integrations.
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
    },
    /// Show one integration.
    Show {
        /// int_...
        id: String,
    },
    /// Delete an integration without accounts.
    Delete {
        /// int_...
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountsCmd {
    /// List connected accounts.
    List(backend::ListArgs),
    /// Show one account.
    Show {
        /// ca_...
        id: String,
    },
    /// Delete an account (its credentials are revoked at the provider).
    Delete {
        /// ca_...
        id: String,
    },
    /// Refresh an account's credentials now.
    Refresh {
        /// ca_...
        id: String,
    },
    /// Enable a disabled account.
    Enable {
        /// ca_...
        id: String,
    },
    /// Disable an account: INACTIVE until enabled.
    Disable {
        /// ca_...
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Make a new primary key and re-encrypt every secret with it.
    Rotate {
        /// Remove the old keys from the key file afterwards (stop other processes using
        /// this data directory first: they still hold the old keys).
        #[arg(long)]
        retire_old: bool,
        /// Rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Wrap the data directory's master key with another KMS key (rotation of the
    /// wrapping key): no row is re-encrypted. Then start keyhaven with
    /// --kms-key-id set to the new key.
    Rewrap {
        /// The KMS key to wrap with from now on.
        #[arg(long = "to")]
        to: String,
    },
}

async fn run(cli: Cli) -> Result<Exit, CliError> {
    let g = cli.global;
    let keys = match (&g.master_key_command, &g.kms_key_id) {
        (Some(command), _) => local::KeySource::Command(command.clone()),
        (None, Some(key_id)) => local::KeySource::Kms {
            key_id: key_id.clone(),
            endpoint: g.kms_endpoint.clone(),
        },
        (None, None) => local::KeySource::Default,
    };
    let store = StoreArgs {
        data_dir: g.data_dir.clone(),
        database_url: g.database_url.clone(),
        keys,
    };
    let json = g.json;
    let backend = || Backend::new(g.server.as_deref(), &g.api_key, &g.credentials_key, &store);
    match cli.command {
        Command::Serve(args) => {
            serve::serve(*args, store.clone(), g.api_key.clone()).await?;
            Ok(Exit::Ok)
        }
        Command::Apps { query, catalog_dir } => {
            let apps = backend::apps(
                g.server.as_deref(),
                &g.api_key,
                query.as_deref(),
                catalog_dir,
            )
            .await?;
            output::apps(&apps, json, query.as_deref())?;
            Ok(Exit::Ok)
        }
        Command::Integrations(cmd) => {
            let b = backend().await?;
            match cmd {
                IntegrationsCmd::Create {
                    app,
                    scheme,
                    name,
                    client_id,
                    client_secret,
                    scopes,
                    config,
                } => {
                    let client_secret = match (&client_id, client_secret) {
                        (Some(_), None) => connect::ask_secret(
                            "client_secret",
                            "The OAuth client secret (leave empty for a public client)",
                        )?
                        .filter(|s| !s.is_empty()),
                        (_, s) => s,
                    };
                    let i = b
                        .create_integration(
                            &app,
                            scheme,
                            name,
                            client_id,
                            client_secret,
                            scopes,
                            config,
                        )
                        .await?;
                    output::integration(&i, json)?;
                }
                IntegrationsCmd::List { app } => {
                    output::integrations(&b.integrations(app.as_deref()).await?, json)?;
                }
                IntegrationsCmd::Show { id } => {
                    output::integration(&b.integration(&id).await?, json)?
                }
                IntegrationsCmd::Delete { id } => {
                    b.delete_integration(&id).await?;
                    output::done(json, &id, "deleted")?;
                }
            }
            Ok(Exit::Ok)
        }
        Command::Connect(args) => connect::connect(backend().await?, args, json).await,
        Command::Wait { id, timeout } => {
            let b = backend().await?;
            connect::wait_and_report(&b, &id, timeout, json).await
        }
        Command::Accounts(cmd) => {
            let b = backend().await?;
            match cmd {
                AccountsCmd::List(args) => output::accounts(&b.accounts(&args).await?, json)?,
                AccountsCmd::Show { id } => output::account(&b.account(&id).await?, json)?,
                AccountsCmd::Delete { id } => {
                    b.delete_account(&id).await?;
                    output::done(json, &id, "deleted")?;
                }
                AccountsCmd::Refresh { id } => {
                    output::account(&b.action(&id, "refresh").await?, json)?
                }
                AccountsCmd::Enable { id } => {
                    output::account(&b.action(&id, "enable").await?, json)?
                }
                AccountsCmd::Disable { id } => {
                    output::account(&b.action(&id, "disable").await?, json)?
                }
            }
            Ok(Exit::Ok)
        }
        Command::Token { id, field } => {
            let b = backend().await?;
            let creds = b.token(&id).await?;
            output::token(&creds, field.as_deref(), json)?;
            Ok(Exit::Ok)
        }
        Command::Audit {
            id,
            since,
            until,
            limit,
        } => {
            let b = backend().await?;
            let entries = b
                .audit(&id, since.as_deref(), until.as_deref(), limit)
                .await?;
            output::audit(&entries, json)?;
            Ok(Exit::Ok)
        }
        Command::Request {
            id,
            method,
            path,
            data,
            headers,
            include,
        } => {
            let b = backend().await?;
            let request = backend::cli_request(&method, path, data, &headers)?;
            let shown = match b.request(&id, request).await {
                Ok(response) => output::response(response, include, json).await,
                Err(e) => Err(e),
            };
            // The request's audit line is written before the process ends, whatever
            // became of the answer (the API unreachable, stdout closed, a cut body).
            let flushed = match b.keyhaven() {
                Some(kh) => kh
                    .audit()
                    .flush()
                    .await
                    .map_err(|e| CliError::new(Exit::Unavailable, e.to_string())),
                None => Ok(()),
            };
            let status = shown?;
            flushed?;
            Ok(if status >= 400 {
                Exit::ApiError
            } else {
                Exit::Ok
            })
        }
        Command::Keys(KeysCmd::Rotate { retire_old, batch }) => {
            if g.server.is_some() {
                return Err(CliError::usage(
                    "keys rotate works on the store itself: run it without --server, where the data directory or KEYHAVEN_DATABASE_URL is",
                ));
            }
            let report = local::rotate_keys(&store, retire_old, batch.max(1)).await?;
            output::rotation(&report, json)?;
            Ok(Exit::Ok)
        }
        Command::Keys(KeysCmd::Rewrap { to }) => {
            let kms = keyhaven::kms::Kms::from_env(g.kms_endpoint.as_deref())
                .map_err(CliError::from_store)?;
            let path = keyhaven::kms::rewrap(&store.dir(), &kms, &to)
                .await
                .map_err(CliError::from_store)?;
            output::line(format!(
                "the master key in {} is now wrapped by KMS key {to}; start keyhaven with --kms-key-id {to}",
                path.display()
            ))?;
            Ok(Exit::Ok)
        }
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "keyhaven", &mut script);
            output::emit(&String::from_utf8_lossy(&script))?;
            Ok(Exit::Ok)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log = init_logging(&cli.command, cli.global.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            output::error_line(&format!("cannot start the runtime: {e}"));
            return ExitCode::from(Exit::Error as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            if e.exit != Exit::ClosedStdout {
                output::error_line(&e.message);
            }
            ExitCode::from(e.exit as u8)
        }
    }
}
