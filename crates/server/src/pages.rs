//! The pages people see: where the provider sends them back after OAuth
//! (`/api/v1/oauth/callback`), and keyhaven's own success and failure pages for
//! connections without a `redirect_url`. Small, escaped, no assets from other hosts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::AppState;

/// Escapes text for HTML.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: a title, a heading and a paragraph, all escaped.
pub(crate) fn page(status: StatusCode, title: &str, heading: &str, detail: &str) -> Response {
    let body = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36rem; margin: 4rem auto; padding: 0 1rem; color: #1a1a1a; }}
h1 {{ font-size: 1.5rem; }}
p {{ line-height: 1.5; }}
</style>
</head>
<body>
<main>
<h1>{heading}</h1>
<p>{detail}</p>
</main>
</body>
</html>
"#,
        title = escape(title),
        heading = escape(heading),
        detail = escape(detail),
    );
    let mut response = (status, Html(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

/// `GET /api/v1/oauth/callback`: completes the connection, then sends the user to the
/// account's `redirect_url` (with `status` and `connectedAccountId`) or shows a page.
pub(crate) async fn callback(
    State(s): State<Arc<AppState>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    match s.kh.handle_callback(&query).await {
        Ok(outcome) => match &outcome.redirect_to {
            Some(url) => Redirect::to(url.as_str()).into_response(),
            None if outcome.succeeded() => page(
                StatusCode::OK,
                "Connected",
                &format!("Your {} account is connected", outcome.account.app),
                "You can close this window and go back to the app.",
            ),
            None => page(
                StatusCode::OK,
                "Connection failed",
                &format!(
                    "Your {} account could not be connected",
                    outcome.account.app
                ),
                outcome
                    .account
                    .status_reason
                    .as_deref()
                    .unwrap_or("The provider did not say why."),
            ),
        },
        Err(e) => page(
            StatusCode::BAD_REQUEST,
            "Connection failed",
            "This link cannot complete a connection",
            &e.to_string(),
        ),
    }
}
