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
    #[error("{file}: key `usage_prices.{meter}`: no such meter; meters are: {known}")]
    UnknownMeter { file: String, meter: String, known: String },
}

pub fn load_plans(path: &Path) -> Result<PlanCatalog, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.into(), source })?;
    let catalog = PlanCatalog::parse(&path.display().to_string(), &text)?;
    let meters: Vec<&str> = crate::billing::METERS.iter().map(|m| m.event_name).collect();
    if let Some(unknown) = catalog.priced_meters().find(|meter| !meters.contains(meter)) {
        return Err(PolicyError::UnknownMeter {
            file: path.display().to_string(),
            meter: unknown.to_owned(),
            known: meters.join(", "),
        });
    }
    Ok(catalog)
}

pub fn load_costs(path: &Path) -> Result<CostModel, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.into(), source })?;
    Ok(CostModel::parse(&path.display().to_string(), &text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_price_for_a_meter_that_does_not_exist_is_refused() {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml")).unwrap();
        let path = std::env::temp_dir().join(format!("indigo-plans-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, shipped.replace("indigo_ai_credits = \"0\"", "indigo_ai_tokens = \"0\"")).unwrap();
        let error = load_plans(&path).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            error.ends_with(
                "key `usage_prices.indigo_ai_tokens`: no such meter; meters are: indigo_api_calls, indigo_ai_credits"
            ),
            "{error}"
        );
    }
}
