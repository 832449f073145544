//! Validation and compilation of a [`RawPolicy`] into a [`CompiledPolicy`].
//! Every invalid entry is collected, with its line and field, before the
//! compilation fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use toml::Spanned;

use super::country::{self, CountrySet};
use super::raw::{RawPolicy, RawRule, S};
use super::{
    line_col, parse_error, CompiledPolicy, Effect, Issue, Issues, ModelEntry, NationalityMode,
    OnMissing, PolicyError, Region, Rule, RuleKind, Scope, Settings,
};
use crate::event::ScreeningStatus;
use crate::vocab::obligation;

/// Collects issues with their positions.
struct Ctx<'t> {
    text: &'t str,
    issues: Vec<Issue>,
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.issues.push(Issue {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    /// Check a list of country codes; returns the set of the valid ones.
    fn countries(&mut self, codes: &[S], field: &str, assigned: &CountrySet) -> CountrySet {
        let mut set = CountrySet::empty();
        for (i, c) in codes.iter().enumerate() {
            let code = c.get_ref();
            if !is_code(code, assigned) {
                let hint = if is_code(&code.to_ascii_uppercase(), assigned) {
                    " (country codes are upper case)"
                } else {
                    ""
                };
                self.err(
                    c.span(),
                    format!("{field}[{i}]"),
                    format!("unknown country code {code:?}{hint}"),
                );
            } else {
                set.insert(code);
            }
        }
        set
    }
}

fn is_code(code: &str, assigned: &CountrySet) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && assigned.contains(code)
}

/// Quote a TOML key when it is not bare.
fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

pub(crate) fn compile(text: &str, file: &str) -> Result<CompiledPolicy, PolicyError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| parse_error(text, file, &e))?;
    let mut cx = Ctx {
        text,
        issues: Vec::new(),
    };
    let assigned = country::assigned();

    // Header.
    for (s, field) in [
        (&raw.policy.id, "policy.id"),
        (&raw.policy.version, "policy.version"),
        (&raw.data.version, "data.version"),
    ] {
        if s.get_ref().trim().is_empty() {
            cx.err(s.span(), field, "must not be empty");
        }
    }

    // Effective date.
    let effective_from = raw
        .effective_from
        .as_ref()
        .and_then(|v| parse_effective_from(&mut cx, v));
    if let Some(e) = &raw.policy.effective_from {
        cx.err(
            e.span(),
            "policy.effective_from",
            "effective_from is a top-level key: write it before the [policy] table",
        );
    }

    // Settings.
    let mut settings = Settings::default();
    if let Some(rs) = &raw.settings {
        let rs = rs.get_ref();
        if let Some(m) = &rs.nationality_mode {
            match NationalityMode::parse(m.get_ref()) {
                Some(mode) => settings.nationality_mode = mode,
                None => cx.err(
                    m.span(),
                    "settings.nationality_mode",
                    format!(
                        "unknown mode {:?} (expected \"most_recent\" or \"any_citizenship\")",
                        m.get_ref()
                    ),
                ),
            }
        }
        if let Some(c) = &rs.min_geo_confidence {
            if confidence_ok(*c.get_ref()) {
                settings.min_geo_confidence = *c.get_ref();
            } else {
                cx.err(
                    c.span(),
                    "settings.min_geo_confidence",
                    "must be between 0.0 and 1.0",
                );
            }
        }
        if let Some(d) = rs.default_allow_untagged {
            settings.default_allow_untagged = d;
        }
    }

    // Tags.
    let mut tags = Vec::new();
    for t in raw.tags.keys() {
        if t.get_ref().trim().is_empty() || t.get_ref() == "all" {
            cx.err(
                t.span(),
                format!("tags.{}", key(t.get_ref())),
                "a tag must not be empty nor \"all\"",
            );
        }
        tags.push(t.get_ref().clone());
    }
    let tag_set: BTreeSet<&str> = tags.iter().map(String::as_str).collect();

    // Sets: own members first, then includes resolved with cycle detection.
    let mut own: BTreeMap<String, CountrySet> = BTreeMap::new();
    let mut includes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, set) in &raw.sets {
        let n = name.get_ref();
        let field = format!("sets.{}", key(n));
        let s = set.get_ref();
        let members = cx.countries(&s.countries, &format!("{field}.countries"), &assigned);
        let mut inc = Vec::new();
        for (i, other) in s.include.iter().enumerate() {
            if raw.sets.keys().any(|k| k.get_ref() == other.get_ref()) {
                inc.push(other.get_ref().clone());
            } else {
                cx.err(
                    other.span(),
                    format!("{field}.include[{i}]"),
                    format!("unknown set {:?}", other.get_ref()),
                );
            }
        }
        own.insert(n.clone(), members);
        includes.insert(n.clone(), inc);
    }
    let mut sets: BTreeMap<String, CountrySet> = BTreeMap::new();
    for (name, set) in &raw.sets {
        let mut stack = Vec::new();
        match resolve(name.get_ref(), &own, &includes, &mut stack) {
            Ok(s) => {
                sets.insert(name.get_ref().clone(), s);
            }
            Err(cycle) => cx.err(
                set.span(),
                format!("sets.{}.include", key(name.get_ref())),
                format!("include cycle: {}", cycle.join(" -> ")),
            ),
        }
    }

    // Regions.
    let mut regions: BTreeMap<String, Region> = BTreeMap::new();
    for (name, r) in &raw.regions {
        let field = format!("regions.{}", key(name.get_ref()));
        let rr = r.get_ref();
        let c = rr.country.get_ref();
        if !is_code(c, &assigned) {
            cx.err(
                rr.country.span(),
                format!("{field}.country"),
                format!("unknown country code {c:?}"),
            );
        }
        let subdivision = |cx: &mut Ctx<'_>, list: &str, i: usize, s: &S| -> Option<String> {
            let sv = s.get_ref();
            let ok = sv.len() >= 4
                && sv.len() <= 6
                && sv.get(..3) == Some(&format!("{c}-"))
                && sv.get(3..).is_some_and(|t| {
                    t.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                });
            if !ok {
                cx.err(
                    s.span(),
                    format!("{field}.{list}[{i}]"),
                    format!("{sv:?} is not an ISO 3166-2 code of {c} (\"{c}-XX\")"),
                );
            }
            ok.then(|| sv.clone())
        };
        let subdivisions: Vec<String> = rr
            .subdivisions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| subdivision(&mut cx, "subdivisions", i, s))
            .collect();
        let partial_subdivisions: Vec<String> = rr
            .partial_subdivisions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| subdivision(&mut cx, "partial_subdivisions", i, s))
            .collect();
        for (i, s) in rr.partial_subdivisions.iter().enumerate() {
            if subdivisions.contains(s.get_ref()) {
                cx.err(
                    s.span(),
                    format!("{field}.partial_subdivisions[{i}]"),
                    format!(
                        "{:?} is also listed as wholly inside the region",
                        s.get_ref()
                    ),
                );
            }
        }
        let postal_code = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric());
        let mut postal_prefixes = Vec::new();
        for (i, p) in rr.postal_prefixes.iter().enumerate() {
            let pv = p.get_ref();
            if postal_code(pv) {
                postal_prefixes.push(pv.to_ascii_uppercase());
            } else {
                cx.err(
                    p.span(),
                    format!("{field}.postal_prefixes[{i}]"),
                    "a postal prefix is one or more ASCII letters or digits",
                );
            }
        }
        let mut postal_ranges: Vec<(String, String)> = Vec::new();
        for (i, p) in rr.postal_ranges.iter().enumerate() {
            let pv = p.get_ref().to_ascii_uppercase();
            let parsed = pv
                .split_once('-')
                .map(|(lo, hi)| (lo.trim().to_string(), hi.trim().to_string()))
                .filter(|(lo, hi)| {
                    postal_code(lo) && postal_code(hi) && lo.len() == hi.len() && lo <= hi
                });
            match parsed {
                Some((lo, hi))
                    if postal_ranges
                        .first()
                        .is_none_or(|(first, _)| first.len() == lo.len()) =>
                {
                    postal_ranges.push((lo, hi));
                }
                Some(_) => cx.err(
                    p.span(),
                    format!("{field}.postal_ranges[{i}]"),
                    "every postal range of a region has the same length (a region's postal codes have one format)",
                ),
                None => cx.err(
                    p.span(),
                    format!("{field}.postal_ranges[{i}]"),
                    "a postal range is \"LOW-HIGH\": two codes of ASCII letters or digits, of one length, LOW <= HIGH",
                ),
            }
        }
        if rr.subdivisions.is_empty()
            && rr.partial_subdivisions.is_empty()
            && rr.postal_prefixes.is_empty()
            && rr.postal_ranges.is_empty()
        {
            cx.err(
                r.span(),
                field.clone(),
                "a region needs at least one subdivision or postal prefix or range",
            );
        }
        if !rr.partial_subdivisions.is_empty()
            && rr.postal_prefixes.is_empty()
            && rr.postal_ranges.is_empty()
        {
            cx.err(
                r.span(),
                format!("{field}.partial_subdivisions"),
                "a partly covered subdivision needs the region's postal prefixes or ranges to decide within it",
            );
        }
        regions.insert(
            name.get_ref().clone(),
            Region {
                name: name.get_ref().clone(),
                country: c.clone(),
                subdivisions,
                partial_subdivisions,
                postal_prefixes,
                postal_ranges,
            },
        );
    }

    // Rules.
    let mut rules = Vec::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.rules.iter().enumerate() {
        if let Some(rule) = compile_rule(&mut cx, i, r, &tag_set, &sets, &regions, &raw) {
            let (line, _) = line_col(text, r.span().start);
            if let Some(prev) = seen_ids.insert(rule.id.clone(), line) {
                cx.err(
                    r.get_ref().id.span(),
                    format!("rules[{i}].id"),
                    format!("duplicate rule id {:?} (first at line {prev})", rule.id),
                );
            }
            rules.push(rule);
        }
    }

    // Models.
    let mut models = HashMap::new();
    for (id, m) in &raw.models {
        let field = format!("models.{}", key(id.get_ref()));
        if id.get_ref().trim().is_empty() {
            cx.err(id.span(), field.clone(), "a model id must not be empty");
        }
        let mut mtags = Vec::new();
        for (i, t) in m.get_ref().tags.iter().enumerate() {
            if tag_set.contains(t.get_ref().as_str()) {
                mtags.push(t.get_ref().clone());
            } else {
                cx.err(
                    t.span(),
                    format!("{field}.tags[{i}]"),
                    format!("unknown tag {:?} (declare it in [tags])", t.get_ref()),
                );
            }
        }
        let applies: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| match &r.scope {
                Scope::All => true,
                Scope::Tags(ts) => ts.iter().any(|t| mtags.contains(t)),
            })
            .map(|(i, _)| i)
            .collect();
        models.insert(
            id.get_ref().clone(),
            ModelEntry {
                tags: mtags,
                rules: applies,
            },
        );
    }

    if !cx.issues.is_empty() {
        cx.issues.sort_by_key(|i| (i.line, i.column));
        return Err(PolicyError::Invalid {
            file: file.to_string(),
            issues: Issues(cx.issues),
        });
    }
    let all_scope_rules = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.scope == Scope::All)
        .map(|(i, _)| i)
        .collect();
    Ok(CompiledPolicy {
        id: raw.policy.0.id.into_inner(),
        version: raw.policy.0.version.into_inner(),
        data_version: raw.data.0.version.into_inner(),
        source: file.to_string(),
        digest: super::digest(text),
        effective_from,
        settings,
        sets,
        regions,
        rules,
        tags,
        models,
        all_scope_rules,
    })
}

/// Parse the top-level `effective_from`: an RFC 3339 date-time with a UTC
/// offset, written as a string or as a TOML offset date-time.
fn parse_effective_from(
    cx: &mut Ctx<'_>,
    v: &Spanned<toml::Value>,
) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let text = match v.get_ref() {
        toml::Value::String(s) => s.trim().to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => {
            cx.err(
                v.span(),
                "effective_from",
                "must be an RFC 3339 date-time such as \"2026-12-01T00:00:00Z\"",
            );
            return None;
        }
    };
    match time::OffsetDateTime::parse(&text, &Rfc3339) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.err(
                v.span(),
                "effective_from",
                format!(
                    "{text:?} is not an RFC 3339 date-time with a UTC offset \
                     (such as \"2026-12-01T00:00:00Z\"): {e}"
                ),
            );
            None
        }
    }
}

fn confidence_ok(c: f64) -> bool {
    c.is_finite() && (0.0..=1.0).contains(&c)
}

/// Resolve a set with its includes; `Err(path)` on a cycle.
fn resolve(
    name: &str,
    own: &BTreeMap<String, CountrySet>,
    includes: &BTreeMap<String, Vec<String>>,
    stack: &mut Vec<String>,
) -> Result<CountrySet, Vec<String>> {
    if stack.iter().any(|s| s == name) {
        let mut cycle = stack.clone();
        cycle.push(name.to_string());
        return Err(cycle);
    }
    stack.push(name.to_string());
    let mut set = own.get(name).copied().unwrap_or_default();
    for inc in includes.get(name).map(Vec::as_slice).unwrap_or_default() {
        let s = resolve(inc, own, includes, stack)?;
        set.union_with(&s);
    }
    stack.pop();
    Ok(set)
}

/// The kind names, for messages.
const KINDS: &[&str] = &[
    "subject_known",
    "subject_revoked",
    "us_person_status_known",
    "verification_current",
    "location_verifiable",
    "location_in",
    "nationality_in",
    "ownership_in",
    "listed_party",
    "us_person",
    "nationality_not_in",
];

/// Levels of owner records an `ownership_in` rule follows by default.
pub(crate) const DEFAULT_OWNERSHIP_DEPTH: u32 = 10;
/// The most levels a policy may ask for.
pub(crate) const MAX_OWNERSHIP_DEPTH: u32 = 32;

/// The kind parameters each kind accepts.
fn params_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "verification_current" => &["max_age_days"],
        "location_verifiable" => &["min_confidence"],
        "location_in" => &["set", "regions"],
        "nationality_in" | "nationality_not_in" => &["set"],
        "ownership_in" => &["set", "threshold_percent", "max_depth"],
        "listed_party" => &["status", "lists"],
        _ => &[],
    }
}

#[allow(clippy::too_many_lines)]
fn compile_rule(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &Spanned<crate::shape::TableOnly<RawRule>>,
    tags: &BTreeSet<&str>,
    sets: &BTreeMap<String, CountrySet>,
    regions: &BTreeMap<String, Region>,
    raw: &RawPolicy,
) -> Option<Rule> {
    let rr = r.get_ref();
    let f = |name: &str| format!("rules[{i}].{name}");
    let before = cx.issues.len();

    let id = rr.id.get_ref().clone();
    if id.trim().is_empty() {
        cx.err(rr.id.span(), f("id"), "must not be empty");
    }
    if rr.legal_basis.get_ref().trim().is_empty() {
        cx.err(rr.legal_basis.span(), f("legal_basis"), "must not be empty");
    }
    let effect = match rr.effect.get_ref().as_str() {
        "allow" => Some(Effect::Allow),
        "deny" => Some(Effect::Deny),
        other => {
            cx.err(
                rr.effect.span(),
                f("effect"),
                format!("unknown effect {other:?} (expected \"allow\" or \"deny\")"),
            );
            None
        }
    };

    // Scope.
    let scope = match rr.scope.get_ref() {
        toml::Value::String(s) if s == "all" => Some(Scope::All),
        toml::Value::Array(items) if !items.is_empty() => {
            let mut ts = Vec::new();
            for (j, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(t) if tags.contains(t) => ts.push(t.to_string()),
                    Some(t) => cx.err(
                        rr.scope.span(),
                        format!("rules[{i}].scope[{j}]"),
                        format!("unknown tag {t:?} (declare it in [tags])"),
                    ),
                    None => cx.err(
                        rr.scope.span(),
                        format!("rules[{i}].scope[{j}]"),
                        "a tag must be a string",
                    ),
                }
            }
            Some(Scope::Tags(ts))
        }
        _ => {
            cx.err(
                rr.scope.span(),
                f("scope"),
                "scope is \"all\" or a non-empty list of tags",
            );
            None
        }
    };

    // Parameters present.
    let present: Vec<(&str, Range<usize>)> = [
        ("set", rr.set.as_ref().map(Spanned::span)),
        ("regions", rr.regions.as_ref().map(Spanned::span)),
        (
            "threshold_percent",
            rr.threshold_percent.as_ref().map(Spanned::span),
        ),
        ("status", rr.status.as_ref().map(Spanned::span)),
        ("lists", rr.lists.as_ref().map(Spanned::span)),
        (
            "min_confidence",
            rr.min_confidence.as_ref().map(Spanned::span),
        ),
        ("max_age_days", rr.max_age_days.as_ref().map(Spanned::span)),
        ("max_depth", rr.max_depth.as_ref().map(Spanned::span)),
    ]
    .into_iter()
    .filter_map(|(n, s)| s.map(|s| (n, s)))
    .collect();
    let kind_name = rr.kind.get_ref().as_str();
    if KINDS.contains(&kind_name) {
        let allowed = params_of(kind_name);
        for (n, span) in &present {
            if !allowed.contains(n) {
                cx.err(
                    span.clone(),
                    f(n),
                    format!("kind {kind_name:?} takes no parameter {n:?}"),
                );
            }
        }
    }

    let set_param = |cx: &mut Ctx<'_>, required: bool| -> CountrySet {
        match &rr.set {
            Some(s) => match sets.get(s.get_ref()) {
                Some(set) => *set,
                None => {
                    if raw.sets.keys().all(|k| k.get_ref() != s.get_ref()) {
                        cx.err(s.span(), f("set"), format!("unknown set {:?}", s.get_ref()));
                    }
                    CountrySet::empty()
                }
            },
            None => {
                if required {
                    cx.err(
                        r.span(),
                        f("set"),
                        format!("kind {kind_name:?} needs `set`"),
                    );
                }
                CountrySet::empty()
            }
        }
    };

    let kind = match kind_name {
        "subject_known" => Some(RuleKind::SubjectKnown),
        "subject_revoked" => Some(RuleKind::SubjectRevoked),
        "us_person_status_known" => Some(RuleKind::UsPersonStatusKnown),
        "us_person" => Some(RuleKind::UsPerson),
        "verification_current" => {
            let max_age_days =
                rr.max_age_days
                    .as_ref()
                    .and_then(|d| match u32::try_from(*d.get_ref()) {
                        Ok(v) if v > 0 => Some(v),
                        _ => {
                            cx.err(
                                d.span(),
                                f("max_age_days"),
                                "must be a positive number of days",
                            );
                            None
                        }
                    });
            Some(RuleKind::VerificationCurrent { max_age_days })
        }
        "location_verifiable" => {
            let min_confidence = rr.min_confidence.as_ref().and_then(|c| {
                if confidence_ok(*c.get_ref()) {
                    Some(*c.get_ref())
                } else {
                    cx.err(c.span(), f("min_confidence"), "must be between 0.0 and 1.0");
                    None
                }
            });
            Some(RuleKind::LocationVerifiable { min_confidence })
        }
        "location_in" => {
            let countries = set_param(cx, false);
            let mut regs = Vec::new();
            if let Some(rs) = &rr.regions {
                for (j, name) in rs.get_ref().iter().enumerate() {
                    match regions.get(name.get_ref()) {
                        Some(reg) => regs.push(reg.clone()),
                        None => cx.err(
                            name.span(),
                            format!("rules[{i}].regions[{j}]"),
                            format!("unknown region {:?}", name.get_ref()),
                        ),
                    }
                }
            }
            if rr.set.is_none() && rr.regions.as_ref().is_none_or(|r| r.get_ref().is_empty()) {
                cx.err(
                    r.span(),
                    f("set"),
                    "kind \"location_in\" needs `set`, `regions` or both",
                );
            }
            Some(RuleKind::LocationIn {
                countries,
                regions: regs,
            })
        }
        "nationality_in" => Some(RuleKind::NationalityIn {
            set: set_param(cx, true),
        }),
        "nationality_not_in" => Some(RuleKind::NationalityNotIn {
            set: set_param(cx, true),
        }),
        "ownership_in" => {
            let set = set_param(cx, true);
            let threshold_percent = match &rr.threshold_percent {
                Some(t) => {
                    let v = *t.get_ref();
                    if v.is_finite() && v > 0.0 && v <= 100.0 {
                        v
                    } else {
                        cx.err(t.span(), f("threshold_percent"), "must be in (0, 100]");
                        50.0
                    }
                }
                None => 50.0,
            };
            let max_depth = match &rr.max_depth {
                Some(d) => match u32::try_from(*d.get_ref()) {
                    Ok(v) if (1..=MAX_OWNERSHIP_DEPTH).contains(&v) => v,
                    _ => {
                        cx.err(
                            d.span(),
                            f("max_depth"),
                            format!("must be between 1 and {MAX_OWNERSHIP_DEPTH}"),
                        );
                        DEFAULT_OWNERSHIP_DEPTH
                    }
                },
                None => DEFAULT_OWNERSHIP_DEPTH,
            };
            Some(RuleKind::OwnershipIn {
                set,
                threshold_percent,
                max_depth,
            })
        }
        "listed_party" => {
            let status = match &rr.status {
                Some(s) => match s.get_ref().as_str() {
                    "confirmed" => Some(ScreeningStatus::Confirmed),
                    "potential" => Some(ScreeningStatus::Potential),
                    other => {
                        cx.err(
                            s.span(),
                            f("status"),
                            format!("unknown status {other:?} (expected \"confirmed\" or \"potential\")"),
                        );
                        None
                    }
                },
                None => {
                    cx.err(
                        r.span(),
                        f("status"),
                        "kind \"listed_party\" needs `status`",
                    );
                    None
                }
            };
            let lists = rr
                .lists
                .as_ref()
                .map(|l| l.get_ref().iter().map(|s| s.get_ref().clone()).collect())
                .unwrap_or_default();
            status.map(|status| RuleKind::ListedParty { status, lists })
        }
        other => {
            cx.err(
                rr.kind.span(),
                f("kind"),
                format!(
                    "unknown kind {other:?} (expected one of {})",
                    KINDS.join(", ")
                ),
            );
            None
        }
    };

    if let (Some(k), Some(e)) = (&kind, effect) {
        if k.effect() != e {
            cx.err(
                rr.effect.span(),
                f("effect"),
                format!(
                    "kind {:?} is a{} rule",
                    k.name(),
                    if k.effect() == Effect::Allow {
                        "n allow"
                    } else {
                        " deny"
                    }
                ),
            );
        }
    }

    let on_missing = match &rr.on_missing_data {
        None => OnMissing::Deny,
        Some(m) if effect == Some(Effect::Allow) => {
            cx.err(
                m.span(),
                f("on_missing_data"),
                "allow rules never fire on missing data; remove this field",
            );
            OnMissing::Deny
        }
        Some(m) => match m.get_ref().as_str() {
            "deny" => OnMissing::Deny,
            "skip" => OnMissing::Skip,
            other => {
                cx.err(
                    m.span(),
                    f("on_missing_data"),
                    format!("unknown value {other:?} (expected \"deny\" or \"skip\")"),
                );
                OnMissing::Deny
            }
        },
    };

    let mut obligations = Vec::new();
    for (j, o) in rr.obligations.iter().enumerate() {
        match obligation::ALL.iter().find(|k| **k == o.get_ref().as_str()) {
            Some(k) if effect == Some(Effect::Deny) => obligations.push(*k),
            Some(_) => cx.err(
                o.span(),
                format!("rules[{i}].obligations[{j}]"),
                "obligations attach to deny rules only",
            ),
            None => cx.err(
                o.span(),
                format!("rules[{i}].obligations[{j}]"),
                format!(
                    "unknown obligation {:?} (expected one of {})",
                    o.get_ref(),
                    obligation::ALL.join(", ")
                ),
            ),
        }
    }

    let liftable = match &rr.liftable_by_authorization {
        Some(l) if *l.get_ref() => {
            if !matches!(kind_name, "nationality_in" | "ownership_in") {
                cx.err(
                    l.span(),
                    f("liftable_by_authorization"),
                    "only nationality_in and ownership_in rules can be lifted by an authorization",
                );
            }
            true
        }
        _ => false,
    };

    if cx.issues.len() > before {
        return None;
    }
    Some(Rule {
        id,
        description: rr.description.clone(),
        legal_basis: rr.legal_basis.get_ref().clone(),
        effect: effect?,
        scope: scope?,
        kind: kind?,
        set_name: rr.set.as_ref().map(|s| s.get_ref().clone()),
        on_missing,
        obligations,
        liftable,
    })
}

/// Warnings about a compiled policy.
pub(crate) fn warnings(p: &CompiledPolicy) -> Vec<String> {
    let mut w = Vec::new();
    for (i, r) in p.rules.iter().enumerate() {
        if let Scope::Tags(ts) = &r.scope {
            if !p.models.values().any(|m| m.rules.contains(&i)) {
                w.push(format!(
                    "rule {:?} is scoped to {ts:?} but no model carries those tags: it never applies",
                    r.id
                ));
            }
        }
        for (j, earlier) in p.rules[..i].iter().enumerate() {
            if earlier.kind == r.kind && earlier.scope == r.scope && earlier.effect == r.effect {
                w.push(format!(
                    "rule {:?} (#{i}) has the same kind, parameters and scope as rule {:?} (#{j}): it adds nothing",
                    r.id, earlier.id
                ));
            }
        }
    }
    for (id, m) in &p.models {
        if !m.tags.is_empty()
            && !m
                .rules
                .iter()
                .any(|i| p.rules.get(*i).is_some_and(|r| r.effect == Effect::Allow))
        {
            w.push(format!(
                "controlled model {id:?} has no allow rule: it is always denied (no_allow_rule) unless an authorization lifts a deny"
            ));
        }
    }
    if !p
        .rules
        .iter()
        .any(|r| r.kind == RuleKind::SubjectRevoked && r.scope == Scope::All)
    {
        w.push("no subject_revoked rule scoped to all models: revocations are not enforced".into());
    }
    w.sort();
    w
}
