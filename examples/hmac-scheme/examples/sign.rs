//! Registers the third-party `HMAC_SHA256` scheme into keyhaven, connects an
//! account with it and prints a signed request.
//! Run it with `cargo run -p keyhaven-example-hmac --example sign`.

use keyhaven::{ConnectionRequest, Keyhaven, MemoryStore, OutgoingRequest, http::Method, url::Url};
use keyhaven_example_hmac::HmacScheme;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The app comes from a user catalogue entry: catalog/acme-payments.toml.
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .register(HmacScheme)
        .catalog_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/catalog"))
        .build()?;
    println!(
        "registered schemes: {}",
        kh.schemes().names().collect::<Vec<_>>().join(", ")
    );
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("acme-payments")
                .scheme("HMAC_SHA256")
                .param("key_id", "key-1")
                .param("secret", "an-example-shared-secret"),
        )
        .await?;
    let mut request = OutgoingRequest::new(
        Method::POST,
        Url::parse("https://api.acme-payments.example/v1/charges")?,
    );
    request.body = br#"{"amount":100}"#.to_vec();
    let signed = kh
        .authorize(out.connected_account_id.as_str(), request)
        .await?;
    println!("signed request (header values redacted in Debug): {signed:?}");
    // The entry's [hmac] table sets the header prefix: x-acme-.
    for name in ["x-acme-key-id", "x-acme-timestamp"] {
        println!("{name}: {}", signed.headers[name].to_str()?);
    }
    Ok(())
}
