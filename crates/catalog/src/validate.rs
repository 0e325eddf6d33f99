//! The rules an entry must keep, the embedded ones and a user's alike. The rules of
//! a scheme table come from the specs of the schemes that read it.

use std::collections::BTreeSet;

use keyhaven_core::{AppSlug, FieldKind, SchemeSpec};
use url::Url;

use crate::{
    AppEntry, CATEGORIES, CatalogError, DEFAULT_SCOPES, Specs, fill_template, spec_of,
    template_names,
};

impl AppEntry {
    /// The registered schemes of the entry that read the table `table`.
    fn readers<'a>(&self, specs: &Specs<'a>, table: &str) -> Vec<(&str, &'a SchemeSpec)> {
        self.schemes
            .iter()
            .filter_map(|s| spec_of(specs, s).map(|spec| (s.as_str(), spec)))
            .filter(|(_, spec)| spec.catalog_table.as_deref() == Some(table))
            .collect()
    }

    /// Every URL of the entry, by field name: the docs, the API, and the settings
    /// that the schemes reading their table declare as URLs.
    pub fn urls(&self, specs: &Specs<'_>) -> Vec<(String, &str)> {
        let mut out = vec![
            ("docs_url".to_owned(), self.docs_url.as_str()),
            ("api_base_url".to_owned(), self.api_base_url.as_str()),
        ];
        for (table, values) in &self.settings {
            let readers = self.readers(specs, table);
            for (key, value) in values {
                let is_url = readers.iter().any(|(_, spec)| {
                    spec.config_field(key)
                        .is_some_and(|f| f.kind == FieldKind::Url)
                });
                if let (true, Some(url)) = (is_url, value.as_str()) {
                    out.push((format!("{table}.{key}"), url));
                }
            }
        }
        out
    }

    /// Checks the entry: `file_slug` is the file's name when it came from a file;
    /// `specs` the registered schemes, whose specs say what each scheme table may
    /// and must hold.
    ///
    /// # Errors
    /// [`CatalogError::Invalid`] listing every problem.
    pub fn validate(&self, file_slug: Option<&str>, specs: &Specs<'_>) -> Result<(), CatalogError> {
        let mut problems = Vec::new();
        self.check_identity(file_slug, specs, &mut problems);
        self.check_templates(specs, &mut problems);
        self.check_tables(specs, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CatalogError::Invalid {
                slug: self.slug.clone(),
                problems,
            })
        }
    }

    /// Slug, name, categories, schemes.
    fn check_identity(
        &self,
        file_slug: Option<&str>,
        specs: &Specs<'_>,
        problems: &mut Vec<String>,
    ) {
        if AppSlug::new(self.slug.as_str()).is_err() {
            problems.push(format!("slug {:?} is not a valid slug", self.slug));
        }
        if let Some(f) = file_slug.filter(|f| *f != self.slug) {
            problems.push(format!(
                "slug {:?} differs from the file name {f:?}",
                self.slug
            ));
        }
        if self.name.trim().is_empty() {
            problems.push("name is empty".into());
        }
        if self.categories.is_empty() {
            problems.push("no category".into());
        }
        for c in self
            .categories
            .iter()
            .filter(|c| !CATEGORIES.contains(&c.as_str()))
        {
            problems.push(format!("unknown category {c:?}"));
        }
        if self.schemes.is_empty() {
            problems.push("no scheme".into());
        }
        for s in self.schemes.iter().filter(|s| spec_of(specs, s).is_none()) {
            problems.push(format!("scheme {s} is not registered"));
        }
    }

    /// Parameters, URLs and request headers: every template names a declared
    /// parameter, every parameter is used, every URL is https once filled.
    fn check_templates(&self, specs: &Specs<'_>, problems: &mut Vec<String>) {
        let declared: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        for p in &self.params {
            if template_names(&format!("{{{}}}", p.name)).is_empty() {
                problems.push(format!(
                    "param name {:?} must be lowercase letters, digits and _",
                    p.name
                ));
            }
            if p.description.trim().is_empty() {
                problems.push(format!("param {} has no description", p.name));
            }
            if let Some(example) = &p.example
                && !p.allowed.is_empty()
                && !p.allowed.contains(example)
            {
                problems.push(format!(
                    "param {}'s example {example:?} is not one of its allowed values",
                    p.name
                ));
            }
        }
        let examples = self.example_params();
        let mut used = BTreeSet::new();
        for (field, url) in self.urls(specs) {
            for name in template_names(url) {
                if !declared.contains(&name.as_str()) {
                    problems.push(format!(
                        "{field} uses {{{name}}}, which is not a declared param"
                    ));
                }
                used.insert(name);
            }
            match Url::parse(&fill_template(url, &examples)) {
                Ok(u) if u.scheme() == "https" && u.has_host() => {}
                _ => problems.push(format!("{field} is not a well-formed https URL: {url}")),
            }
        }
        for (name, value) in &self.request_headers {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                problems.push(format!(
                    "request header name {name:?} is not a valid HTTP header name"
                ));
            }
            if name.eq_ignore_ascii_case("authorization") {
                problems.push("request_headers may not set Authorization: the scheme does".into());
            }
            if value.chars().any(char::is_control) {
                problems.push(format!("request header {name} has a control character"));
            }
            for t in template_names(value) {
                if !declared.contains(&t.as_str()) {
                    problems.push(format!(
                        "request header {name} uses {{{t}}}, which is not a declared param"
                    ));
                }
                used.insert(t);
            }
        }
        for name in declared.iter().filter(|n| !used.contains(**n)) {
            problems.push(format!("param {name} is declared but no URL uses it"));
        }
    }

    /// The scheme tables: each is read by a scheme of the entry, holds only that
    /// scheme's settings (checked by its field specs) and every setting it requires.
    fn check_tables(&self, specs: &Specs<'_>, problems: &mut Vec<String>) {
        for (table, values) in &self.settings {
            let readers = self.readers(specs, table);
            if readers.is_empty() {
                problems.push(format!(
                    "a [{table}] table, which none of the entry's schemes ({}) reads",
                    self.schemes.join(", ")
                ));
                continue;
            }
            let names = readers
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ");
            for (key, value) in values {
                if key == DEFAULT_SCOPES {
                    let scopes_ok = value.as_array().is_some_and(|a| {
                        a.iter().all(|s| {
                            s.as_str()
                                .is_some_and(|s| !s.is_empty() && !s.contains(char::is_whitespace))
                        })
                    });
                    if !scopes_ok {
                        problems.push(format!(
                            "{table}.{DEFAULT_SCOPES} must be a list of scopes, none empty or with spaces"
                        ));
                    }
                    continue;
                }
                let Some(field) = readers.iter().find_map(|(_, spec)| spec.config_field(key))
                else {
                    problems.push(format!("{table}.{key} is not a setting of {names}"));
                    continue;
                };
                if field.per_deployment {
                    let var = key.to_ascii_uppercase();
                    problems.push(format!(
                        "{table}.{key} is given by each deployment (auth_config, or KEYHAVEN_<APP>_{var}), not by the catalogue"
                    ));
                } else if field.kind != FieldKind::Url {
                    // URLs may hold `{templates}`: they are checked filled, above.
                    if let Err(e) = field.check(table, value) {
                        problems.push(e.to_string());
                    }
                }
            }
        }
        for scheme in &self.schemes {
            let Some(spec) = spec_of(specs, scheme) else {
                continue;
            };
            let Some(table) = spec.catalog_table.as_deref() else {
                continue;
            };
            let values = self.settings.get(table);
            for f in spec
                .config
                .iter()
                .filter(|f| f.required && !f.per_deployment && f.default.is_none())
            {
                if !values.is_some_and(|v| v.contains_key(&f.name)) {
                    problems.push(format!("{scheme} needs {table}.{}", f.name));
                }
            }
        }
    }
}
