//! The `agentd` binary: parse arguments, run one command, map the outcome to
//! an exit code. Errors are printed once, here, with their whole chain.

use std::process::ExitCode;

fn main() -> ExitCode {
    agentd::cli::main()
}
