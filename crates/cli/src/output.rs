//! What the commands print: JSON with `--json`, tables for people otherwise. Errors
//! and warnings go to stderr, one line each.
//!
//! Everything for stdout goes through [`emit`], never `println!` (which panics when
//! stdout is a closed pipe, as in `keyhaven apps | head -2`): a closed stdout ends the
//! command quietly with exit status 141, as a Unix tool stopped by SIGPIPE does.

use std::io::{IsTerminal, Write};

use serde_json::Value;

use crate::CliError;

/// Writes `text` to stdout at once and flushes it.
///
/// # Errors
/// A closed stdout: [`CliError::closed_stdout`] (no message, exit status 141); any
/// other write error: a one-line error.
pub(crate) fn emit(text: &str) -> Result<(), CliError> {
    emit_bytes(text.as_bytes())
}

/// Writes `bytes` to stdout at once and flushes them, as [`emit`].
pub(crate) fn emit_bytes(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                CliError::closed_stdout()
            } else {
                CliError::other(format!("cannot write to stdout: {e}"))
            }
        })
}

/// Text for stdout, written with one [`emit`].
#[derive(Debug, Default)]
pub(crate) struct Out(String);

impl Out {
    /// Adds a line.
    pub(crate) fn line(&mut self, text: impl std::fmt::Display) -> &mut Self {
        self.0.push_str(&text.to_string());
        self.0.push('\n');
        self
    }

    /// Writes the lines to stdout.
    pub(crate) fn print(&self) -> Result<(), CliError> {
        emit(&self.0)
    }
}

/// One line on stdout.
pub(crate) fn line(text: impl std::fmt::Display) -> Result<(), CliError> {
    Out::default().line(text).print()
}

fn print_json(v: &Value) -> Result<(), CliError> {
    line(serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()))
}

/// A line on stderr; a closed stderr is ignored (`eprintln!` would panic), as there is
/// nowhere left to say anything.
fn to_stderr(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// One line on stderr: `error: ...`.
pub(crate) fn error_line(message: &str) {
    let one_line: String = message.replace(['\n', '\r'], " ");
    to_stderr(&format!("error: {one_line}"));
}

/// One line on stderr: `warning: ...`.
pub(crate) fn warn(message: &str) {
    to_stderr(&format!("warning: {message}"));
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// Rows under a header, columns as wide as their widest cell.
fn table(out: &mut Out, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    out.line(line(header.iter().map(|h| (*h).to_owned()).collect()));
    for row in rows {
        out.line(line(row.clone()));
    }
}

pub(crate) fn apps(apps: &[Value], json: bool, query: Option<&str>) -> Result<(), CliError> {
    if json {
        return print_json(&Value::Array(apps.to_vec()));
    }
    if apps.is_empty() {
        return line(format!("no app matches {:?}", query.unwrap_or_default()));
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let schemes = joined(&a["schemes"], ", ");
            vec![
                s(a, "slug").to_owned(),
                s(a, "name").chars().take(32).collect(),
                schemes,
            ]
        })
        .collect();
    let mut out = Out::default();
    table(&mut out, &["SLUG", "NAME", "SCHEMES"], &rows);
    out.print()
}

pub(crate) fn integrations(list: &[Value], json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&Value::Array(list.to_vec()));
    }
    if list.is_empty() {
        return line("no integrations");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                s(i, "id").to_owned(),
                s(i, "app").to_owned(),
                s(i, "authScheme").to_owned(),
                s(i, "name").to_owned(),
            ]
        })
        .collect();
    let mut out = Out::default();
    table(&mut out, &["ID", "APP", "SCHEME", "NAME"], &rows);
    out.print()
}

pub(crate) fn integration(i: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(i);
    }
    let mut rows = vec![
        ("id", s(i, "id").to_owned()),
        ("app", s(i, "app").to_owned()),
        ("name", s(i, "name").to_owned()),
        ("scheme", s(i, "authScheme").to_owned()),
        ("created", s(i, "createdAt").to_owned()),
    ];
    let scopes = joined(&i["scopes"], " ");
    if !scopes.is_empty() {
        rows.push(("scopes", scopes));
    }
    let secrets = joined(&i["secretFields"], ", ");
    if !secrets.is_empty() {
        rows.push(("secrets", format!("{secrets} (kept encrypted)")));
    }
    let mut out = Out::default();
    for (k, v) in rows {
        out.line(format!("{k:<8} {v}"));
    }
    out.print()
}

pub(crate) fn done(json: bool, id: &str, what: &str) -> Result<(), CliError> {
    if json {
        print_json(&serde_json::json!({"id": id, "status": what}))
    } else {
        line(format!("{id} {what}"))
    }
}

pub(crate) fn accounts(page: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(page);
    }
    let mut out = Out::default();
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        out.line("no connected accounts");
    } else {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|a| {
                vec![
                    s(a, "id").to_owned(),
                    s(a, "status").to_owned(),
                    s(a, "entityId").to_owned(),
                    s(a, "appName").to_owned(),
                    joined(&a["labels"], ","),
                    s(a, "createdAt").chars().take(19).collect(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["ID", "STATUS", "ENTITY", "APP", "LABELS", "CREATED"],
            &rows,
        );
    }
    if let Some(next) = page["nextCursor"].as_str() {
        out.line(format!("more: --cursor {next}"));
    }
    out.print()
}

/// The strings of a JSON list, joined; empty when there are none.
fn joined(list: &Value, separator: &str) -> String {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(separator)
        })
        .unwrap_or_default()
}

pub(crate) fn account(a: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(a);
    }
    let mut rows = vec![
        ("id", s(a, "id").to_owned()),
        ("status", s(a, "status").to_owned()),
        ("entity", s(a, "entityId").to_owned()),
        ("app", s(a, "appName").to_owned()),
        ("scheme", s(a, "authScheme").to_owned()),
        ("integration", s(a, "integrationId").to_owned()),
        ("labels", joined(&a["labels"], ",")),
        ("created", s(a, "createdAt").to_owned()),
        ("updated", s(a, "updatedAt").to_owned()),
    ];
    if let Some(r) = a["statusReason"].as_str() {
        rows.insert(2, ("reason", r.to_owned()));
    }
    if let Some(e) = a["expiresAt"].as_str() {
        rows.push(("expires", e.to_owned()));
    }
    if let Some(b) = a["connectionParams"]["base_url"].as_str() {
        rows.push(("api", b.to_owned()));
    }
    let mut out = Out::default();
    for (k, v) in rows {
        out.line(format!("{k:<12} {v}"));
    }
    out.print()
}

/// `connect --no-wait` (or `--json`): what initiate answered.
pub(crate) fn initiated(answer: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(answer);
    }
    let mut out = Out::default();
    out.line(format!(
        "{} {}",
        s(answer, "connectedAccountId"),
        s(answer, "connectionStatus")
    ));
    if let Some(u) = answer["redirectUrl"].as_str() {
        out.line(u);
    }
    out.print()
}

/// Where the user must go; on stderr with `--json`, so stdout stays JSON.
pub(crate) fn visit(url: &str, id: &str, json: bool) -> Result<(), CliError> {
    if json {
        to_stderr(&format!("open this URL to connect {id}: {url}"));
        Ok(())
    } else {
        line(format!("Open this URL to connect ({id}):\n\n  {url}\n"))
    }
}

/// The credential fields printed by `token` when none is named, in this order.
const TOKEN_FIELDS: [&str; 6] = [
    "access_token",
    "api_key",
    "token",
    "jwt",
    "bearer_token",
    "password",
];

pub(crate) fn token(creds: &Value, field: Option<&str>, json: bool) -> Result<(), CliError> {
    if std::io::stdout().is_terminal() {
        warn("this prints a secret to the terminal; use it in a pipe or $(...) instead");
    }
    if json {
        return print_json(creds);
    }
    let fields = creds["credentials"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let name = match field {
        Some(f) => f.to_owned(),
        None => TOKEN_FIELDS
            .iter()
            .find(|f| fields.contains_key(**f))
            .map(|f| (*f).to_owned())
            .or_else(|| (fields.len() == 1).then(|| fields.keys().next().cloned()).flatten())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "the credentials have several fields ({}); name one with --field, or use --json",
                    fields.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?,
    };
    match fields.get(&name) {
        Some(Value::String(v)) => line(v),
        Some(other) => line(other),
        None => Err(CliError::not_found(format!(
            "the credentials have no field {name:?}; they have {}",
            fields.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Prints an API's answer: with `json`, `{status, headers, body}` (the body as JSON
/// when it is JSON); else the body as it streams in, after the status and headers
/// when `include`. Returns the status.
pub(crate) async fn response(
    mut r: reqwest::Response,
    include: bool,
    json: bool,
) -> Result<u16, CliError> {
    let status = r.status().as_u16();
    let cut = |e: reqwest::Error| {
        CliError::new(
            crate::Exit::Unavailable,
            format!(
                "the API's answer was cut: {}",
                keyhaven::request::http_error_reason(e)
            ),
        )
    };
    let headers: serde_json::Map<String, Value> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != keyhaven_server::proxy::UPSTREAM_HEADER)
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), Value::from(v))))
        .collect();
    if json {
        let bytes = r.bytes().await.map_err(cut)?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        print_json(&serde_json::json!({"status": status, "headers": headers, "body": body}))?;
        return Ok(status);
    }
    if include {
        let mut out = Out::default();
        out.line(format!("HTTP {status}"));
        for (k, v) in &headers {
            out.line(format!("{k}: {}", v.as_str().unwrap_or_default()));
        }
        out.line("");
        out.print()?;
    }
    let mut last = b'\n';
    while let Some(chunk) = r.chunk().await.map_err(cut)? {
        if let Some(byte) = chunk.last() {
            last = *byte;
        }
        emit_bytes(&chunk)?;
    }
    // A text answer ends its line on a terminal.
    if last != b'\n' && std::io::stdout().is_terminal() {
        emit("\n")?;
    }
    Ok(status)
}

/// The uses of an account's credentials, one per line: time, action, outcome, who,
/// and for requests the method, host, path and status.
pub(crate) fn audit(entries: &[Value], json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&Value::from(entries.to_vec()));
    }
    let mut out = Out::default();
    if entries.is_empty() {
        out.line("no recorded use");
    }
    for e in entries {
        let mut text = format!("{}  {}  {}", s(e, "at"), s(e, "action"), s(e, "outcome"));
        if let Some(method) = e["method"].as_str() {
            text.push_str(&format!(
                "  {method} {}{} -> {}",
                s(e, "host"),
                s(e, "path"),
                e["status"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), |st| st.to_string())
            ));
        }
        let who: Vec<&str> = ["key", "remote", "userAgent"]
            .iter()
            .filter_map(|k| e[*k].as_str())
            .collect();
        if !who.is_empty() {
            text.push_str(&format!("  by {}", who.join(" ")));
        }
        out.line(text);
    }
    out.print()
}

pub(crate) fn rotation(report: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(report);
    }
    line(format!(
        "new primary key {}: {} secret(s) re-encrypted, {} already under it{}",
        s(report, "primaryKey"),
        report["reencrypted"],
        report["alreadyCurrent"],
        if report["oldKeysRetired"] == Value::Bool(true) {
            "; old keys removed"
        } else {
            "; old keys kept for reading (--retire-old removes them)"
        }
    ))
}
