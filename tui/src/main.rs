use clap::Parser;

fn main() -> anyhow::Result<()> {
    indigo_tui::run(indigo_tui::Cli::parse())
}
