//! The proxy's rules, as pure functions: which URL a caller's path may reach (only
//! under the account's API base URL), which methods and headers may go with the
//! credentials, and how a URL is shown in messages (never with its query or user
//! name, which may carry secrets). Kept free of HTTP handling so that they can move
//! into the facade with the request path.

use crate::Error;
use http::{HeaderName, HeaderValue, Method};
use url::Url;

/// The methods the proxy sends.
pub const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Headers about one connection (RFC 9110 7.6.1), set by the HTTP client itself.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Why a caller's header `name` (lower case) never goes to an API with the
/// credentials: `Host`, hop-by-hop headers, keyhaven's own `x-api-key`,
/// `content-length`. `None` when it may go. The JSON routes and the library refuse
/// these; the passthrough drops them.
pub fn refusal(name: &str) -> Option<&'static str> {
    if name == "host" {
        Some(
            "is refused: the Host header comes from the account's API URL, so that the credentials go to no other host; leave it out",
        )
    } else if is_hop_by_hop(name) {
        Some(
            "is refused: it is a hop-by-hop (connection or proxy) header, which the proxy's own HTTP client sets; leave it out",
        )
    } else if name == "x-api-key" {
        Some(
            "is refused: it is keyhaven's own key header and never goes to an API (the API's credentials are added by keyhaven); leave it out",
        )
    } else if name == "content-length" {
        Some("is refused: it is computed from the body; leave it out")
    } else {
        None
    }
}

/// Whether `name` (lower case) is about one connection or a proxy hop: never
/// forwarded either way.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("proxy-")
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::invalid(field, reason)
}

/// Whether `headers`' `Connection` header lists `name`: a header meant for this
/// hop only, which a proxy removes (RFC 9110, section 7.6.1), in either direction.
pub fn named_by_connection(headers: &http::HeaderMap, name: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|listed| {
            listed.to_str().is_ok_and(|listed| {
                listed
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case(name))
            })
        })
}

/// The method to send: `GET` when none is given; only [`METHODS`].
///
/// # Errors
/// Any other method (`TRACE`, `CONNECT`, a made-up one).
pub fn method(given: Option<&str>) -> Result<Method, Error> {
    let name = given.unwrap_or("GET").trim();
    METHODS
        .iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(name))
        .cloned()
        .ok_or_else(|| refused_method(name))
}

/// `method` when the proxy sends it (one of [`METHODS`]).
///
/// # Errors
/// Any other method, as [`method`].
pub fn sendable(method: Method) -> Result<Method, Error> {
    if METHODS.contains(&method) {
        Ok(method)
    } else {
        Err(refused_method(method.as_str()))
    }
}

fn refused_method(name: &str) -> Error {
    let allowed: Vec<&str> = METHODS.iter().map(Method::as_str).collect();
    let shown: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(20)
        .collect::<String>()
        .to_ascii_uppercase();
    invalid(
        "method",
        format!(
            "{shown:?} is not sent through the proxy; use one of {}",
            allowed.join(", ")
        ),
    )
}

/// A caller's header, checked: not `Host`, not a hop-by-hop or `proxy-*` header,
/// not keyhaven's own `x-api-key`, not `content-length` (the body sets it).
///
/// # Errors
/// A refused name, or a name or value that is not valid in HTTP.
pub fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let parsed = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        let shown: String = name.chars().filter(|c| !c.is_control()).take(40).collect();
        invalid("headers", format!("{shown:?} is not a header name"))
    })?;
    let refused = |why: &str| invalid(&format!("headers.{parsed}"), why.to_owned());
    if let Some(why) = refusal(parsed.as_str()) {
        return Err(refused(why));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| refused("has a value that cannot be sent (such as a line break)"))?;
    Ok((parsed, value))
}

/// `url` as messages may show it: scheme, host, port and path; never a user name,
/// a password, a query or a fragment, which may carry secrets.
pub fn shown(url: &Url) -> String {
    let mut out = url.clone();
    out.set_query(None);
    out.set_fragment(None);
    // Only URLs that cannot have them refuse these; then there is nothing to remove.
    let _ = out.set_username("");
    let _ = out.set_password(None);
    out.to_string()
}

/// `text` with every value of `url`'s query replaced by `[redacted]`: a last guard
/// for messages made by other code (an HTTP client's error) about a URL that holds
/// credentials in its query.
pub fn scrub(text: &str, url: &Url) -> String {
    let mut out = text.to_owned();
    if let Some(query) = url.query().filter(|q| !q.is_empty()) {
        out = out.replace(query, "[redacted]");
    }
    for (_, value) in url.query_pairs() {
        if value.len() >= 4 {
            out = out.replace(value.as_ref(), "[redacted]");
        }
    }
    out
}

/// Decodes `%xx` escapes; a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 255.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The path part of a caller's path or absolute URL, as written (before the query).
/// Only an absolute URL has a scheme and host to skip: a `://` in a relative path's
/// query (`/x?next=https://a`) is not one.
fn raw_path(given: &str, absolute: bool) -> &str {
    let rest = match given.split_once("://") {
        Some((_, after_scheme)) if absolute => {
            let start = after_scheme.find('/').unwrap_or(after_scheme.len());
            &after_scheme[start..]
        }
        _ => given,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// Refuses the path tricks that make servers and proxies disagree about where a
/// request goes: `.` and `..` segments (also encoded, `%2e%2e`, or with `;` after
/// them), encoded slashes and backslashes (`%2f`, `%5c`), NUL, and escapes encoded
/// twice (`%252e`).
fn check_segments(path: &str) -> Result<(), Error> {
    for segment in path.split('/') {
        let why = if segment.contains('%') {
            encoded_segment_trick(segment)
        } else {
            // Nothing encoded: the segment is what servers read. Control characters
            // and backslashes were refused in the whole path before.
            let name = segment.split(';').next().unwrap_or_default();
            (name == "." || name == "..").then_some(DOT_SEGMENT)
        };
        if let Some(why) = why {
            return Err(invalid(
                "path",
                format!("{why}; give the plain path under the account's API, such as /user/repos"),
            ));
        }
    }
    Ok(())
}

const DOT_SEGMENT: &str = "has a . or .. segment (also as %2e)";

/// What is wrong with a path segment holding `%` escapes, decoded: a dot segment,
/// an encoded slash, backslash or control character, an escape encoded twice.
fn encoded_segment_trick(segment: &str) -> Option<&'static str> {
    let decoded = percent_decode(segment);
    let text = String::from_utf8_lossy(&decoded).to_ascii_lowercase();
    let name = text.split(';').next().unwrap_or_default();
    if name == "." || name == ".." {
        Some(DOT_SEGMENT)
    } else if text.contains(['/', '\\']) {
        Some("has an encoded slash or backslash (%2f, %5c)")
    } else if text.contains(|c: char| c.is_control()) {
        Some("has an encoded control character (such as %00)")
    } else if ["%2e", "%2f", "%5c", "%00", "%25"]
        .iter()
        .any(|e| text.contains(e))
    {
        Some("has an escape encoded twice (such as %252e)")
    } else {
        None
    }
}

/// The path of `base` with no `/` at its end: `""` for an API at the host's root.
fn base_path(base: &Url) -> &str {
    base.path().trim_end_matches('/')
}

/// Whether `url` is at `base` or under it: same scheme, host and port, and a path that
/// is the base's or continues it after a `/` (so `/apiother` is not under `/api`).
pub fn is_under(url: &Url, base: &Url) -> bool {
    let prefix = base_path(base);
    let path = url.path();
    url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
        && (prefix.is_empty()
            || path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// The URL the caller's `path` names under the account's API at `base`: a path
/// (`/user/repos?per_page=5`, appended to the base URL's path) or an absolute URL at
/// or under the base URL.
///
/// # Errors
/// [`Error::InvalidInput`] on `path` for anything that would leave the base URL or
/// that servers may read differently: another scheme, host or port, a path beside
/// the base path, `..` or `.` segments, encoded slashes, backslashes, control
/// characters, a user name or password in the URL.
pub fn target(base: &Url, path: &str) -> Result<Url, Error> {
    if path.contains(|c: char| c.is_control()) {
        return Err(invalid(
            "path",
            "has a control character (such as a line break); percent-encode it",
        ));
    }
    let before_query = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    if before_query.contains('\\') {
        return Err(invalid(
            "path",
            "has a backslash, which some servers read as /; use / or percent-encode it as %5C in a query",
        ));
    }
    let starts_with = |prefix: &str| {
        path.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    let absolute = starts_with("http://") || starts_with("https://");
    if !absolute && (!path.starts_with('/') || path.starts_with("//")) {
        return Err(invalid(
            "path",
            format!(
                "give a path starting with / under {}, such as /user",
                shown(base)
            ),
        ));
    }
    check_segments(raw_path(path, absolute))?;
    let url = if absolute {
        let url = Url::parse(path).map_err(|e| invalid("path", format!("is not a URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "path",
                "has a user name or password in the URL (user:password@host); the credentials come from the account, give the URL without them",
            ));
        }
        url
    } else {
        // The base URL with the path appended: its scheme and host are kept as they
        // are (not parsed again), the path and query set (and encoded) by `url`.
        let without_fragment = &path[..path.find('#').unwrap_or(path.len())];
        let (own_path, own_query) = match without_fragment.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (without_fragment, None),
        };
        let mut url = base.clone();
        url.set_fragment(None);
        url.set_path(&format!("{}{own_path}", base_path(base)));
        // A query of the base URL itself comes first.
        let query = match (
            base.query().filter(|q| !q.is_empty()),
            own_query.filter(|q| !q.is_empty()),
        ) {
            (Some(b), Some(own)) => Some(format!("{b}&{own}")),
            (Some(b), None) => Some(b.to_owned()),
            (None, Some(own)) => Some(own.to_owned()),
            (None, None) => None,
        };
        url.set_query(query.as_deref());
        url
    };
    if !is_under(&url, base) {
        return Err(invalid(
            "path",
            format!(
                "{} is not under the account's API at {}: credentials are only sent there",
                shown(&url),
                shown(base)
            ),
        ));
    }
    let mut url = url;
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:19401/api").unwrap()
    }

    #[test]
    fn paths_stay_under_the_base_url() {
        let base = Url::parse("https://api.example.com/v1").unwrap();
        assert_eq!(
            target(&base, "/user?x=1").unwrap().as_str(),
            "https://api.example.com/v1/user?x=1"
        );
        assert!(target(&base, "https://api.example.com/v1/me").is_ok());
        assert!(target(&base, "https://api.example.com/v1").is_ok());
        assert!(target(&base, "HTTPS://API.example.com:443/v1/me").is_ok());
        for bad in [
            "user",
            "",
            "//evil.example/x",
            "https://evil.example/v1/user",
            "https://api.example.com/v2/user",
            "http://api.example.com/v1/user",
            "https://api.example.com:8443/v1/user",
            "https://api.example.com/v1other",
            "ftp://api.example.com/v1/user",
        ] {
            assert!(target(&base, bad).is_err(), "{bad} must be refused");
        }
        // '@' after the host is part of the path, never a new host.
        assert_eq!(
            target(&base, "/@evil.example").unwrap().host_str(),
            Some("api.example.com")
        );
    }

    #[test]
    fn the_base_path_ends_at_a_slash() {
        let base = base();
        for bad in [
            "http://127.0.0.1:19401/apiother/x",
            "http://127.0.0.1:19401/api-internal/x",
            "http://127.0.0.1:19401/",
            "/../api-internal/x",
            "/./x",
            "/x/../../api-internal",
            "/%2e%2e/api-internal/x",
            "/%2E%2E/api-internal/x",
            "/.%2e/api-internal/x",
            "/%2e./api-internal/x",
            "/..;/api-internal/x",
            "/x/..%2f..%2fapi-internal",
            "/x%2f..%2f..%2fapi-internal",
            "/x%5c..%5capi-internal",
            "/x\\..\\..\\api-internal",
            "/%252e%252e/api-internal",
            "/x%00/y",
            "/x\n/y",
            "http://127.0.0.1:19401/api/../api-internal/x",
            "http://127.0.0.1:19401/api/%2e%2e/api-internal/x",
            "http://127.0.0.1:19401\\api/x",
            // A URL in the query is no scheme of the path.
            "/..;/api-internal/x?next=http://x",
            "/x%2f..%2f..%2fapi-internal?u=https://a/b",
            "/%252e%252e/api-internal#http://x",
            "http://127.0.0.1:19401/api/..;/api-internal?u=http://a/b",
        ] {
            assert!(target(&base, bad).is_err(), "{bad:?} must be refused");
        }
        for good in [
            "/x",
            "/",
            "/x/y.json?a=..&b=%2f",
            "/x?next=https://example.com/../y",
            "/files/a..b",
            "/x%20y",
            "http://127.0.0.1:19401/api",
            "http://127.0.0.1:19401/api/x",
        ] {
            let url = target(&base, good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(url.path().starts_with("/api"), "{url}");
        }
        // An API at the root: every path is under it.
        let root = Url::parse("https://api.example.com").unwrap();
        assert_eq!(
            target(&root, "/x").unwrap().as_str(),
            "https://api.example.com/x"
        );
    }

    #[test]
    fn user_names_in_urls_are_refused_and_never_shown() {
        let err = target(&base(), "http://ann:pw-SECRET@127.0.0.1:19401/api/x").unwrap_err();
        assert!(!err.to_string().contains("pw-SECRET"), "{err}");
        assert!(target(&base(), "http://ann@127.0.0.1:19401/api/x").is_err());
        let err = target(&base(), "http://ann:pw-SECRET@evil.example/x").unwrap_err();
        assert!(!err.to_string().contains("pw-SECRET"), "{err}");
    }

    #[test]
    fn a_base_url_query_is_kept() {
        let base = Url::parse("https://api.example.com/v1?version=2").unwrap();
        assert_eq!(
            target(&base, "/me?x=1").unwrap().as_str(),
            "https://api.example.com/v1/me?version=2&x=1"
        );
        assert_eq!(
            target(&base, "/me").unwrap().as_str(),
            "https://api.example.com/v1/me?version=2"
        );
    }

    #[test]
    fn only_ordinary_methods_are_sent() {
        assert_eq!(method(None).unwrap(), Method::GET);
        assert_eq!(method(Some("patch")).unwrap(), Method::PATCH);
        for m in ["TRACE", "trace", "CONNECT", "TRACK", "PROPFIND", "", "G ET"] {
            assert!(method(Some(m)).is_err(), "{m}");
        }
    }

    #[test]
    fn headers_that_redirect_or_smuggle_are_refused() {
        for name in [
            "Host",
            "host",
            "Connection",
            "keep-alive",
            "Proxy-Authorization",
            "proxy-connection",
            "TE",
            "trailer",
            "Transfer-Encoding",
            "upgrade",
            "x-api-key",
            "X-API-KEY",
            "content-length",
        ] {
            assert!(header(name, "x").is_err(), "{name}");
        }
        assert!(header("x-extra", "1").is_ok());
        assert!(header("accept", "application/json").is_ok());
        assert!(header("x-extra", "a\r\nhost: evil").is_err());
        assert!(header("bad name", "1").is_err());
    }

    #[test]
    fn shown_urls_carry_no_secrets() {
        let url = Url::parse("http://ann:pw@127.0.0.1:19409/api/x?key=sk-123#frag").unwrap();
        assert_eq!(shown(&url), "http://127.0.0.1:19409/api/x");
        let message = "error for url (http://127.0.0.1:19409/api/x?key=sk-123456)";
        let with_key = Url::parse("http://127.0.0.1:19409/api/x?key=sk-123456").unwrap();
        let scrubbed = scrub(message, &with_key);
        assert!(!scrubbed.contains("sk-123456"), "{scrubbed}");
    }
}
