//! `inbound generate man|completions DIR`: the man pages (one per subcommand, clap_mangen) and
//! shell completions (bash, zsh, fish; clap_complete), generated from the same definitions the
//! parser uses, for packagers and the image.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Subcommand};

#[derive(Subcommand)]
pub enum GenerateCommand {
    /// Write inbound.1 and inbound-SUBCOMMAND.1 man pages into DIR.
    Man { dir: PathBuf },
    /// Write inbound.bash, _inbound (zsh) and inbound.fish into DIR.
    Completions { dir: PathBuf },
}

pub fn run(command: GenerateCommand) -> Result<ExitCode> {
    let cli = super::Cli::command();
    match command {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        GenerateCommand::Completions { dir } => {
            use clap_complete::Shell;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut cli = cli;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cli, "inbound", &dir).with_context(
                    || format!("writing {shell} completions into {}", dir.display()),
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
