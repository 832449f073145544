//! Tests of the policy format, its validation and the shipped example.

use std::path::Path;

use super::*;

fn manifest(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn example_policy_tests_pass() {
    let policy = CompiledPolicy::example();
    let report = run_tests(&policy, &manifest("policies/example.tests.toml")).unwrap();
    println!("{report}");
    assert!(report.ok(), "{report}");
    assert!(report.passed >= 40, "{report}");
    for s in 1..=17 {
        assert!(
            report.scenarios_passed.contains(&s.to_string()),
            "scenario {s} is not covered: {report}"
        );
    }
}

#[test]
fn example_loads_from_file_and_is_the_embedded_one() {
    let p = CompiledPolicy::load_file(&manifest("policies/example.toml")).unwrap();
    let e = CompiledPolicy::example();
    assert_eq!(p.id, "example");
    assert_eq!(
        (p.id, p.version, p.data_version),
        (e.id, e.version, e.data_version)
    );
    assert_eq!(p.rules, e.rules);
}

#[test]
fn example_sets_are_compiled() {
    let p = CompiledPolicy::example();
    let d5m = &p.sets["d5_or_macau"];
    assert!(d5m.contains("CN") && d5m.contains("MO") && d5m.contains("ZW"));
    assert!(!d5m.contains("GB") && !d5m.contains("US") && !d5m.contains("SG"));
    assert_eq!(d5m.len(), p.sets["D:5"].len() + 1);
    assert!(!p.sets["D:5"].contains("MO"));
    assert_eq!(
        p.sets["sanctioned_countries"].codes(),
        vec!["CU", "IR", "KP"]
    );
    assert!(p.settings.default_allow_untagged);
    assert_eq!(p.settings.nationality_mode, NationalityMode::MostRecent);
    assert_eq!(
        p.model_ids(),
        vec!["fable-5", "haiku-4", "mythos-5", "opus-4", "sonnet-4"]
    );
    // Untagged models carry only the rules scoped to all.
    assert_eq!(p.model("haiku-4").unwrap().rules, p.all_scope_rules());
    assert!(p.model("fable-5").unwrap().rules.len() > p.all_scope_rules().len());
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
}

#[test]
fn missing_tests_file_is_an_io_error() {
    let p = CompiledPolicy::example();
    let e = run_tests(&p, Path::new("/nonexistent/x.tests.toml")).unwrap_err();
    assert!(matches!(e, PolicyError::Io { .. }), "{e}");
    let e = CompiledPolicy::load_file(Path::new("/nonexistent/p.toml")).unwrap_err();
    assert!(matches!(e, PolicyError::Io { .. }), "{e}");
}

const MINI: &str = r#"
[policy]
id = "mini"
version = "1"

[data]
version = "d1"

[tags]
t = "a tag"

[models]
m = { tags = ["t"] }
u = {}

[sets.a]
countries = ["CN"]

[[rules]]
id = "nat"
legal_basis = "b"
effect = "deny"
scope = ["t"]
kind = "nationality_in"
set = "a"
"#;

fn issues(text: &str) -> Vec<Issue> {
    match CompiledPolicy::from_toml_str(text, "test.toml") {
        Err(PolicyError::Invalid { issues, file }) => {
            assert_eq!(file, "test.toml");
            issues.0
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn mini_policy_compiles() {
    let p = CompiledPolicy::from_toml_str(MINI, "mini.toml").unwrap();
    assert_eq!(p.rules.len(), 1);
    assert!(!p.settings.default_allow_untagged, "fail closed by default");
    assert_eq!(p.source, "mini.toml");
    // Warnings: no allow rule for the controlled model, no revocation rule.
    let w = p.warnings();
    assert!(w.iter().any(|w| w.contains("no allow rule")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("subject_revoked")), "{w:?}");
}

#[test]
fn all_invalid_entries_are_reported_with_lines_and_fields() {
    let text = MINI
        .replace(
            r#"countries = ["CN"]"#,
            "countries = [\"CN\", \"ZZ\", \"cn\"]\ninclude = [\"nope\"]",
        )
        .replace(
            r#"m = { tags = ["t"] }"#,
            r#"m = { tags = ["t", "bogus"] }"#,
        )
        .replace(r#"set = "a""#, "set = \"missing\"");
    let is = issues(&text);
    let fields: Vec<&str> = is.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "models.m.tags[1]",
            "sets.a.countries[1]",
            "sets.a.countries[2]",
            "sets.a.include[0]",
            "rules[0].set",
        ],
        "{is:?}"
    );
    let zz = &is[1];
    assert!(zz.message.contains("\"ZZ\""), "{zz:?}");
    assert_eq!(
        text.lines().nth(zz.line - 1).map(|l| l.contains("ZZ")),
        Some(true)
    );
    assert!(is[2].message.contains("upper case"));
    let shown = PolicyError::Invalid {
        file: "f".into(),
        issues: Issues(is.clone()),
    }
    .to_string();
    assert!(shown.starts_with("f: 5 invalid entries:"), "{shown}");
    assert!(shown.contains(&format!("line {}", zz.line)), "{shown}");
}

#[test]
fn rule_errors_are_reported() {
    let text = format!(
        "{MINI}\n{}",
        r#"
[[rules]]
id = "nat"
legal_basis = ""
effect = "allow"
scope = ["nope"]
kind = "nationality_in"
set = "a"
threshold_percent = 3.0
obligations = ["pray"]

[[rules]]
id = "x"
legal_basis = "b"
effect = "deny"
scope = "everything"
kind = "teleport"
on_missing_data = "maybe"

[[rules]]
id = "y"
legal_basis = "b"
effect = "deny"
scope = "all"
kind = "us_person_status_known"
liftable_by_authorization = true

[[rules]]
id = "z"
legal_basis = "b"
effect = "deny"
scope = "all"
kind = "listed_party"
"#
    );
    let is = issues(&text);
    let has = |field: &str, msg: &str| {
        assert!(
            is.iter()
                .any(|i| i.field == field && i.message.contains(msg)),
            "no {field} / {msg} in {is:#?}"
        );
    };
    has("rules[1].legal_basis", "empty");
    has("rules[1].effect", "deny rule");
    has("rules[1].scope[0]", "unknown tag");
    has("rules[1].threshold_percent", "takes no parameter");
    has("rules[1].obligations[0]", "unknown obligation");
    has("rules[2].scope", "\"all\" or a non-empty list");
    has("rules[2].kind", "unknown kind");
    has("rules[2].on_missing_data", "unknown value");
    has("rules[3].liftable_by_authorization", "only nationality_in");
    has("rules[4].status", "needs `status`");
}

#[test]
fn duplicate_rule_ids_and_include_cycles_are_reported() {
    let text = format!(
        "{MINI}\n{}",
        r#"
[sets.b]
include = ["c"]
[sets.c]
include = ["b"]

[[rules]]
id = "nat"
legal_basis = "b"
effect = "deny"
scope = ["t"]
kind = "subject_known"
"#
    );
    let is = issues(&text);
    assert!(
        is.iter().any(|i| i.message.contains("duplicate rule id")),
        "{is:?}"
    );
    assert!(
        is.iter().any(|i| i.message.contains("include cycle")),
        "{is:?}"
    );
}

#[test]
fn regions_and_settings_are_validated() {
    let text = format!(
        "{MINI}\n{}",
        r#"
[settings]
nationality_mode = "newest"
min_geo_confidence = 1.5

[regions.r]
country = "UA"
subdivisions = ["RU-CR", "UA-43"]
postal_prefixes = ["9 5"]

[regions.empty]
country = "XX"
"#
    );
    let is = issues(&text);
    let fields: Vec<&str> = is.iter().map(|i| i.field.as_str()).collect();
    for f in [
        "settings.nationality_mode",
        "settings.min_geo_confidence",
        "regions.r.subdivisions[0]",
        "regions.r.postal_prefixes[0]",
        "regions.empty.country",
        "regions.empty",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

/// serde's derived structs also read the positional (array) form; the
/// policy file's tables must be tables.
#[test]
fn tables_written_as_arrays_are_refused_with_their_line() {
    for (from, to, line) in [
        ("m = { tags = [\"t\"] }", "m = [[\"t\"]]", "m = [[\"t\"]]"),
        (
            "[policy]\nid = \"mini\"\nversion = \"1\"",
            "policy = [\"mini\", \"1\"]",
            "policy = [\"mini\", \"1\"]",
        ),
        (
            "[sets.a]\ncountries = [\"CN\"]",
            "[sets]\na = [[\"CN\"]]",
            "a = [[\"CN\"]]",
        ),
    ] {
        assert!(MINI.contains(from), "{from}");
        let text = MINI.replace(from, to);
        match CompiledPolicy::from_toml_str(&text, "p.toml") {
            Err(PolicyError::Parse {
                line: l, message, ..
            }) => {
                assert_eq!(text.lines().nth(l - 1), Some(line), "{message}");
                assert!(message.contains("expected a table"), "{message}");
            }
            other => panic!("{to}: {other:?}"),
        }
    }
}

#[test]
fn parse_errors_carry_line_and_column() {
    let text = MINI.replace(
        "kind = \"nationality_in\"",
        "kind = \"nationality_in\"\ncolour = 1",
    );
    match CompiledPolicy::from_toml_str(&text, "p.toml") {
        Err(PolicyError::Parse {
            file,
            line,
            message,
            ..
        }) => {
            assert_eq!(file, "p.toml");
            assert_eq!(text.lines().nth(line - 1), Some("colour = 1"));
            assert!(message.contains("colour"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let e = CompiledPolicy::from_toml_str("[policy\nid=1", "q.toml").unwrap_err();
    assert!(matches!(e, PolicyError::Parse { line: 1, .. }), "{e}");
    assert!(validate("not = [toml", "x").is_err());
    assert_eq!(validate(MINI, "x").map(|w| w.len()), Ok(2));
}

#[test]
fn a_wrong_expectation_fails_the_policy_tests() {
    let p = CompiledPolicy::example();
    let text = std::fs::read_to_string(manifest("policies/example.tests.toml")).unwrap();
    let good = testing::run_tests_str(&p, &text, "t").unwrap();
    let bad_text = text.replacen(
        "reasons = [\"restricted_nationality\", \"authorization_expired\"]",
        "reasons = [\"authorization_expired\", \"restricted_nationality\"]",
        1,
    );
    let bad = testing::run_tests_str(&p, &bad_text, "t").unwrap();
    assert_eq!(bad.failed, 1, "{bad}");
    assert_eq!(bad.passed + 1, good.passed);
    assert!(bad.to_string().contains("authorization_expired"), "{bad}");
    // A policy without the nationality rule fails scenario 2 (and others).
    let start = EXAMPLE_POLICY
        .find("[[rules]]\nid = \"deemed-export-nationality\"")
        .unwrap();
    let len = EXAMPLE_POLICY[start + 1..].find("[[rules]]").unwrap() + 1;
    let mut weaker = EXAMPLE_POLICY.to_string();
    weaker.replace_range(start..start + len, "");
    let p2 = CompiledPolicy::from_toml_str(&weaker, "weaker.toml").unwrap();
    assert!(p2.rules.iter().all(|r| r.id != "deemed-export-nationality"));
    let r = testing::run_tests_str(&p2, &text, "t").unwrap();
    assert!(r.failed >= 4, "{r}");
}

#[test]
fn invalid_test_cases_are_all_reported() {
    let p = CompiledPolicy::example();
    let text = r#"
[[case]]
name = "a"
subject = "nobody-defined"
expect = "maybe"
reasons = ["because"]

[[case]]
name = "b"
request = { model = "fable-5" }
expect = "deny"
reasons = []
"#;
    match testing::run_tests_str(&p, text, "t.toml") {
        Err(PolicyError::Invalid { issues, .. }) => {
            let f: Vec<&str> = issues.0.iter().map(|i| i.field.as_str()).collect();
            assert_eq!(
                f,
                vec![
                    "case[0].subject",
                    "case[0].request",
                    "case[0].expect",
                    "case[0].reasons",
                    "case[1].request"
                ],
                "{issues}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn effective_from_is_parsed_as_rfc3339_with_offset() {
    use time::macros::datetime;
    assert_eq!(CompiledPolicy::example().effective_from, None);
    for (value, expected) in [
        ("\"2026-12-01T00:00:00Z\"", datetime!(2026-12-01 0:00 UTC)),
        (
            "\"2026-12-01T09:00:00+09:00\"",
            datetime!(2026-12-01 0:00 UTC),
        ),
        (
            "2026-12-01T00:00:00.5Z",
            datetime!(2026-12-01 0:00:00.5 UTC),
        ),
        ("2026-11-30T19:00:00-05:00", datetime!(2026-12-01 0:00 UTC)),
    ] {
        let text = format!("effective_from = {value}\n{MINI}");
        let p = CompiledPolicy::from_toml_str(&text, "eff.toml")
            .unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(p.effective_from, Some(expected), "{value}");
    }
}

#[test]
fn invalid_effective_from_is_reported_with_its_line() {
    for value in [
        "\"2026-12-01\"",
        "\"2026-12-01T00:00:00\"",
        "\"tomorrow\"",
        "\"2026-13-01T00:00:00Z\"",
        "2026-12-01T00:00:00",
        "2026-12-01",
        "20261201",
        "\"\"",
    ] {
        let text = format!("# comment\neffective_from = {value}\n{MINI}");
        let is = issues(&text);
        assert_eq!(is.len(), 1, "{value}: {is:?}");
        assert_eq!(is[0].field, "effective_from", "{value}");
        assert_eq!((is[0].line, is[0].column), (2, 18), "{value}");
    }
    // Inside [policy] it is a mistake, reported as such.
    let text = MINI.replace(
        "version = \"1\"\n",
        "version = \"1\"\neffective_from = \"2026-12-01T00:00:00Z\"\n",
    );
    let is = issues(&text);
    assert_eq!(is.len(), 1, "{is:?}");
    assert_eq!(is[0].field, "policy.effective_from");
    assert!(is[0].message.contains("top-level"), "{}", is[0].message);
    assert_eq!(is[0].line, 5);
}

#[test]
fn docs_list_every_reason_code_and_obligation() {
    let docs = std::fs::read_to_string(manifest("docs/policy.md")).unwrap();
    let rows: Vec<&str> = docs.lines().filter(|l| l.starts_with("| `")).collect();
    for code in crate::decide::reason::ALLOW
        .iter()
        .chain(crate::decide::reason::DENY)
        .chain(crate::decide::obligation::ALL)
    {
        assert!(
            rows.iter().any(|l| l.starts_with(&format!("| `{code}` |"))),
            "docs/policy.md has no table row for `{code}`"
        );
    }
    assert!(docs.contains("effective_from"));
    assert!(docs.contains("clearance policy test"));
}

#[test]
fn tests_file_sits_next_to_the_policy() {
    assert_eq!(
        testing::tests_path(Path::new("policies/example.toml")),
        Path::new("policies/example.tests.toml")
    );
    assert_eq!(
        testing::tests_path(Path::new("p")),
        Path::new("p.tests.toml")
    );
    assert!(testing::tests_path(&manifest("policies/example.toml")).is_file());
}
