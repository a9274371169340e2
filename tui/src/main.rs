use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = indigo_tui::Cli::parse().settings()?;
    indigo_tui::run(settings).await
}
