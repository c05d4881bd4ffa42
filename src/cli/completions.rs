//! `agentd completions SHELL` and `agentd man [DIR]`: shell completions and
//! man pages, generated at run time from the same clap types that parse the
//! command line, so they cannot drift from it and need nothing from the
//! source tree once the binary is installed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

pub const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  agentd completions bash > ~/.local/share/bash-completion/completions/agentd
  agentd completions zsh  > ~/.zfunc/_agentd        # with fpath+=~/.zfunc
  agentd completions fish > ~/.config/fish/completions/agentd.fish";

pub const MAN_EXAMPLES: &str = "\
Examples:
  agentd man | man -l -                        # read agentd(1) now
  agentd man /usr/local/share/man/man1         # install every page (as root)
  agentd man ~/.local/share/man/man1           # for one user";

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write agentd.1 and agentd-<command>.1 pages into this folder
    /// [default: print agentd.1 on stdout].
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    // clap_complete panics when its writer fails; render into memory and
    // write with a checked call so a closed pipe is a quiet exit.
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "agentd", &mut buf);
    std::io::stdout().write_all(&buf)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = &args.dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        std::io::stdout().write_all(&buf)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    for page in pages(cmd) {
        let path = page
            .generate_to(dir)
            .with_context(|| format!("writing a man page into {}", dir.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The page of `cmd` and of every visible subcommand below it, parents first
/// (clap_mangen names them `agentd-audit-verify.1` and so on).
fn pages(cmd: clap::Command) -> Vec<clap_mangen::Man> {
    let mut out = Vec::new();
    let mut todo = vec![cmd];
    while let Some(c) = todo.pop() {
        todo.extend(c.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        out.push(clap_mangen::Man::new(c));
    }
    out
}
