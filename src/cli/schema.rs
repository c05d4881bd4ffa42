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

/// The schema files, as `(file name, pretty JSON with a trailing newline)`;
/// an error (never an empty schema) if one cannot be serialised.
pub fn generate() -> std::io::Result<[(&'static str, String); 2]> {
    let render = |s: schemars::Schema| -> std::io::Result<String> {
        let bytes = crate::fsutil::json_pretty(&s)?;
        String::from_utf8(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    };
    Ok([
        (
            "profile.schema.json",
            render(schemars::schema_for!(ProfileFile))?,
        ),
        (
            "request.schema.json",
            render(schemars::schema_for!(RequestFile))?,
        ),
    ])
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let [profile, request] = generate().context("generating the JSON Schemas")?;
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
