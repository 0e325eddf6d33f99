//! Fuzzing catalogue entries (`AppEntry::parse` and `validate`, what
//! `Catalog::load_dir` runs on a user's directory of TOML files): any text, and
//! the real entries with lines cut, doubled, swapped or edited and values replaced
//! by odd ones, parse or fail and validate or fail without a panic; an entry that
//! validates can be turned into an integration's settings; the template helpers
//! take any text. Cases: `PROPTEST_CASES` (default 500 per property).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use keyhaven_catalog::{AppEntry, Catalog, fill_template, template_names};
use keyhaven_core::{AuthScheme, SchemeSpec};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(500);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// keyhaven's own schemes and their specs, which say what an entry's tables may hold.
fn schemes() -> &'static [(Arc<dyn AuthScheme>, SchemeSpec)] {
    static ALL: OnceLock<Vec<(Arc<dyn AuthScheme>, SchemeSpec)>> = OnceLock::new();
    ALL.get_or_init(|| {
        keyhaven_api_key::all()
            .into_iter()
            .chain(keyhaven_oauth2::all())
            .chain(keyhaven_basic_jwt::all())
            .map(|s| {
                let spec = s.spec();
                (s, spec)
            })
            .collect()
    })
}

fn specs() -> Vec<(&'static str, &'static SchemeSpec)> {
    schemes().iter().map(|(s, spec)| (s.name(), spec)).collect()
}

/// Exercises what the rest of keyhaven does with an entry that validated.
fn use_entry(entry: &AppEntry) {
    let specs = specs();
    let _ = entry.urls(&specs);
    let _ = entry.example_params();
    let _ = entry.preferred_scheme(|s| specs.iter().any(|(n, _)| *n == s));
    for (name, spec) in &specs {
        let _ = entry.supports(name);
        let _ = entry.auth_config(spec);
        let _ = entry.scopes(spec);
    }
}

fn check(file: &str, text: &str) {
    if let Ok(entry) = AppEntry::parse(file, text) {
        let slug = file.trim_end_matches(".toml");
        if entry.validate(Some(slug), &specs()).is_ok() {
            use_entry(&entry);
        }
        let _ = entry.validate(None, &[]);
    }
}

/// Odd values to put in place of a real one.
const ODD: &[&str] = &[
    "\"\"",
    "\"{subdomain}\"",
    "\"https://{a}{b}.example.com/{c\"",
    "\"http://example.com\"",
    "\"https://\"",
    "\"{}\"",
    "\"}{\"",
    "\"https://x.example.com/{subdomain}/{subdomain}\"",
    "[]",
    "[\"\", \"OAUTH2\", \"NOPE\"]",
    "{}",
    "0",
    "-1",
    "1e400",
    "true",
    "\"\\u0000\"",
    "'''\nmulti\nline'''",
    "[[x]]",
];

/// A real entry, edited.
#[derive(Debug, Clone)]
enum Edit {
    CutLine(prop::sample::Index),
    DoubleLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    ReplaceValue(prop::sample::Index, &'static str),
    Insert(prop::sample::Index, String),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::CutLine),
        any::<prop::sample::Index>().prop_map(Edit::DoubleLine),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<prop::sample::Index>(), proptest::sample::select(ODD))
            .prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
        (any::<prop::sample::Index>(), "\\PC{0,30}").prop_map(|(i, s)| Edit::Insert(i, s)),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.is_empty() {
        return String::new();
    }
    match e {
        Edit::CutLine(i) => {
            lines.remove(i.index(lines.len()));
        }
        Edit::DoubleLine(i) => {
            let i = i.index(lines.len());
            lines.insert(i, lines[i].clone());
        }
        Edit::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Edit::ReplaceValue(i, v) => {
            let i = i.index(lines.len());
            if let Some((key, _)) = lines[i].split_once('=') {
                lines[i] = format!("{key}= {v}");
            }
        }
        Edit::Insert(i, s) => {
            let i = i.index(lines.len() + 1);
            lines.insert(i, s.clone());
        }
        Edit::Truncate(i) => {
            let joined = lines.join("\n");
            let mut cut = i.index(joined.len() + 1);
            while !joined.is_char_boundary(cut) {
                cut -= 1;
            }
            return joined[..cut].to_owned();
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text(text in prop_oneof![any::<String>(), "(\\[[a-z0-9_.]{0,10}\\]\n)?([a-z_]{1,12} = (\"\\PC{0,20}\"|[0-9]{1,3}|\\[\\]|true)\n){0,8}"]) {
        check("fuzzed.toml", &text);
    }

    #[test]
    fn edited_real_entries(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let files = Catalog::builtin_files();
        let (file, text) = files[pick.index(files.len())];
        let mut text = text.to_owned();
        for e in &edits {
            text = apply(&text, e);
        }
        check(file, &text);
    }

    #[test]
    fn templates(text in "(\\PC|\\{[a-z_]{0,8}\\}?|\\}){0,20}", values in prop::collection::btree_map("[a-z_]{0,8}", "\\PC{0,10}", 0..4)) {
        let names = template_names(&text);
        let values: Map<String, Value> = values.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let filled = fill_template(&text, &values);
        for name in names {
            if let Some(Value::String(v)) = values.get(&name)
                && !v.contains('{')
                && !text.contains(v.as_str())
            {
                prop_assert!(filled.contains(v.as_str()), "{} in {}", v, filled);
            }
        }
    }
}

/// The real entries parse, validate and can be used.
#[test]
fn real_entries_validate() {
    for (file, text) in Catalog::builtin_files() {
        let entry = AppEntry::parse(file, text).unwrap();
        entry
            .validate(Some(file.trim_end_matches(".toml")), &specs())
            .unwrap();
        use_entry(&entry);
    }
}
