//! `agentd schema`: the JSON Schemas of the file formats, generated from the
//! wire structs so they cannot drift (a test compares them with `schemas/`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::desired::wire::{ProfileFile, RequestFile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which schema to print.
    #[arg(value_enum, default_value = "profile")]
    which: Which,
    /// Write both schemas into this folder instead (`agentd schema --write schemas`).
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Which {
    Profile,
    Request,
}

/// The schema files, as `(file name, pretty JSON with a trailing newline)`.
pub fn generate() -> [(&'static str, String); 2] {
    let render = |s: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&s).unwrap_or_default();
        text.push('\n');
        text
    };
    [
        (
            "profile.schema.json",
            render(schemars::schema_for!(ProfileFile)),
        ),
        (
            "request.schema.json",
            render(schemars::schema_for!(RequestFile)),
        ),
    ]
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let [profile, request] = generate();
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in [profile, request] {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            writeln!(std::io::stdout(), "wrote {}", path.display())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let text = match args.which {
        Which::Profile => profile.1,
        Which::Request => request.1,
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
