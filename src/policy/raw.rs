//! The policy file as written: serde structures with source spans. Nothing
//! here is validated; [`super::compile`] turns it into a
//! [`super::CompiledPolicy`]. Every table is read through [`TableOnly`], so
//! a table written as an array of its values is refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::shape::TableOnly;

/// A string with its byte span in the source.
pub(crate) type S = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    /// Top-level `effective_from` (RFC 3339, a string or a TOML datetime).
    #[serde(default)]
    pub effective_from: Option<Spanned<toml::Value>>,
    pub policy: TableOnly<RawHeader>,
    pub data: TableOnly<RawData>,
    #[serde(default)]
    pub settings: Option<Spanned<TableOnly<RawSettings>>>,
    #[serde(default)]
    pub tags: BTreeMap<S, String>,
    #[serde(default)]
    pub models: BTreeMap<S, Spanned<TableOnly<RawModel>>>,
    #[serde(default)]
    pub sets: BTreeMap<S, Spanned<TableOnly<RawSet>>>,
    #[serde(default)]
    pub regions: BTreeMap<S, Spanned<TableOnly<RawRegion>>>,
    #[serde(default)]
    pub rules: Vec<Spanned<TableOnly<RawRule>>>,
}

/// `[policy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeader {
    pub id: S,
    pub version: S,
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    /// Misplaced: `effective_from` is a top-level key. Accepted by the
    /// parser only to report it with a helpful message.
    #[serde(default)]
    pub effective_from: Option<Spanned<toml::Value>>,
}

/// `[data]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawData {
    pub version: S,
    #[serde(default)]
    #[allow(dead_code)]
    pub sources: Vec<String>,
}

/// `[settings]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    #[serde(default)]
    pub nationality_mode: Option<S>,
    #[serde(default)]
    pub min_geo_confidence: Option<Spanned<f64>>,
    #[serde(default)]
    pub default_allow_untagged: Option<bool>,
}

/// `[models."<id>"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    #[serde(default)]
    pub tags: Vec<S>,
}

/// `[sets."<name>"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSet {
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    #[serde(default)]
    pub countries: Vec<S>,
    #[serde(default)]
    pub include: Vec<S>,
}

/// `[regions."<name>"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegion {
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    pub country: S,
    #[serde(default)]
    pub subdivisions: Vec<S>,
    #[serde(default)]
    pub partial_subdivisions: Vec<S>,
    #[serde(default)]
    pub postal_prefixes: Vec<S>,
    #[serde(default)]
    pub postal_ranges: Vec<S>,
}

/// `[[rules]]`: one flat table; which parameters a kind accepts is checked
/// by the compiler.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub id: S,
    #[serde(default)]
    pub description: Option<String>,
    pub legal_basis: S,
    pub effect: S,
    pub scope: Spanned<toml::Value>,
    pub kind: S,
    #[serde(default)]
    pub on_missing_data: Option<S>,
    #[serde(default)]
    pub obligations: Vec<S>,
    #[serde(default)]
    pub liftable_by_authorization: Option<Spanned<bool>>,
    // Kind parameters.
    #[serde(default)]
    pub set: Option<S>,
    #[serde(default)]
    pub regions: Option<Spanned<Vec<S>>>,
    #[serde(default)]
    pub threshold_percent: Option<Spanned<f64>>,
    #[serde(default)]
    pub status: Option<S>,
    #[serde(default)]
    pub lists: Option<Spanned<Vec<S>>>,
    #[serde(default)]
    pub min_confidence: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_age_days: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_depth: Option<Spanned<i64>>,
}
