//! Runs the suite's binary the way a spec author would, with none of the caller's
//! client settings (token, token file, CA) leaking in from the environment.

use std::process::{Command, Output};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_invariant-conformance");

/// Runs the binary with `args` and `env` set, and no other client settings from the
/// environment.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    for name in [
        "INVARIANT_TOKEN",
        "INVARIANT_TOKEN_FILE",
        "INVARIANT_CA_CERT",
    ] {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the binary")
}
