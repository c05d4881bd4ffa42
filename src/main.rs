//! The `agentd` binary: parse arguments, run one command, map the outcome to
//! an exit code. Errors are printed once, here, with their whole chain.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The local-clone sandbox helper (issue 17) must start while the
    // process is single-threaded: before anything else runs.
    if let Some(code) = agentd::clone_sandbox_main_if_invoked() {
        return code;
    }
    // So must the rootless egress namespace helper (issue 19).
    if let Some(code) = agentd::egress_helper_if_asked() {
        return code;
    }
    agentd::main()
}
