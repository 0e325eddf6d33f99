//! The hot path: `credentials(id)` for a fresh token, served from the in-process
//! cache, against a bare `HashMap` read (get and clone) measured in the same run.
//! Target: at most 100 ns at the median and at most 4x the bare read.
//!
//! The peer, in the same run: yup-oauth2's `Authenticator::token(scopes)` for a token
//! it holds in its own memory storage (got once through its installed flow from a
//! token endpoint on 127.0.0.1, the code given by a flow delegate).
//!
//! `cargo bench -p keyhaven --bench cache`

#![allow(clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use keyhaven::{ConnectionRequest, Credentials, Keyhaven, MemoryStore};

fn cached_read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .expect("keyhaven");
    let id = rt
        .block_on(
            kh.initiate_connection(
                ConnectionRequest::for_app("openai")
                    .scheme("API_KEY")
                    .param("api_key", "sk-bench-0123456789"),
            ),
        )
        .expect("connect")
        .connected_account_id
        .to_string();
    // Fill the cache, and check that a read now completes without waiting.
    let warm = rt.block_on(kh.credentials(&id)).expect("credentials");
    assert!(
        kh.credentials(&id).now_or_never().is_some(),
        "a cached read never waits"
    );

    let mut bare: HashMap<String, Credentials> = HashMap::new();
    for n in 0..1000 {
        bare.insert(format!("ca_{n:032x}"), warm.clone());
    }
    bare.insert(id.clone(), warm);

    let yup = rt.block_on(yup_authenticator());
    let scopes = ["https://www.googleapis.com/auth/gmail.readonly"];
    let first = rt.block_on(yup.token(&scopes)).expect("yup-oauth2 token");
    assert_eq!(first.token(), Some(YUP_TOKEN));
    assert!(
        yup.token(&scopes).now_or_never().is_some(),
        "yup-oauth2's cached token never waits either"
    );

    let mut group = c.benchmark_group("credentials");
    group.bench_function("keyhaven cached credentials(id)", |b| {
        b.iter(|| black_box(kh.credentials(black_box(&id)).now_or_never()))
    });
    group.bench_function("bare HashMap get + clone", |b| {
        b.iter(|| black_box(bare.get(black_box(id.as_str())).cloned()))
    });
    group.bench_function("yup-oauth2 cached token()", |b| {
        b.iter(|| black_box(yup.token(black_box(&scopes)).now_or_never()))
    });
    group.finish();
}

const YUP_TOKEN: &str = "ya29.bench-access-token";

/// Gives the installed flow its code without a user.
struct CodeGiver;

impl yup_oauth2::authenticator_delegate::InstalledFlowDelegate for CodeGiver {
    fn present_user_url<'a>(
        &'a self,
        _url: &'a str,
        _need_code: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>
    {
        Box::pin(async { Ok("bench-code".to_owned()) })
    }
}

/// A yup-oauth2 authenticator holding a fresh token, got from a token endpoint on
/// 127.0.0.1.
async fn yup_authenticator() -> yup_oauth2::authenticator::DefaultAuthenticator {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(|| async {
            axum::Json(serde_json::json!({
                "access_token": YUP_TOKEN, "token_type": "Bearer", "expires_in": 3600,
                "refresh_token": "bench-refresh",
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let secret = yup_oauth2::ApplicationSecret {
        client_id: "bench-client".into(),
        client_secret: "bench-secret".into(),
        token_uri: format!("http://{addr}/token"),
        auth_uri: format!("http://{addr}/authorize"),
        redirect_uris: vec!["urn:ietf:wg:oauth:2.0:oob".into()],
        ..Default::default()
    };
    yup_oauth2::InstalledFlowAuthenticator::builder(
        secret,
        yup_oauth2::InstalledFlowReturnMethod::Interactive,
    )
    .flow_delegate(Box::new(CodeGiver))
    .build()
    .await
    .expect("yup-oauth2 authenticator")
}

criterion_group!(benches, cached_read);
criterion_main!(benches, parts_group);

fn parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock and cache parts");
    group.bench_function("Utc::now", |b| {
        b.iter(|| black_box(keyhaven::chrono::Utc::now()))
    });
    group.bench_function("quanta::Instant::now", |b| {
        b.iter(|| black_box(quanta::Instant::now()))
    });
    let clock = quanta::Clock::new();
    group.bench_function("quanta::Clock::now", |b| b.iter(|| black_box(clock.now())));
    let qc: quick_cache::sync::Cache<String, u64> = quick_cache::sync::Cache::new(10_000);
    let key = "ca_01a21dbd75c700006ce685bc6ca187cf".to_string();
    qc.insert(key.clone(), 1);
    group.bench_function("quick_cache get", |b| {
        b.iter(|| black_box(qc.get(black_box(key.as_str()))))
    });
    group.finish();
}
criterion_group!(parts_group, parts);
