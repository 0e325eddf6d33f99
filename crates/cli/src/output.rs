//! What the commands print: JSON with `--json`, tables for people otherwise. Errors
//! and warnings go to stderr, one line each.

#![allow(clippy::print_stderr)]

use std::io::IsTerminal;

use keyhaven_server::proxy::ProxyResponse;
use serde_json::Value;

use crate::CliError;

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// One line on stderr: `error: ...`.
pub(crate) fn error_line(message: &str) {
    let one_line: String = message.replace(['\n', '\r'], " ");
    eprintln!("error: {one_line}");
}

/// One line on stderr: `warning: ...`.
pub(crate) fn warn(message: &str) {
    eprintln!("warning: {message}");
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// Prints rows under a header, columns as wide as their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
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
    println!("{}", line(header.iter().map(|h| (*h).to_owned()).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

pub(crate) fn apps(apps: &[Value], json: bool, query: Option<&str>) {
    if json {
        print_json(&Value::Array(apps.to_vec()));
        return;
    }
    if apps.is_empty() {
        println!("no app matches {:?}", query.unwrap_or_default());
        return;
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
    table(&["SLUG", "NAME", "SCHEMES"], &rows);
}

pub(crate) fn integrations(list: &[Value], json: bool) {
    if json {
        print_json(&Value::Array(list.to_vec()));
        return;
    }
    if list.is_empty() {
        println!("no integrations");
        return;
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
    table(&["ID", "APP", "SCHEME", "NAME"], &rows);
}

pub(crate) fn integration(i: &Value, json: bool) {
    if json {
        print_json(i);
        return;
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
    for (k, v) in rows {
        println!("{k:<8} {v}");
    }
}

pub(crate) fn done(json: bool, id: &str, what: &str) {
    if json {
        print_json(&serde_json::json!({"id": id, "status": what}));
    } else {
        println!("{id} {what}");
    }
}

pub(crate) fn accounts(page: &Value, json: bool) {
    if json {
        print_json(page);
        return;
    }
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no connected accounts");
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
            &["ID", "STATUS", "ENTITY", "APP", "LABELS", "CREATED"],
            &rows,
        );
    }
    if let Some(next) = page["nextCursor"].as_str() {
        println!("more: --cursor {next}");
    }
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

pub(crate) fn account(a: &Value, json: bool) {
    if json {
        print_json(a);
        return;
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
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
}

/// `connect --no-wait` (or `--json`): what initiate answered.
pub(crate) fn initiated(out: &Value, json: bool) {
    if json {
        print_json(out);
        return;
    }
    println!(
        "{} {}",
        s(out, "connectedAccountId"),
        s(out, "connectionStatus")
    );
    if let Some(u) = out["redirectUrl"].as_str() {
        println!("{u}");
    }
}

/// Where the user must go; on stderr with `--json`, so stdout stays JSON.
pub(crate) fn visit(url: &str, id: &str, json: bool) {
    if json {
        eprintln!("open this URL to connect {id}: {url}");
    } else {
        println!("Open this URL to connect ({id}):\n\n  {url}\n");
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
        print_json(creds);
        return Ok(());
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
        Some(Value::String(v)) => println!("{v}"),
        Some(other) => println!("{other}"),
        None => {
            return Err(CliError::not_found(format!(
                "the credentials have no field {name:?}; they have {}",
                fields.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}

pub(crate) fn response(r: &ProxyResponse, include: bool, json: bool) {
    if json {
        print_json(&serde_json::to_value(r).unwrap_or(Value::Null));
        return;
    }
    if include {
        println!("HTTP {}", r.status);
        for (k, v) in &r.headers {
            println!("{k}: {v}");
        }
        println!();
    }
    match &r.body {
        Value::String(text) => println!("{text}"),
        other => print_json(other),
    }
}

pub(crate) fn rotation(report: &Value, json: bool) {
    if json {
        print_json(report);
        return;
    }
    println!(
        "new primary key {}: {} secret(s) re-encrypted, {} already under it{}",
        s(report, "primaryKey"),
        report["reencrypted"],
        report["alreadyCurrent"],
        if report["oldKeysRetired"] == Value::Bool(true) {
            "; old keys removed"
        } else {
            "; old keys kept for reading (--retire-old removes them)"
        }
    );
}
