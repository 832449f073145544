//! PLACEHOLDER: being written.
use crate::event::{AccessRequest, OrgRecord, Outcome, UserRecord, Versions};
use crate::policy::CompiledPolicy;
/// Eligibility.
#[derive(Debug, Clone, Copy, Default)]
pub struct Eligibility<'a> {
    /// s
    pub subject: Option<&'a UserRecord>,
    /// o
    pub organization: Option<&'a OrgRecord>,
    /// stale
    pub data_stale: bool,
}
/// Verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// o
    pub outcome: Outcome,
    /// r
    pub reasons: Vec<&'static str>,
    /// r
    pub rule_ids: Vec<String>,
    /// l
    pub legal_basis: Vec<String>,
    /// o
    pub obligations: Vec<&'static str>,
    /// v
    pub versions: Versions,
}
/// reasons
pub mod reason {
    /// m
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    /// u
    pub const UNKNOWN_MODEL: &str = "unknown_model";
}
/// Decide.
pub fn decide(p: &CompiledPolicy, _e: &Eligibility<'_>, _r: &AccessRequest) -> Verdict {
    Verdict {
        outcome: Outcome::Deny,
        reasons: vec![],
        rule_ids: vec![],
        legal_basis: vec![],
        obligations: vec![],
        versions: Versions {
            policy_id: p.id.clone(),
            policy_version: p.version.clone(),
            data_version: p.data_version.clone(),
            subject: None,
            organization: None,
        },
    }
}
