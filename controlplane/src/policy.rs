//! Loading the policy files under `policies/`.

use std::path::{Path, PathBuf};

use indigo_core::cost::{CostError, CostModel};
use indigo_core::plan::{PlanCatalog, PlanError};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] PlanError),
    #[error(transparent)]
    InvalidCosts(#[from] CostError),
}

pub fn load_plans(path: &Path) -> Result<PlanCatalog, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.into(), source })?;
    Ok(PlanCatalog::parse(&path.display().to_string(), &text)?)
}

pub fn load_costs(path: &Path) -> Result<CostModel, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.into(), source })?;
    Ok(CostModel::parse(&path.display().to_string(), &text)?)
}
