//! Policy tests: a TOML file of cases next to the policy (inputs and the
//! expected outcome and reasons), run against a [`CompiledPolicy`] by
//! [`run_tests`]. The format is documented in `docs/policy.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::{Spanned, Table, Value};

use super::{line_col, parse_error, CompiledPolicy, Issue, Issues, NationalityMode, PolicyError};
use crate::decide::{decide, reason, Eligibility, Verdict};
use crate::event::{AccessRequest, OrgRecord, Outcome, UserRecord};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTests {
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    request_defaults: Table,
    #[serde(default)]
    subjects: BTreeMap<String, Table>,
    #[serde(default)]
    organizations: BTreeMap<String, Table>,
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<crate::shape::TableOnly<RawCase>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    scenario: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    #[serde(default)]
    subject: Option<Value>,
    #[serde(default)]
    subject_with: Option<Table>,
    #[serde(default)]
    organization: Option<Value>,
    #[serde(default)]
    organization_with: Option<Table>,
    #[serde(default)]
    request: Table,
    #[serde(default)]
    nationality_mode: Option<String>,
    #[serde(default)]
    data_stale: bool,
    expect: String,
    reasons: Vec<String>,
    #[serde(default)]
    obligations: Option<Vec<String>>,
    #[serde(default)]
    rule_ids_include: Vec<String>,
    #[serde(default)]
    rule_ids: Option<Vec<String>>,
    #[serde(default)]
    legal_basis: Option<Vec<String>>,
    #[serde(default)]
    policy_id: Option<String>,
    #[serde(default)]
    policy_version: Option<String>,
    #[serde(default)]
    data_version: Option<String>,
    #[serde(default)]
    owners_followed: Option<Vec<String>>,
}

/// One compiled test case.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// Case name.
    pub name: String,
    /// The scenario it encodes, if any (`"6"`).
    pub scenario: Option<String>,
    /// Line of the case in the tests file.
    pub line: usize,
    /// The request.
    pub request: AccessRequest,
    /// The subject record, if any.
    pub subject: Option<UserRecord>,
    /// The organization record, if any.
    pub organization: Option<OrgRecord>,
    /// Nationality mode override.
    pub nationality_mode: Option<NationalityMode>,
    /// Whether the eligibility data is stale.
    pub data_stale: bool,
    /// Expected outcome.
    pub expect: Outcome,
    /// Expected reasons, exactly and in order.
    pub reasons: Vec<String>,
    /// Expected obligations, exactly, when given.
    pub obligations: Option<Vec<String>>,
    /// Strings `rule_ids` must contain.
    pub rule_ids_include: Vec<String>,
    /// Expected `rule_ids`, exactly and in order, when given.
    pub rule_ids: Option<Vec<String>>,
    /// Expected `legal_basis`, exactly and in order, when given.
    pub legal_basis: Option<Vec<String>>,
    /// Expected policy id, policy version and data version the decision
    /// records, when given.
    pub policy_id: Option<String>,
    /// See `policy_id`.
    pub policy_version: Option<String>,
    /// See `policy_id`.
    pub data_version: Option<String>,
    /// Expected owner records followed (`versions.owners`), as
    /// `"<id>@<version>"`, exactly and in order, when given.
    pub owners_followed: Option<Vec<String>>,
    /// Every organization fixture of the file, by record id: the owner
    /// records an ownership rule may follow.
    pub owner_organizations: BTreeMap<String, Arc<OrgRecord>>,
}

impl TestCase {
    /// Run the case: the verdict, and a failure message if it does not
    /// meet the expectations.
    pub fn run(&self, policy: &CompiledPolicy) -> (Verdict, Option<String>) {
        let overridden;
        let policy = match self.nationality_mode {
            Some(m) if m != policy.settings.nationality_mode => {
                overridden = policy.with_nationality_mode(m);
                &overridden
            }
            _ => policy,
        };
        let elig = Eligibility {
            subject: self.subject.as_ref(),
            organization: self.organization.as_ref(),
            data_stale: self.data_stale,
            owners: &self.owner_organizations,
        };
        let v = decide(policy, &elig, &self.request);
        let mut problems = Vec::new();
        if v.outcome != self.expect {
            problems.push(format!(
                "outcome: expected {}, got {}",
                self.expect.as_str(),
                v.outcome.as_str()
            ));
        }
        if v.reasons != self.reasons {
            problems.push(format!(
                "reasons: expected {:?}, got {:?}",
                self.reasons, v.reasons
            ));
        }
        if let Some(o) = &self.obligations {
            if v.obligations != *o {
                problems.push(format!(
                    "obligations: expected {o:?}, got {:?}",
                    v.obligations
                ));
            }
        }
        for r in &self.rule_ids_include {
            if !v.rule_ids.contains(r) {
                problems.push(format!("rule_ids: {r:?} missing from {:?}", v.rule_ids));
            }
        }
        let mut exactly = |what: &str, expected: &Option<Vec<String>>, got: Vec<String>| {
            if let Some(e) = expected {
                if *e != got {
                    problems.push(format!("{what}: expected {e:?}, got {got:?}"));
                }
            }
        };
        exactly("rule_ids", &self.rule_ids, v.rule_ids.clone());
        exactly("legal_basis", &self.legal_basis, v.legal_basis.clone());
        exactly(
            "owners_followed",
            &self.owners_followed,
            v.versions
                .owners
                .iter()
                .map(|o| format!("{}@{}", o.id, o.version))
                .collect(),
        );
        for (what, expected, got) in [
            ("policy_id", &self.policy_id, &v.versions.policy_id),
            (
                "policy_version",
                &self.policy_version,
                &v.versions.policy_version,
            ),
            ("data_version", &self.data_version, &v.versions.data_version),
        ] {
            if let Some(e) = expected {
                if e != got {
                    problems.push(format!("{what}: expected {e:?}, got {got:?}"));
                }
            }
        }
        let msg = (!problems.is_empty()).then(|| problems.join("; "));
        (v, msg)
    }
}

/// One failed case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    /// Case name.
    pub name: String,
    /// Line of the case in the tests file.
    pub line: usize,
    /// What differed.
    pub message: String,
}

/// The result of a policy tests file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestReport {
    /// The tests file.
    pub file: String,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// The scenarios covered by passing cases.
    pub scenarios_passed: Vec<String>,
    /// Every failure.
    pub failures: Vec<TestFailure>,
}

impl TestReport {
    /// Whether every case passed (and there was at least one).
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for x in &self.failures {
            writeln!(
                f,
                "FAIL {}:{}: {}: {}",
                self.file, x.line, x.name, x.message
            )?;
        }
        write!(
            f,
            "policy tests: {} passed, {} failed",
            self.passed, self.failed
        )
    }
}

/// Load a tests file into cases. Every invalid case is reported.
pub fn load_tests(text: &str, file: &str) -> Result<Vec<TestCase>, PolicyError> {
    let raw: RawTests = toml::from_str(text).map_err(|e| parse_error(text, file, &e))?;
    let mut issues = Vec::new();
    let mut cases = Vec::new();
    // Every organization fixture, by its record id, for ownership chains.
    let mut owner_fixtures: BTreeMap<String, Arc<OrgRecord>> = BTreeMap::new();
    for (name, table) in &raw.organizations {
        match Value::Table(table.clone()).try_into::<OrgRecord>() {
            Ok(o) => {
                owner_fixtures.insert(o.id.clone(), Arc::new(o));
            }
            Err(e) => issues.push(Issue {
                line: 0,
                column: 0,
                field: format!("organizations.{name}"),
                message: e.message().trim().to_string(),
            }),
        }
    }
    for (i, c) in raw.cases.iter().enumerate() {
        let (line, column) = line_col(text, c.span().start);
        let mut issue = |field: &str, message: String| {
            issues.push(Issue {
                line,
                column,
                field: format!("case[{i}].{field}"),
                message,
            });
        };
        let rc = c.get_ref();
        let subject: Option<UserRecord> = match record(
            rc.subject.as_ref(),
            rc.subject_with.as_ref(),
            &raw.subjects,
            "subjects",
        ) {
            Ok(s) => s,
            Err(m) => {
                issue("subject", m);
                None
            }
        };
        let organization: Option<OrgRecord> = match record(
            rc.organization.as_ref(),
            rc.organization_with.as_ref(),
            &raw.organizations,
            "organizations",
        ) {
            Ok(o) => o,
            Err(m) => {
                issue("organization", m);
                None
            }
        };
        let mut req = raw.request_defaults.clone();
        for (k, v) in &rc.request {
            req.insert(k.clone(), v.clone());
        }
        if !req.contains_key("request_id") {
            req.insert("request_id".into(), Value::String(format!("test-{i}")));
        }
        if !req.contains_key("subject_id") {
            let id = subject.as_ref().map_or("nobody", |s| s.id.as_str());
            req.insert("subject_id".into(), Value::String(id.to_string()));
        }
        let request = match Value::Table(req).try_into::<AccessRequest>() {
            Ok(r) => Some(r),
            Err(e) => {
                issue("request", e.message().trim().to_string());
                None
            }
        };
        let expect = match rc.expect.as_str() {
            "allow" => Some(Outcome::Allow),
            "deny" => Some(Outcome::Deny),
            other => {
                issue(
                    "expect",
                    format!("expected \"allow\" or \"deny\", not {other:?}"),
                );
                None
            }
        };
        for r in &rc.reasons {
            if reason::lookup(r).is_none() {
                issue("reasons", format!("unknown reason code {r:?}"));
            }
        }
        for o in rc.obligations.iter().flatten() {
            if !crate::vocab::obligation::ALL.contains(&o.as_str()) {
                issue("obligations", format!("unknown obligation {o:?}"));
            }
        }
        let nationality_mode = match rc.nationality_mode.as_deref() {
            None => None,
            Some(m) => match NationalityMode::parse(m) {
                Some(m) => Some(m),
                None => {
                    issue("nationality_mode", format!("unknown mode {m:?}"));
                    None
                }
            },
        };
        let scenario = rc.scenario.as_ref().map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        if let (Some(request), Some(expect)) = (request, expect) {
            let owner_organizations = owner_fixtures.clone();
            cases.push(TestCase {
                name: rc.name.clone(),
                scenario,
                line,
                request,
                subject,
                organization,
                nationality_mode,
                data_stale: rc.data_stale,
                expect,
                reasons: rc.reasons.clone(),
                obligations: rc.obligations.clone(),
                rule_ids_include: rc.rule_ids_include.clone(),
                rule_ids: rc.rule_ids.clone(),
                legal_basis: rc.legal_basis.clone(),
                policy_id: rc.policy_id.clone(),
                policy_version: rc.policy_version.clone(),
                data_version: rc.data_version.clone(),
                owners_followed: rc.owners_followed.clone(),
                owner_organizations,
            });
        }
    }
    if issues.is_empty() {
        Ok(cases)
    } else {
        Err(PolicyError::Invalid {
            file: file.to_string(),
            issues: Issues(issues),
        })
    }
}

/// A record given by fixture name or inline table, with optional
/// top-level overrides.
fn record<T: serde::de::DeserializeOwned>(
    given: Option<&Value>,
    with: Option<&Table>,
    fixtures: &BTreeMap<String, Table>,
    what: &str,
) -> Result<Option<T>, String> {
    let mut table = match given {
        None => {
            if with.is_some() {
                return Err("`*_with` needs a record to modify".into());
            }
            return Ok(None);
        }
        Some(Value::String(name)) => fixtures
            .get(name)
            .cloned()
            .ok_or_else(|| format!("unknown fixture {name:?} (define it in [{what}.{name}])"))?,
        Some(Value::Table(t)) => t.clone(),
        Some(_) => return Err("a fixture name or a table".into()),
    };
    for (k, v) in with.into_iter().flatten() {
        table.insert(k.clone(), v.clone());
    }
    Value::Table(table)
        .try_into::<T>()
        .map(Some)
        .map_err(|e| e.message().trim().to_string())
}

/// The tests file of a policy file: `<name>.tests.toml` next to it
/// (`policies/example.toml` → `policies/example.tests.toml`).
pub fn tests_path(policy_path: &Path) -> std::path::PathBuf {
    let stem = policy_path
        .file_stem()
        .map_or_else(|| "policy".into(), |s| s.to_string_lossy().into_owned());
    policy_path.with_file_name(format!("{stem}.tests.toml"))
}

/// Run the policy tests of `tests_path` against `policy`.
pub fn run_tests(policy: &CompiledPolicy, tests_path: &Path) -> Result<TestReport, PolicyError> {
    let file = tests_path.display().to_string();
    let text = std::fs::read_to_string(tests_path).map_err(|e| PolicyError::Io {
        path: file.clone(),
        message: e.to_string(),
    })?;
    run_tests_str(policy, &text, &file)
}

/// Run policy tests given as text (`file` names it in messages).
pub fn run_tests_str(
    policy: &CompiledPolicy,
    text: &str,
    file: &str,
) -> Result<TestReport, PolicyError> {
    let cases = load_tests(text, file)?;
    let mut report = TestReport {
        file: file.to_string(),
        ..TestReport::default()
    };
    for c in &cases {
        match c.run(policy).1 {
            None => {
                report.passed += 1;
                if let Some(s) = &c.scenario {
                    if !report.scenarios_passed.contains(s) {
                        report.scenarios_passed.push(s.clone());
                    }
                }
            }
            Some(message) => {
                report.failed += 1;
                report.failures.push(TestFailure {
                    name: c.name.clone(),
                    line: c.line,
                    message,
                });
            }
        }
    }
    Ok(report)
}
