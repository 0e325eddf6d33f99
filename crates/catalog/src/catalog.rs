//! The catalogue: the embedded entries and a user's own, by slug, searchable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::{AppEntry, CatalogError, Specs, embedded};

/// The catalogue: every app by slug.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    apps: BTreeMap<String, Arc<AppEntry>>,
}

impl Catalog {
    /// An empty catalogue.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The embedded entries, parsed (checked against a registry by [`Catalog::validate`]).
    ///
    /// # Errors
    /// An embedded file that does not parse (the tests catch it before release).
    pub fn builtin() -> Result<Self, CatalogError> {
        // Parsed once per process; each caller gets a cheap copy of the map.
        static PARSED: std::sync::OnceLock<Result<Catalog, String>> = std::sync::OnceLock::new();
        let parsed = PARSED.get_or_init(|| {
            let mut catalog = Self::empty();
            for (file, text) in embedded::EMBEDDED {
                let entry = AppEntry::parse(file, text).map_err(|e| e.to_string())?;
                catalog.apps.insert(entry.slug.clone(), Arc::new(entry));
            }
            Ok(catalog)
        });
        parsed.clone().map_err(|message| CatalogError::Parse {
            file: "the built-in catalogue".into(),
            message,
        })
    }

    /// The embedded files: (file name, TOML).
    pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
        embedded::EMBEDDED
    }

    /// Adds or replaces the apps of every `*.toml` in `dir`, each checked as the
    /// embedded ones are. Returns how many were loaded; nothing changes when one fails.
    ///
    /// # Errors
    /// An unreadable directory, or a file that does not parse or is invalid.
    pub fn load_dir(&mut self, dir: &Path, specs: &Specs<'_>) -> Result<usize, CatalogError> {
        let io = |e: std::io::Error| CatalogError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let mut loaded = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let entry = AppEntry::parse(&path.display().to_string(), &text)?;
            entry.validate(path.file_stem().and_then(|s| s.to_str()), specs)?;
            loaded.push(entry);
        }
        let n = loaded.len();
        for entry in loaded {
            self.apps.insert(entry.slug.clone(), Arc::new(entry));
        }
        Ok(n)
    }

    /// Adds or replaces one app.
    pub fn insert(&mut self, entry: AppEntry) {
        self.apps.insert(entry.slug.clone(), Arc::new(entry));
    }

    /// One app.
    pub fn get(&self, slug: &str) -> Option<&Arc<AppEntry>> {
        self.apps.get(slug)
    }

    /// Every app, by slug.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<AppEntry>> {
        self.apps.values()
    }

    /// How many apps.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The apps whose slug, name or a category contains `query` (case-insensitive),
    /// the exact slug first, then slugs starting with it.
    pub fn search(&self, query: &str) -> Vec<&Arc<AppEntry>> {
        let q = query.trim().to_lowercase();
        let mut hits: Vec<&Arc<AppEntry>> = self
            .apps
            .values()
            .filter(|a| {
                q.is_empty()
                    || a.slug.contains(&q)
                    || a.name.to_lowercase().contains(&q)
                    || a.categories.iter().any(|c| c.contains(&q))
            })
            .collect();
        hits.sort_by_key(|a| (a.slug != q, !a.slug.starts_with(&q), a.slug.clone()));
        hits
    }

    /// Up to `n` slugs nearest to `name` (a mistyped slug: `opnai` gives `openai`),
    /// best first: those within a third of the name's length in edits, or that
    /// contain it or are contained in it (three letters or more).
    pub fn closest(&self, name: &str, n: usize) -> Vec<String> {
        let name = name.trim().to_lowercase();
        let budget = (name.chars().count() / 3).max(1);
        let mut scored: Vec<(usize, &String)> = self
            .apps
            .keys()
            .filter_map(|slug| {
                let distance = strsim::damerau_levenshtein(&name, slug);
                // One inside the other counts when the inner one is a real word.
                let related = (name.len() >= 3 && slug.contains(name.as_str()))
                    || (slug.len() >= 3 && name.contains(slug.as_str()));
                (distance <= budget || related).then_some((distance, slug))
            })
            .collect();
        scored.sort();
        scored.into_iter().take(n).map(|(_, s)| s.clone()).collect()
    }

    /// Every problem of every entry.
    pub fn validate(&self, specs: &Specs<'_>) -> Vec<String> {
        self.apps
            .values()
            .filter_map(|a| a.validate(None, specs).err().map(|e| e.to_string()))
            .collect()
    }
}
