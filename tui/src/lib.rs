//! The Indigo operator console as a library, run by the `indigo-tui` binary.

#[derive(Debug, clap::Parser)]
#[command(
    name = "indigo-tui",
    version,
    about = "Indigo operator console: watch the fleet of tenants and act on them (change plan, suspend, resume).",
    long_about = "Indigo operator console: watch the fleet of tenants and act on them (change plan, suspend, resume).\n\n\
                  It talks only to the control plane's admin API, with your token and its role:\n\
                  a viewer token gives a read-only console."
)]
pub struct Cli {
    /// Admin API base URL
    #[arg(long, env = "INDIGO_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// Bearer token for the admin API
    #[arg(long, env = "INDIGO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub fn run(_cli: Cli) -> anyhow::Result<()> {
    anyhow::bail!("the console's views are not built yet (issue 8); meanwhile use `indigo tenant list`")
}
