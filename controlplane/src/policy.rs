//! Loading the policy files under `policies/`.

use std::path::{Path, PathBuf};

use indigo_core::plan::{PlanCatalog, PlanError};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read plans file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] PlanError),
}

pub fn load_plans(path: &Path) -> Result<PlanCatalog, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.into(), source })?;
    Ok(PlanCatalog::parse(&path.display().to_string(), &text)?)
}
