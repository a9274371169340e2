use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    indigo_dataplane::run(indigo_dataplane::Cli::parse()).await
}
