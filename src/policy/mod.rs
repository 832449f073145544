//! PLACEHOLDER: being written.
/// A compiled policy.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// Policy id.
    pub id: String,
    /// Policy version.
    pub version: String,
    /// Data (country list) version.
    pub data_version: String,
}
/// err
#[derive(Debug, thiserror::Error)]
#[error("policy")]
pub struct PolicyError;
impl CompiledPolicy {
    /// ex
    pub fn example() -> Self {
        Self {
            id: "x".into(),
            version: "1".into(),
            data_version: "1".into(),
        }
    }
    /// load
    pub fn load_file(_p: &std::path::Path) -> Result<Self, PolicyError> {
        Ok(Self::example())
    }
}
