//! `{name}` templates in URLs and headers, filled from a connection's parameters.

use serde_json::{Map, Value};

/// The `{names}` a template uses.
pub fn template_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            out.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

/// Fills `{name}` in `text` with `values`; unknown names stay as they are.
pub fn fill_template(text: &str, values: &Map<String, Value>) -> String {
    let mut out = text.to_owned();
    for (name, value) in values {
        if let Some(v) = value.as_str() {
            out = out.replace(&format!("{{{name}}}"), v);
        }
    }
    out
}
