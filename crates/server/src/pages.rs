//! The pages people see: where the provider sends them back after OAuth
//! (`/api/v1/oauth/callback`), the hosted connect form for schemes where the user
//! types a secret (`/connect`), and keyhaven's own success and failure pages.
//! Rendered from askama templates (escaped), small, no assets from other hosts, a
//! strict Content-Security-Policy, no referrer to other sites (links carry
//! single-use tokens; same-origin keeps the Origin header the form check reads).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use keyhaven::{CallbackOutcome, ConnectForm, ErrorKind, FieldKind};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::AppState;

/// The CSRF cookie of the connect form.
const CSRF_COOKIE: &str = "kh_csrf";

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    heading: &'a str,
    detail: &'a str,
    success: bool,
}

struct FormField {
    name: String,
    label: String,
    description: String,
    input_type: &'static str,
    required: bool,
    value: String,
}

#[derive(Template)]
#[template(path = "connect.html")]
struct ConnectPage<'a> {
    app_name: &'a str,
    action: &'a str,
    token: &'a str,
    csrf: &'a str,
    fields: Vec<FormField>,
    error: Option<&'a str>,
    expires: String,
}

/// Headers every page has. `form_action` lists where the page's form may go (and
/// be redirected to) besides this server.
fn secure(mut response: Response, form_action: Option<&str>) -> Response {
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'{}",
        form_action.map(|o| format!(" {o}")).unwrap_or_default()
    );
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// A whole page: a title, a heading and a paragraph.
pub(crate) fn page(status: StatusCode, title: &str, heading: &str, detail: &str) -> Response {
    let page = MessagePage {
        title,
        heading,
        detail,
        success: status.is_success() && title == "Connected",
    };
    secure(render(status, &page), None)
}

/// Where the user goes once the connection is finished: the app's redirect URL, or
/// keyhaven's own page saying what happened.
fn finished(s: &AppState, outcome: &CallbackOutcome) -> Response {
    let app =
        s.kh.catalog()
            .get(outcome.account.app.as_str())
            .map_or_else(|| outcome.account.app.to_string(), |e| e.name.clone());
    match &outcome.redirect_to {
        Some(url) => Redirect::to(url.as_str()).into_response(),
        None if outcome.succeeded() => page(
            StatusCode::OK,
            "Connected",
            &format!("Your {app} account is connected"),
            "Connected. The app can now act for you on this account.",
        ),
        None => page(
            StatusCode::OK,
            "Connection failed",
            &format!("Your {app} account could not be connected"),
            outcome
                .account
                .status_reason
                .as_deref()
                .unwrap_or("The provider did not say why."),
        ),
    }
}

/// `GET /api/v1/oauth/callback`: completes the connection, then sends the user to the
/// account's `redirect_url` (with `status` and `connectedAccountId`) or shows a page.
#[utoipa::path(get, path = "/api/v1/oauth/callback", tag = "pages",
    params(
        ("state" = crate::views::shapes::Token, Query, description = "The state keyhaven sent the provider"),
        ("code" = Option<String>, Query, description = "The authorization code"),
        ("error" = Option<String>, Query, description = "The provider's error, when the user denied"),
    ),
    responses(
        (status = 200, description = "keyhaven's success or failure page (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "To the app's redirect URL, with status and connectedAccountId"),
        (status = 400, description = "A missing state, or not one keyhaven makes (HTML page)", content_type = "text/html", body = String),
        (status = 404, description = "An unknown, used or expired state (HTML page)", content_type = "text/html", body = String),
        (status = 409, description = "The account's callback was handled already (HTML page)", content_type = "text/html", body = String),
        (status = 503, description = "The provider could not be reached (HTML page)", content_type = "text/html", body = String),
        (status = 504, description = "The store or the provider did not answer in time (HTML page)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn callback(
    State(s): State<Arc<AppState>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    match s.kh.handle_callback(&query).await {
        Ok(outcome) => finished(&s, &outcome),
        Err(e) => page(
            link_status(query.get("state").map(String::as_str), "state", &e),
            "Connection failed",
            "This link cannot complete a connection",
            &e.to_string(),
        ),
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The origin of the account's redirect URL, which the form may be redirected to.
fn redirect_origin(form: &ConnectForm) -> Option<String> {
    form.account
        .redirect_url
        .as_deref()
        .and_then(|u| keyhaven::url::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
}

fn form_page(
    s: &AppState,
    status: StatusCode,
    form: &ConnectForm,
    token: &str,
    csrf: &str,
    error: Option<&str>,
    typed: &Map<String, Value>,
) -> Response {
    let fields = form
        .fields
        .iter()
        .map(|f| FormField {
            name: f.name.clone(),
            label: f
                .name
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|first| first.to_uppercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(" ")
                .replace("Api", "API")
                .replace("Url", "URL")
                .replace("Id", "ID"),
            description: f.description.clone(),
            // A login's name is kept secret too, but people need to see what they type.
            input_type: if f.secret && !matches!(f.name.as_str(), "username" | "email" | "login") {
                "password"
            } else if f.kind == FieldKind::Url {
                "url"
            } else {
                "text"
            },
            required: f.required && f.default.is_none(),
            // What the user typed comes back after an error, never a secret.
            value: if f.secret {
                String::new()
            } else {
                typed
                    .get(&f.name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            },
        })
        .collect();
    let action = format!(
        "{}/connect",
        s.config.public_url.as_str().trim_end_matches('/')
    );
    let minutes = (form.expires_at - keyhaven::chrono::Utc::now())
        .num_minutes()
        .max(1);
    let page = ConnectPage {
        app_name: &form.app_name,
        action: &action,
        token,
        csrf,
        fields,
        error,
        expires: format!("in about {minutes} minutes"),
    };
    let mut response = secure(render(status, &page), redirect_origin(form).as_deref());
    let secure_flag = if s.config.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={csrf}; Path=/connect; HttpOnly; SameSite=Strict; Max-Age=3600{secure_flag}"
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// Whether `token` has the shape of the states and form tokens keyhaven makes (32
/// random bytes in lowercase hex).
fn well_formed(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The status of a refused link: 400 when `token` (the query's `field`) is missing or
/// is not one keyhaven makes; 404 when it is well formed but unknown, used or expired;
/// 409 when its account has moved on.
fn link_status(token: Option<&str>, field: &str, e: &keyhaven::Error) -> StatusCode {
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::NotFound if !token.is_some_and(well_formed) => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::InvalidInput => match e {
            keyhaven::Error::InvalidInput { field: f, .. } if f == field => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        },
        kind => crate::error::status_of(kind),
    }
}

/// The page of a link refused; `field` is what the library calls its token (`token`
/// for a connect form's, `link` for a connection link's).
fn refused_link(token: &str, field: &str, e: &keyhaven::Error) -> Response {
    page(
        link_status(Some(token), field, e),
        "Link not usable",
        "This connection link cannot be used",
        &e.to_string(),
    )
}

fn link_refused(token: &str, e: &keyhaven::Error) -> Response {
    refused_link(token, "token", e)
}

/// Whether a form was posted from a page of another origin (browsers send `Origin`
/// with every POST; a request without one is not a browser's cross-site post).
fn from_other_origin(s: &AppState, headers: &HeaderMap, what: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let other = origin != s.config.public_url.origin().ascii_serialization();
    if other {
        tracing::warn!(origin, "{what} posted from another origin; refused");
    }
    other
}

/// `GET /connect?token=`: the hosted connect form.
#[utoipa::path(get, path = "/connect", tag = "pages",
    params(("token" = crate::views::shapes::Token, Query, description = "The token of initiate's redirectUrl")),
    responses(
        (status = 200, description = "The form (HTML), with a CSRF cookie", content_type = "text/html", body = String),
        (status = 400, description = "A missing token, or not one keyhaven makes (HTML page)", content_type = "text/html", body = String),
        (status = 404, description = "An unknown, used or expired link (HTML page)", content_type = "text/html", body = String),
        (status = 409, description = "The account no longer waits for this form (HTML page)", content_type = "text/html", body = String),
        (status = 503, description = "The store could not be reached (HTML page)", content_type = "text/html", body = String),
        (status = 504, description = "The store or the provider did not answer in time (HTML page)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn connect_form(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("token").map(String::as_str).unwrap_or_default();
    let form = match s.kh.connect_form(token).await {
        Ok(f) => f,
        Err(e) => return link_refused(token, &e),
    };
    let csrf = match keyhaven::random_hex::<32>() {
        Ok(c) => c,
        Err(e) => return link_refused(token, &e),
    };
    form_page(&s, StatusCode::OK, &form, token, &csrf, None, &Map::new())
}

/// `POST /connect`: the form's values. Checks the CSRF token (the cookie and the
/// form's field must match) and the Origin, then completes the connection.
#[utoipa::path(post, path = "/connect", tag = "pages",
    request_body(content = crate::views::shapes::ConnectFormBody, content_type = "application/x-www-form-urlencoded", description = "token, csrf and the form's fields"),
    responses(
        (status = 200, description = "keyhaven's success or failure page (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "To the app's redirect URL, with status and connectedAccountId"),
        (status = 400, description = "The form again, saying which field is wrong; or a token keyhaven does not make", content_type = "text/html", body = String),
        (status = 403, description = "A missing or wrong CSRF token, or another origin", content_type = "text/html", body = String),
        (status = 404, description = "An unknown, used or expired link (HTML page)", content_type = "text/html", body = String),
        (status = 409, description = "The account no longer waits for this form (HTML page)", content_type = "text/html", body = String),
        (status = 415, description = "Not a form (`Content-Type: application/x-www-form-urlencoded`)", content_type = "text/plain", body = String),
        (status = 503, description = "The service could not be reached (HTML page)", content_type = "text/html", body = String),
        (status = 504, description = "The store or the provider did not answer in time (HTML page)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn submit_connect_form(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(mut values): Form<HashMap<String, String>>,
) -> Response {
    let forbidden = || {
        page(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form could not be accepted",
            "It was not sent from the page keyhaven showed (it may have been open too long, or cookies are off). Open the link again.",
        )
    };
    if from_other_origin(&s, &headers, "connect form") {
        return forbidden();
    }
    let token = values.remove("token").unwrap_or_default();
    let given_csrf = values.remove("csrf").unwrap_or_default();
    let csrf_ok = cookie(&headers, CSRF_COOKIE)
        .is_some_and(|c| !c.is_empty() && bool::from(c.as_bytes().ct_eq(given_csrf.as_bytes())));
    if !csrf_ok {
        return forbidden();
    }
    let typed: Map<String, Value> = values
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    match s.kh.submit_connect_form(&token, &typed).await {
        Ok(outcome) => finished(&s, &outcome),
        Err(ref e @ keyhaven::Error::InvalidInput { ref field, .. }) if field == "token" => {
            link_refused(&token, e)
        }
        Err(e) if e.kind() == ErrorKind::InvalidInput => match s.kh.connect_form(&token).await {
            Ok(form) => form_page(
                &s,
                StatusCode::BAD_REQUEST,
                &form,
                &token,
                &given_csrf,
                Some(&e.to_string()),
                &typed,
            ),
            Err(e) => link_refused(&token, &e),
        },
        Err(e) => link_refused(&token, &e),
    }
}

#[derive(Template)]
#[template(path = "link.html")]
struct LinkTemplate<'a> {
    app_name: &'a str,
    action: &'a str,
    at_provider: bool,
    expires: String,
}

/// `GET /link/{token}`: the page of a connection link (`POST
/// /api/v3.1/connected_accounts/link`). Showing it does not use the link up: mail
/// scanners and link previews fetch pages.
#[utoipa::path(get, path = "/link/{token}", tag = "pages",
    params(("token" = crate::views::shapes::Token, Path, description = "The link's token")),
    responses(
        (status = 200, description = "The page (HTML): which app, and a button to go on", content_type = "text/html", body = String),
        (status = 400, description = "Not a token keyhaven makes (HTML page)", content_type = "text/html", body = String),
        (status = 404, description = "An unknown, used or expired link, or one whose connection is done (HTML page)", content_type = "text/html", body = String),
        (status = 503, description = "The store could not be reached (HTML page)", content_type = "text/html", body = String),
        (status = 504, description = "The store did not answer in time (HTML page)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn link(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    let link = match s.kh.link_page(&token).await {
        Ok(l) => l,
        Err(e) => return refused_link(&token, "link", &e),
    };
    let ours = s.config.public_url.origin().ascii_serialization();
    let action = format!(
        "{}/link/{token}",
        s.config.public_url.as_str().trim_end_matches('/')
    );
    let minutes = (link.expires_at - keyhaven::chrono::Utc::now())
        .num_minutes()
        .max(1);
    let page = LinkTemplate {
        app_name: &link.app_name,
        action: &action,
        at_provider: link.target_origin.as_deref().is_some_and(|o| o != ours),
        expires: format!("in about {minutes} minutes"),
    };
    // The form is redirected on to the provider (or the connect form): allowed.
    secure(render(StatusCode::OK, &page), link.target_origin.as_deref())
}

/// `POST /link/{token}`: uses the link up and sends the user on, to the provider or
/// to the connect form.
#[utoipa::path(post, path = "/link/{token}", tag = "pages",
    params(("token" = crate::views::shapes::Token, Path, description = "The link's token")),
    responses(
        (status = 303, description = "On to the provider's page or the connect form"),
        (status = 400, description = "Not a token keyhaven makes (HTML page)", content_type = "text/html", body = String),
        (status = 403, description = "Sent from another origin (HTML page)", content_type = "text/html", body = String),
        (status = 404, description = "An unknown, used or expired link, or one whose connection is done (HTML page)", content_type = "text/html", body = String),
        (status = 503, description = "The store could not be reached (HTML page)", content_type = "text/html", body = String),
        (status = 504, description = "The store did not answer in time (HTML page)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn follow_link(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    if from_other_origin(&s, &headers, "connection link") {
        return page(
            StatusCode::FORBIDDEN,
            "Link refused",
            "This link could not be followed from there",
            "Open the link itself again.",
        );
    }
    match s.kh.follow_link(&token).await {
        Ok(target) => secure(Redirect::to(target.as_str()).into_response(), None),
        Err(e) => refused_link(&token, "link", &e),
    }
}
