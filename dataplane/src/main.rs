use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    indigo_dataplane::run(indigo_dataplane::Cli::parse()).await
}
