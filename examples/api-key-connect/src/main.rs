//! Connects an OpenAI API key for the entity `alice` with the keyhaven library
//! (no server), then prints the account, a request authorized with it, and the
//! accounts found by label. Run it with `cargo run -p example-api-key-connect`.
//!
//! Everything is kept in the embedded store: `./keyhaven-data` (or
//! `KEYHAVEN_DATA_DIR`), a SQLite file with the credentials encrypted under a key
//! file created there with mode 0600. Run it twice: the second run reuses the
//! integration the first one created, and finds both accounts.
//!
//! The key comes from `OPENAI_API_KEY` when set; otherwise a made-up one is used.

use keyhaven::{
    AccountFilter, ConnectionRequest, Keyhaven, Label, OutgoingRequest, http::Method, url::Url,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let kh = Keyhaven::builder().build()?;
    let api_key =
        std::env::var("OPENAI_API_KEY").unwrap_or_else(|_| "sk-example-not-a-real-key".into());

    let out = kh
        .entity("alice")?
        .initiate_connection(
            ConnectionRequest::for_app("openai")
                .scheme("API_KEY")
                .param("api_key", api_key)
                .label("team:research"),
        )
        .await?;
    println!(
        "initiate answered:\n{}\n",
        serde_json::to_string_pretty(&out)?
    );

    let account = kh
        .connected_accounts()
        .get(out.connected_account_id.as_str())
        .await?;
    println!(
        "the connected account (no secrets in it):\n{}\n",
        serde_json::to_string_pretty(&account)?
    );

    let request =
        OutgoingRequest::new(Method::GET, Url::parse("https://api.openai.com/v1/models")?);
    let request = kh.authorize(account.id.as_str(), request).await?;
    println!("a request authorized with it (secret headers redacted):\n{request:?}\n");

    let labelled = kh
        .connected_accounts()
        .list_all(AccountFilter {
            labels: vec![Label::new("team:research")?],
            ..Default::default()
        })
        .await?;
    println!(
        "accounts labelled team:research in {}: {}",
        keyhaven::data_dir().display(),
        labelled.len()
    );
    Ok(())
}
