//! What changed between two compiled policies: [`diff`], printed by
//! `clearance policy diff OLD NEW`.
//!
//! The comparison is on the *compiled* policies, so it shows what decisions
//! see: named sets are compared after their `include`s are expanded (a
//! change to `D:5` also shows on every set that includes it), and a rule's
//! `set` parameter is compared both by name and by its countries. Every
//! list in a [`PolicyDiff`] is in a deterministic order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{
    CompiledPolicy, CountrySet, Effect, OnMissing, PolicyError, Region, Rule, RuleKind, Scope,
};
use crate::event::ScreeningStatus;

/// A value that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<T> {
    /// The value in the old policy.
    pub old: T,
    /// The value in the new policy.
    pub new: T,
}

/// One changed field of a setting, region or rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// A single value changed (rendered as text).
    Value {
        /// The field (`effect`, `threshold_percent`, ...).
        field: String,
        /// Old value.
        old: String,
        /// New value.
        new: String,
    },
    /// Members were added to and/or removed from a list-like field (sorted).
    Members {
        /// The field (`scope`, `set countries`, `obligations`, ...).
        field: String,
        /// Members only in the new policy.
        added: Vec<String>,
        /// Members only in the old policy.
        removed: Vec<String>,
    },
}

impl Detail {
    fn value(field: &str, old: impl fmt::Display, new: impl fmt::Display) -> Option<Detail> {
        let (old, new) = (old.to_string(), new.to_string());
        (old != new).then(|| Detail::Value {
            field: field.to_string(),
            old,
            new,
        })
    }

    fn members<'a>(
        field: &str,
        old: impl IntoIterator<Item = &'a str>,
        new: impl IntoIterator<Item = &'a str>,
    ) -> Option<Detail> {
        let (added, removed) = set_diff(old, new);
        (!added.is_empty() || !removed.is_empty()).then(|| Detail::Members {
            field: field.to_string(),
            added,
            removed,
        })
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Value { field, old, new } => write!(f, "{field}: {old} -> {new}"),
            Detail::Members {
                field,
                added,
                removed,
            } => {
                write!(f, "{field}:")?;
                write_members(f, added, removed)
            }
        }
    }
}

fn write_members(f: &mut fmt::Formatter<'_>, added: &[String], removed: &[String]) -> fmt::Result {
    for a in added {
        write!(f, " +{a}")?;
    }
    for r in removed {
        write!(f, " -{r}")?;
    }
    Ok(())
}

/// How a named item (set, region) differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Only in the new policy.
    Added,
    /// Only in the old policy.
    Removed,
    /// In both, with differences.
    Changed,
}

impl Status {
    fn sign(self) -> char {
        match self {
            Status::Added => '+',
            Status::Removed => '-',
            Status::Changed => '~',
        }
    }
}

/// A named country set that differs (after `include`s are expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    /// The set's name.
    pub name: String,
    /// Added, removed or changed.
    pub status: Status,
    /// Countries in the new set but not the old (all of them for an added
    /// set), sorted.
    pub added: Vec<String>,
    /// Countries in the old set but not the new (all of them for a removed
    /// set), sorted.
    pub removed: Vec<String>,
}

/// A region that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionChange {
    /// The region's name.
    pub name: String,
    /// Added, removed or changed.
    pub status: Status,
    /// For a changed region: what changed (`country`, `subdivisions`,
    /// `partial_subdivisions`, `postal_prefixes`, `postal_ranges`).
    pub details: Vec<Detail>,
}

/// A catalog model that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChange {
    /// A new model.
    Added {
        /// Model id.
        id: String,
        /// Its tags.
        tags: Vec<String>,
    },
    /// A model no longer in the catalog (now denied as `unknown_model`).
    Removed {
        /// Model id.
        id: String,
        /// Its former tags.
        tags: Vec<String>,
    },
    /// A model whose tags changed.
    Retagged {
        /// Model id.
        id: String,
        /// Old tags.
        old: Vec<String>,
        /// New tags.
        new: Vec<String>,
    },
}

/// A rule that differs (rules are matched by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleChange {
    /// A rule only in the new policy.
    Added {
        /// Rule id.
        id: String,
        /// 1-based position among the new policy's rules.
        position: usize,
        /// One-line summary (`deny nationality_in set=d5_or_macau scope=[...]`).
        summary: String,
    },
    /// A rule only in the old policy.
    Removed {
        /// Rule id.
        id: String,
        /// 1-based position among the old policy's rules.
        position: usize,
        /// One-line summary.
        summary: String,
    },
    /// A rule in both policies that differs.
    Changed {
        /// Rule id.
        id: String,
        /// Positions (1-based) in the old and new policies.
        position: Change<usize>,
        /// Whether the rule moved relative to the other rules both policies
        /// share (order decides the order of deny reasons).
        moved: bool,
        /// What changed, in a fixed order: effect, kind, scope, parameters,
        /// legal basis, obligations, on_missing_data,
        /// liftable_by_authorization, description.
        details: Vec<Detail>,
    },
}

impl RuleChange {
    /// The rule id.
    pub fn id(&self) -> &str {
        match self {
            RuleChange::Added { id, .. }
            | RuleChange::Removed { id, .. }
            | RuleChange::Changed { id, .. } => id,
        }
    }
}

/// Everything that differs between two policies. Empty ([`is_empty`])
/// when they decide alike and carry the same versions.
///
/// [`is_empty`]: PolicyDiff::is_empty
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyDiff {
    /// `policy.id`, if it changed.
    pub id: Option<Change<String>>,
    /// `policy.version`, if it changed.
    pub version: Option<Change<String>>,
    /// `data.version`, if it changed.
    pub data_version: Option<Change<String>>,
    /// `effective_from`, if it changed.
    pub effective_from: Option<Change<Option<OffsetDateTime>>>,
    /// Changed settings (`nationality_mode`, `min_geo_confidence`,
    /// `default_allow_untagged`).
    pub settings: Vec<Detail>,
    /// Declared tags added (sorted).
    pub tags_added: Vec<String>,
    /// Declared tags removed (sorted).
    pub tags_removed: Vec<String>,
    /// Catalog changes, by model id.
    pub models: Vec<ModelChange>,
    /// Named set changes, by set name.
    pub sets: Vec<SetChange>,
    /// Region changes, by region name.
    pub regions: Vec<RegionChange>,
    /// Rule changes: removed rules in old order, then added and changed
    /// rules in new order.
    pub rules: Vec<RuleChange>,
}

impl PolicyDiff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self == &PolicyDiff::default()
    }
}

/// Compare two compiled policies. `source` is not compared.
pub fn diff(old: &CompiledPolicy, new: &CompiledPolicy) -> PolicyDiff {
    let change = |a: &String, b: &String| {
        (a != b).then(|| Change {
            old: a.clone(),
            new: b.clone(),
        })
    };
    let settings = [
        Detail::value(
            "nationality_mode",
            old.settings.nationality_mode.as_str(),
            new.settings.nationality_mode.as_str(),
        ),
        Detail::value(
            "min_geo_confidence",
            old.settings.min_geo_confidence,
            new.settings.min_geo_confidence,
        ),
        Detail::value(
            "default_allow_untagged",
            old.settings.default_allow_untagged,
            new.settings.default_allow_untagged,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (tags_added, tags_removed) = set_diff(
        old.tags.iter().map(String::as_str),
        new.tags.iter().map(String::as_str),
    );
    PolicyDiff {
        id: change(&old.id, &new.id),
        version: change(&old.version, &new.version),
        data_version: change(&old.data_version, &new.data_version),
        effective_from: (old.effective_from != new.effective_from).then_some(Change {
            old: old.effective_from,
            new: new.effective_from,
        }),
        settings,
        tags_added,
        tags_removed,
        models: diff_models(old, new),
        sets: diff_sets(&old.sets, &new.sets),
        regions: diff_regions(&old.regions, &new.regions),
        rules: diff_rules(&old.rules, &new.rules),
    }
}

/// Load, validate and compile both files, then [`diff`] them.
pub fn diff_files(old: &Path, new: &Path) -> Result<PolicyDiff, PolicyError> {
    let old = CompiledPolicy::load_file(old)?;
    let new = CompiledPolicy::load_file(new)?;
    Ok(diff(&old, &new))
}

/// Members only in `new` and only in `old`, each sorted and de-duplicated.
fn set_diff<'a>(
    old: impl IntoIterator<Item = &'a str>,
    new: impl IntoIterator<Item = &'a str>,
) -> (Vec<String>, Vec<String>) {
    let old: BTreeSet<&str> = old.into_iter().collect();
    let new: BTreeSet<&str> = new.into_iter().collect();
    (
        new.difference(&old).map(|s| (*s).to_string()).collect(),
        old.difference(&new).map(|s| (*s).to_string()).collect(),
    )
}

fn country_diff(old: &CountrySet, new: &CountrySet) -> (Vec<String>, Vec<String>) {
    let (o, n) = (old.codes(), new.codes());
    set_diff(o.iter().map(String::as_str), n.iter().map(String::as_str))
}

fn diff_models(old: &CompiledPolicy, new: &CompiledPolicy) -> Vec<ModelChange> {
    let ids: BTreeSet<&str> = old.model_ids().into_iter().chain(new.model_ids()).collect();
    let mut out = Vec::new();
    for id in ids {
        match (old.model(id), new.model(id)) {
            (None, Some(m)) => out.push(ModelChange::Added {
                id: id.to_string(),
                tags: m.tags.clone(),
            }),
            (Some(m), None) => out.push(ModelChange::Removed {
                id: id.to_string(),
                tags: m.tags.clone(),
            }),
            (Some(a), Some(b)) => {
                let sorted = |t: &[String]| t.iter().cloned().collect::<BTreeSet<_>>();
                if sorted(&a.tags) != sorted(&b.tags) {
                    out.push(ModelChange::Retagged {
                        id: id.to_string(),
                        old: a.tags.clone(),
                        new: b.tags.clone(),
                    });
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn diff_sets(
    old: &BTreeMap<String, CountrySet>,
    new: &BTreeMap<String, CountrySet>,
) -> Vec<SetChange> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let (status, a, b) = match (old.get(name), new.get(name)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => (Status::Changed, *a, *b),
            (None, Some(b)) => (Status::Added, CountrySet::empty(), *b),
            (Some(a), None) => (Status::Removed, *a, CountrySet::empty()),
            (None, None) => continue,
        };
        let (added, removed) = country_diff(&a, &b);
        out.push(SetChange {
            name: name.clone(),
            status,
            added,
            removed,
        });
    }
    out
}

fn diff_regions(
    old: &BTreeMap<String, Region>,
    new: &BTreeMap<String, Region>,
) -> Vec<RegionChange> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let (status, details) = match (old.get(name), new.get(name)) {
            (Some(a), Some(b)) => {
                let details: Vec<Detail> = [
                    Detail::value("country", &a.country, &b.country),
                    Detail::members(
                        "subdivisions",
                        a.subdivisions.iter().map(String::as_str),
                        b.subdivisions.iter().map(String::as_str),
                    ),
                    Detail::members(
                        "partial_subdivisions",
                        a.partial_subdivisions.iter().map(String::as_str),
                        b.partial_subdivisions.iter().map(String::as_str),
                    ),
                    Detail::members(
                        "postal_prefixes",
                        a.postal_prefixes.iter().map(String::as_str),
                        b.postal_prefixes.iter().map(String::as_str),
                    ),
                    Detail::members(
                        "postal_ranges",
                        a.postal_ranges
                            .iter()
                            .map(|(lo, hi)| format!("{lo}-{hi}"))
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str),
                        b.postal_ranges
                            .iter()
                            .map(|(lo, hi)| format!("{lo}-{hi}"))
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str),
                    ),
                ]
                .into_iter()
                .flatten()
                .collect();
                if details.is_empty() {
                    continue;
                }
                (Status::Changed, details)
            }
            (None, Some(_)) => (Status::Added, Vec::new()),
            (Some(_), None) => (Status::Removed, Vec::new()),
            (None, None) => continue,
        };
        out.push(RegionChange {
            name: name.clone(),
            status,
            details,
        });
    }
    out
}

fn effect_str(e: Effect) -> &'static str {
    match e {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    }
}

fn scope_str(s: &Scope) -> String {
    match s {
        Scope::All => "all".to_string(),
        Scope::Tags(t) => format!("[{}]", t.join(", ")),
    }
}

fn on_missing_str(m: OnMissing) -> &'static str {
    match m {
        OnMissing::Deny => "deny",
        OnMissing::Skip => "skip",
    }
}

fn status_str(s: ScreeningStatus) -> &'static str {
    match s {
        ScreeningStatus::Confirmed => "confirmed",
        ScreeningStatus::Potential => "potential",
        ScreeningStatus::Cleared => "cleared",
    }
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "(none)".to_string(), |v| v.to_string())
}

/// A one-line summary of a rule.
fn summary(r: &Rule) -> String {
    let mut s = format!(
        "{} {} scope={}",
        effect_str(r.effect),
        r.kind.name(),
        scope_str(&r.scope)
    );
    for (k, v) in params(r) {
        s.push_str(&format!(" {k}={v}"));
    }
    s
}

/// A rule's kind parameters as (name, text) pairs, in a fixed order.
fn params(r: &Rule) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    if let Some(n) = &r.set_name {
        p.push(("set", n.clone()));
    }
    match &r.kind {
        RuleKind::VerificationCurrent { max_age_days } => {
            p.push(("max_age_days", opt(*max_age_days)));
        }
        RuleKind::LocationVerifiable { min_confidence } => {
            p.push(("min_confidence", opt(*min_confidence)));
        }
        RuleKind::LocationIn { regions, .. } => {
            let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
            p.push(("regions", format!("[{}]", names.join(", "))));
        }
        RuleKind::OwnershipIn {
            threshold_percent,
            max_depth,
            ..
        } => {
            p.push(("threshold_percent", threshold_percent.to_string()));
            p.push(("max_depth", max_depth.to_string()));
        }
        RuleKind::ListedParty { status, lists } => {
            p.push(("status", status_str(*status).to_string()));
            p.push(("lists", format!("[{}]", lists.join(", "))));
        }
        _ => {}
    }
    p
}

/// The countries of a rule's set parameter, if it has one.
fn rule_set(k: &RuleKind) -> Option<&CountrySet> {
    match k {
        RuleKind::LocationIn { countries, .. } => Some(countries),
        RuleKind::NationalityIn { set }
        | RuleKind::NationalityNotIn { set }
        | RuleKind::OwnershipIn { set, .. } => Some(set),
        _ => None,
    }
}

fn rule_details(a: &Rule, b: &Rule) -> Vec<Detail> {
    let mut d: Vec<Option<Detail>> = vec![
        Detail::value("effect", effect_str(a.effect), effect_str(b.effect)),
        Detail::value("kind", a.kind.name(), b.kind.name()),
    ];
    d.push(match (&a.scope, &b.scope) {
        (Scope::Tags(x), Scope::Tags(y)) => Detail::members(
            "scope",
            x.iter().map(String::as_str),
            y.iter().map(String::as_str),
        ),
        (x, y) => Detail::value("scope", scope_str(x), scope_str(y)),
    });
    // Parameters, by name; a parameter only one side has shows as "(none)".
    let (pa, pb) = (params(a), params(b));
    let mut names: Vec<&str> = pa.iter().map(|(k, _)| *k).collect();
    for (k, _) in &pb {
        if !names.contains(k) {
            names.push(k);
        }
    }
    let get = |p: &[(&str, String)], k: &str| {
        p.iter()
            .find(|(n, _)| *n == k)
            .map_or_else(|| "(none)".to_string(), |(_, v)| v.clone())
    };
    for k in names {
        if k == "regions" {
            let regs = |r: &Rule| match &r.kind {
                RuleKind::LocationIn { regions, .. } => {
                    regions.iter().map(|r| r.name.clone()).collect::<Vec<_>>()
                }
                _ => Vec::new(),
            };
            let (ra, rb) = (regs(a), regs(b));
            d.push(Detail::members(
                "regions",
                ra.iter().map(String::as_str),
                rb.iter().map(String::as_str),
            ));
        } else {
            d.push(Detail::value(k, get(&pa, k), get(&pb, k)));
        }
    }
    // The countries the set parameter resolves to (a renamed set with the
    // same members shows only as `set`; a set edited in place shows here).
    if let (Some(x), Some(y)) = (rule_set(&a.kind), rule_set(&b.kind)) {
        let (added, removed) = country_diff(x, y);
        if !added.is_empty() || !removed.is_empty() {
            d.push(Some(Detail::Members {
                field: "set countries".to_string(),
                added,
                removed,
            }));
        }
    }
    d.push(Detail::value("legal_basis", &a.legal_basis, &b.legal_basis));
    d.push(Detail::members(
        "obligations",
        a.obligations.iter().copied(),
        b.obligations.iter().copied(),
    ));
    d.push(Detail::value(
        "on_missing_data",
        on_missing_str(a.on_missing),
        on_missing_str(b.on_missing),
    ));
    d.push(Detail::value(
        "liftable_by_authorization",
        a.liftable,
        b.liftable,
    ));
    d.push(Detail::value(
        "description",
        opt(a.description.as_deref().map(|s| format!("{s:?}"))),
        opt(b.description.as_deref().map(|s| format!("{s:?}"))),
    ));
    d.into_iter().flatten().collect()
}

/// Longest common subsequence of two id sequences; the ids not in it have
/// moved.
fn lcs<'a>(a: &[&'a str], b: &[&'a str]) -> BTreeSet<&'a str> {
    let (n, m) = (a.len(), b.len());
    let mut t = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, BTreeSet::new());
    while i < n && j < m {
        if a[i] == b[j] {
            out.insert(a[i]);
            i += 1;
            j += 1;
        } else if t[i + 1][j] >= t[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn diff_rules(old: &[Rule], new: &[Rule]) -> Vec<RuleChange> {
    let pos = |rules: &[Rule], id: &str| rules.iter().position(|r| r.id == id);
    fn common<'a>(x: &'a [Rule], y: &[Rule]) -> Vec<&'a str> {
        x.iter()
            .filter(|r| y.iter().any(|o| o.id == r.id))
            .map(|r| r.id.as_str())
            .collect()
    }
    let (co, cn) = (common(old, new), common(new, old));
    let stayed = lcs(&co, &cn);
    let mut out = Vec::new();
    for (i, r) in old.iter().enumerate() {
        if pos(new, &r.id).is_none() {
            out.push(RuleChange::Removed {
                id: r.id.clone(),
                position: i + 1,
                summary: summary(r),
            });
        }
    }
    for (j, r) in new.iter().enumerate() {
        match pos(old, &r.id) {
            None => out.push(RuleChange::Added {
                id: r.id.clone(),
                position: j + 1,
                summary: summary(r),
            }),
            Some(i) => {
                let details = old.get(i).map(|a| rule_details(a, r)).unwrap_or_default();
                let moved = !stayed.contains(r.id.as_str());
                if moved || !details.is_empty() {
                    out.push(RuleChange::Changed {
                        id: r.id.clone(),
                        position: Change {
                            old: i + 1,
                            new: j + 1,
                        },
                        moved,
                        details,
                    });
                }
            }
        }
    }
    out
}

fn time_str(t: Option<OffsetDateTime>) -> String {
    match t {
        None => "(none)".to_string(),
        Some(t) => t.format(&Rfc3339).unwrap_or_else(|_| t.to_string()),
    }
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no differences");
        }
        let mut first = true;
        let mut line = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if !std::mem::take(&mut first) {
                writeln!(f)?;
            }
            Ok(())
        };
        for (name, c) in [
            ("policy.id", &self.id),
            ("policy.version", &self.version),
            ("data.version", &self.data_version),
        ] {
            if let Some(c) = c {
                line(f)?;
                write!(f, "{name}: {} -> {}", c.old, c.new)?;
            }
        }
        if let Some(c) = &self.effective_from {
            line(f)?;
            write!(
                f,
                "effective_from: {} -> {}",
                time_str(c.old),
                time_str(c.new)
            )?;
        }
        if !self.settings.is_empty() {
            line(f)?;
            write!(f, "settings:")?;
            for d in &self.settings {
                write!(f, "\n  ~ {d}")?;
            }
        }
        if !self.tags_added.is_empty() || !self.tags_removed.is_empty() {
            line(f)?;
            write!(f, "tags:")?;
            for t in &self.tags_added {
                write!(f, "\n  + {t}")?;
            }
            for t in &self.tags_removed {
                write!(f, "\n  - {t}")?;
            }
        }
        if !self.models.is_empty() {
            line(f)?;
            write!(f, "models:")?;
            for m in &self.models {
                match m {
                    ModelChange::Added { id, tags } => {
                        write!(f, "\n  + {id} [{}]", tags.join(", "))?;
                    }
                    ModelChange::Removed { id, tags } => {
                        write!(f, "\n  - {id} [{}]", tags.join(", "))?;
                    }
                    ModelChange::Retagged { id, old, new } => write!(
                        f,
                        "\n  ~ {id}: tags [{}] -> [{}]",
                        old.join(", "),
                        new.join(", ")
                    )?,
                }
            }
        }
        if !self.sets.is_empty() {
            line(f)?;
            write!(f, "sets:")?;
            for s in &self.sets {
                write!(f, "\n  {} {}:", s.status.sign(), s.name)?;
                write_members(f, &s.added, &s.removed)?;
            }
        }
        if !self.regions.is_empty() {
            line(f)?;
            write!(f, "regions:")?;
            for r in &self.regions {
                write!(f, "\n  {} {}", r.status.sign(), r.name)?;
                for d in &r.details {
                    write!(f, "\n      {d}")?;
                }
            }
        }
        if !self.rules.is_empty() {
            line(f)?;
            write!(f, "rules:")?;
            for r in &self.rules {
                match r {
                    RuleChange::Added {
                        id,
                        position,
                        summary,
                    } => write!(f, "\n  + {id} (#{position}): {summary}")?,
                    RuleChange::Removed {
                        id,
                        position,
                        summary,
                    } => write!(f, "\n  - {id} (was #{position}): {summary}")?,
                    RuleChange::Changed {
                        id,
                        position,
                        moved,
                        details,
                    } => {
                        write!(f, "\n  ~ {id}")?;
                        if *moved {
                            write!(f, " (moved: #{} -> #{})", position.old, position.new)?;
                        }
                        for d in details {
                            write!(f, "\n      {d}")?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::EXAMPLE_POLICY;

    fn compile(text: &str) -> CompiledPolicy {
        match CompiledPolicy::from_toml_str(text, "test.toml") {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn identical_policies_have_no_differences() {
        let a = CompiledPolicy::example();
        let b = compile(EXAMPLE_POLICY);
        let d = diff(&a, &b);
        assert!(d.is_empty(), "{d}");
        assert_eq!(d.to_string(), "no differences");
    }

    /// The example, modified in one place per section.
    fn modified() -> String {
        let s = format!("effective_from = \"2026-12-01T00:00:00Z\"\n{EXAMPLE_POLICY}");
        let edits: &[(&str, &str)] = &[
            ("version = \"2026.12.1\"", "version = \"2026.12.9\""),
            (
                "version = \"ear-sup1-740@2025-09;ofac@2025-07;ua-postal@2022-02-21\"",
                "version = \"ear-sup1-740@2025-12;ofac@2025-07;ua-postal@2022-02-21\"",
            ),
            (
                "nationality_mode = \"most_recent\"",
                "nationality_mode = \"any_citizenship\"",
            ),
            // D:5 loses HT and gains VN; d5_or_macau follows.
            ("\"ER\", \"HT\", \"IR\"", "\"ER\", \"IR\", \"VN\""),
            (
                "\"mythos-5\" = { tags = [\"order-2026-11\"] }",
                "\"mythos-5\" = { tags = [] }",
            ),
            (
                "\"opus-4\" = { tags = [] }\n",
                "\"gpt-x\" = { tags = [] }\n",
            ),
            (
                "subdivisions = [\"UA-43\", \"UA-40\"]",
                "subdivisions = [\"UA-43\"]",
            ),
            // A rule changes effect-relevant fields.
            (
                "threshold_percent = 50.0",
                "threshold_percent = 25.0\nobligations = [\"manual_review\"]",
            ),
            (
                "legal_basis = \"compliance revocation\"",
                "legal_basis = \"revocation\"",
            ),
        ];
        let mut s = s;
        for (from, to) in edits {
            assert!(s.contains(from), "edit target {from:?} not found");
            s = s.replacen(from, to, 1);
        }
        // Remove the listed-party-potential rule; add a new one at the end.
        let start = s
            .find("[[rules]]\nid = \"listed-party-potential\"")
            .unwrap();
        let end = start + s[start..].find("\n\n").unwrap() + 2;
        s.replace_range(start..end, "");
        s.push_str(
            "\n[[rules]]\nid = \"e1-nationals\"\nlegal_basis = \"order-2026-11\"\neffect = \"deny\"\n\
             scope = [\"order-2026-11\"]\nkind = \"nationality_in\"\nset = \"E:1\"\n",
        );
        s
    }

    #[test]
    fn every_section_of_a_modified_example_is_reported() {
        let old = CompiledPolicy::example();
        let new = compile(&modified());
        let d = diff(&old, &new);
        assert!(!d.is_empty());
        assert_eq!(d.id, None);
        assert_eq!(
            d.version,
            Some(Change {
                old: "2026.12.1".into(),
                new: "2026.12.9".into()
            })
        );
        assert!(d.data_version.is_some());
        let eff = d.effective_from.as_ref().unwrap();
        assert_eq!(eff.old, None);
        assert_eq!(
            eff.new.map(|t| t.unix_timestamp()),
            Some(time::macros::datetime!(2026-12-01 0:00 UTC).unix_timestamp())
        );
        assert_eq!(
            d.settings,
            vec![Detail::Value {
                field: "nationality_mode".into(),
                old: "most_recent".into(),
                new: "any_citizenship".into()
            }]
        );
        assert_eq!(
            d.models,
            vec![
                ModelChange::Added {
                    id: "gpt-x".into(),
                    tags: vec![]
                },
                ModelChange::Retagged {
                    id: "mythos-5".into(),
                    old: vec!["order-2026-11".into()],
                    new: vec![]
                },
                ModelChange::Removed {
                    id: "opus-4".into(),
                    tags: vec![]
                },
            ]
        );
        let sets: Vec<(&str, Status, Vec<String>, Vec<String>)> = d
            .sets
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.status,
                    s.added.clone(),
                    s.removed.clone(),
                )
            })
            .collect();
        assert_eq!(
            sets,
            vec![
                ("D:5", Status::Changed, vec!["VN".into()], vec!["HT".into()]),
                (
                    "d5_or_macau",
                    Status::Changed,
                    vec!["VN".into()],
                    vec!["HT".into()]
                ),
            ]
        );
        assert_eq!(d.regions.len(), 1);
        assert_eq!(d.regions[0].name, "crimea");
        assert_eq!(
            d.regions[0].details,
            vec![Detail::Members {
                field: "subdivisions".into(),
                added: vec![],
                removed: vec!["UA-40".into()]
            }]
        );
        let ids: Vec<&str> = d.rules.iter().map(RuleChange::id).collect();
        assert_eq!(
            ids,
            vec![
                "listed-party-potential",
                "subject-revoked",
                "deemed-export-nationality",
                "restricted-ownership",
                "nationality-not-restricted",
                "e1-nationals"
            ]
        );
        let details = |id: &str| -> Vec<String> {
            match d.rules.iter().find(|r| r.id() == id) {
                Some(RuleChange::Changed { details, moved, .. }) => {
                    assert!(!moved, "{id} did not move");
                    details.iter().map(ToString::to_string).collect()
                }
                other => panic!("{id}: {other:?}"),
            }
        };
        assert_eq!(
            details("restricted-ownership"),
            vec![
                "threshold_percent: 50 -> 25",
                "set countries: +VN -HT",
                "obligations: +manual_review"
            ]
        );
        assert_eq!(
            details("subject-revoked"),
            vec!["legal_basis: compliance revocation -> revocation"]
        );
        assert_eq!(
            details("deemed-export-nationality"),
            vec!["set countries: +VN -HT"]
        );
        assert!(matches!(
            &d.rules[0],
            RuleChange::Removed { position: 7, .. }
        ));
        assert!(matches!(
            d.rules.last(),
            Some(RuleChange::Added { position: 12, summary, .. })
                if summary == "deny nationality_in scope=[order-2026-11] set=E:1"
        ));

        let text = d.to_string();
        println!("{text}");
        for needle in [
            "policy.version: 2026.12.1 -> 2026.12.9",
            "effective_from: (none) -> 2026-12-01T00:00:00Z",
            "  ~ nationality_mode: most_recent -> any_citizenship",
            "  + gpt-x []",
            "  - opus-4 []",
            "  ~ mythos-5: tags [order-2026-11] -> []",
            "  ~ D:5: +VN -HT",
            "  - listed-party-potential (was #7): deny listed_party",
            "  + e1-nationals (#12): deny nationality_in",
            "      threshold_percent: 50 -> 25",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        // Deterministic, and symmetric in what it finds.
        assert_eq!(text, diff(&old, &new).to_string());
        let back = diff(&new, &old);
        assert_eq!(back.rules.len(), d.rules.len());
        assert_eq!(back.sets.len(), d.sets.len());
        assert_eq!(back.models.len(), d.models.len());
    }

    const HEADER: &str = r#"
[policy]
id = "p"
version = "1"
[data]
version = "d"
[tags]
t = "t"
u = "u"
[models]
m = { tags = ["t"] }
[sets.a]
countries = ["CN"]
[sets.b]
countries = ["CN"]
"#;

    fn rule(id: &str, effect: &str, scope: &str, kind: &str, extra: &str) -> String {
        format!(
            "[[rules]]\nid = \"{id}\"\nlegal_basis = \"x\"\neffect = \"{effect}\"\n\
             scope = {scope}\nkind = \"{kind}\"\n{extra}\n"
        )
    }

    #[test]
    fn moves_effect_scope_and_kind_changes() {
        let r1 = rule("r1", "deny", "\"all\"", "subject_revoked", "");
        let old = compile(&format!(
            "{HEADER}{r1}{}{}",
            rule("r2", "deny", "[\"t\"]", "nationality_in", "set = \"a\""),
            rule("r3", "allow", "[\"t\"]", "us_person", ""),
        ));
        // r3 moves to the front; r2 changes effect, kind, scope and set name
        // (same members); r1 is unchanged; r4 is new.
        let new = compile(&format!(
            "{HEADER}{}{r1}{}{}",
            rule("r3", "allow", "[\"t\"]", "us_person", ""),
            rule(
                "r2",
                "allow",
                "[\"t\", \"u\"]",
                "nationality_not_in",
                "set = \"b\""
            ),
            rule("r4", "allow", "[\"u\"]", "us_person", ""),
        ));
        let d = diff(&old, &new);
        let text = d.to_string();
        assert!(text.contains("~ r3 (moved: #3 -> #1)"), "{text}");
        assert!(!text.contains("r1"), "{text}");
        assert!(
            text.contains("  + r4 (#4): allow us_person scope=[u]"),
            "{text}"
        );
        match d.rules.iter().find(|r| r.id() == "r2") {
            Some(RuleChange::Changed { details, moved, .. }) => {
                assert!(!moved);
                let s: Vec<String> = details.iter().map(ToString::to_string).collect();
                assert_eq!(
                    s,
                    vec![
                        "effect: deny -> allow",
                        "kind: nationality_in -> nationality_not_in",
                        "scope: +u",
                        "set: a -> b",
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(d.sets.is_empty(), "{text}");
        assert!(!diff(&new, &old).is_empty());
    }

    #[test]
    fn diff_files_reports_load_errors() {
        let e = diff_files(
            Path::new("/nonexistent/a.toml"),
            Path::new("/nonexistent/b.toml"),
        )
        .unwrap_err();
        assert!(matches!(e, PolicyError::Io { .. }), "{e}");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/example.toml");
        let d = diff_files(&dir, &dir).unwrap();
        assert!(d.is_empty(), "{d}");
    }
}
