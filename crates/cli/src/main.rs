//! `keyhaven`: serve the API (`keyhaven serve`) and browse the app catalogue
//! (`keyhaven apps`). Configuration comes from flags, `KEYHAVEN_*` environment
//! variables and an optional TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keyhaven::{Keyhaven, KeyhavenBuilder, PostgresStore, SqliteStore, Store};
use keyhaven_server::{AdminKey, AppState};
use serde::Deserialize;

/// The default address: loopback only.
const DEFAULT_LISTEN: &str = "127.0.0.1:9210";

#[derive(Debug, Parser)]
#[command(
    name = "keyhaven",
    version,
    about = "A connection broker: your users' accounts on other services, kept fresh."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API, the OAuth callback and its pages.
    Serve(ServeArgs),
    /// List or search the app catalogue.
    Apps {
        /// Part of an app's slug, name or category.
        query: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Extra catalogue entries (TOML files).
        #[arg(long, env = "KEYHAVEN_CATALOG_DIR")]
        catalog_dir: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML file with the settings below (listen, data_dir, database_url, public_url,
    /// redirect_allowlist).
    #[arg(long, env = "KEYHAVEN_CONFIG")]
    config: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, env = "KEYHAVEN_LISTEN")]
    listen: Option<SocketAddr>,
    /// The embedded store's directory (when no database URL is given).
    #[arg(long, env = "KEYHAVEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL URL: share one database between instances (needs KEYHAVEN_MASTER_KEY).
    #[arg(long, env = "KEYHAVEN_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The URL the world reaches this server at (the OAuth callback is under it).
    #[arg(long, env = "KEYHAVEN_PUBLIC_URL")]
    public_url: Option<String>,
    /// The admin API key; when absent, one is generated on first start and shown once.
    #[arg(long, env = "KEYHAVEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// URL prefixes that redirect URLs may point under (repeat, or comma-separated in the environment).
    #[arg(
        long = "allow-redirect",
        env = "KEYHAVEN_REDIRECT_ALLOWLIST",
        value_delimiter = ','
    )]
    allow_redirect: Vec<String>,
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
}

fn catalog_only(dir: Option<PathBuf>) -> Result<keyhaven::Catalog, String> {
    let mut catalog = keyhaven::Catalog::builtin().map_err(|e| e.to_string())?;
    if let Some(dir) = dir {
        let kh = Keyhaven::in_memory();
        let names: Vec<&str> = kh.schemes().names().collect();
        catalog.load_dir(&dir, &names).map_err(|e| e.to_string())?;
    }
    Ok(catalog)
}

fn apps(query: Option<String>, json: bool, dir: Option<PathBuf>) -> Result<(), String> {
    let catalog = catalog_only(dir)?;
    let hits = catalog.search(query.as_deref().unwrap_or(""));
    if json {
        let out: Vec<&keyhaven::AppEntry> = hits.iter().map(|e| e.as_ref()).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    if hits.is_empty() {
        println!("no app matches {:?}", query.unwrap_or_default());
        return Ok(());
    }
    let width = hits.iter().map(|e| e.slug.len()).max().unwrap_or(4).max(4);
    let name_width = hits
        .iter()
        .map(|e| e.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 32);
    println!("{:width$}  {:name_width$}  SCHEMES", "SLUG", "NAME");
    for e in hits {
        let name: String = e.name.chars().take(32).collect();
        println!(
            "{:width$}  {:name_width$}  {}",
            e.slug,
            name,
            e.schemes.join(", ")
        );
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let listen = args.listen.or(file.listen).unwrap_or_else(|| {
        DEFAULT_LISTEN
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9210)))
    });
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(keyhaven::data_dir);
    let database_url = args.database_url.or(file.database_url);

    let store: Arc<dyn Store> = match &database_url {
        Some(url) => {
            let keys = keyhaven::ring_from_env()
                .map_err(|e| e.to_string())?
                .ok_or("a shared PostgreSQL store needs KEYHAVEN_MASTER_KEY (base64 of 32 bytes), the same on every instance")?;
            Arc::new(
                PostgresStore::connect(url, keys)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
        None => Arc::new(SqliteStore::open_dir(&data_dir).map_err(|e| e.to_string())?),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let public_url = args
        .public_url
        .or(file.public_url)
        .unwrap_or_else(|| format!("http://{local}"));
    let public_url = public_url.trim_end_matches('/').to_owned();

    let mut builder: KeyhavenBuilder = Keyhaven::builder()
        .shared_store(store)
        .callback_url(&format!("{public_url}/api/v1/oauth/callback"));
    for prefix in args
        .allow_redirect
        .iter()
        .chain(&file.redirect_allowlist)
        .filter(|p| !p.is_empty())
    {
        builder = builder.allow_redirect_url(prefix);
    }
    let kh = builder.build().map_err(|e| e.to_string())?;

    let admin_key = match args.api_key {
        Some(key) => AdminKey::from_plain(&key),
        None => {
            let (key, shown) = AdminKey::load_or_create(&data_dir)?;
            if let Some(plain) = shown {
                println!(
                    "admin API key (shown once, stored hashed in {}): {plain}",
                    data_dir.display()
                );
            }
            key
        }
    };
    println!(
        "keyhaven listening on http://{local} (public URL {public_url}, {})",
        match &database_url {
            Some(_) => "PostgreSQL store".to_owned(),
            None => format!("SQLite store in {}", data_dir.display()),
        }
    );
    let state = Arc::new(AppState { kh, admin_key });
    keyhaven_server::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    println!("keyhaven stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYHAVEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Apps {
            query,
            json,
            catalog_dir,
        } => apps(query, json, catalog_dir),
        Command::Serve(args) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(serve(args)),
            Err(e) => Err(format!("cannot start the runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::from(1)
        }
    }
}
