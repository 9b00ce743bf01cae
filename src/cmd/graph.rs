//! `moec graph SPEC [--format text|dot|json]`: prints the graph IR.

use super::SpecArgs;
use clap::ValueEnum;
use moec_compiler::print;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub fn main(args: Args) -> Result<(), String> {
    let g = super::load(&args.spec)?.graph;
    print!(
        "{}",
        match args.format {
            Format::Text => print::text(&g),
            Format::Dot => print::dot(&g),
            Format::Json => print::json(&g) + "\n",
        }
    );
    Ok(())
}
