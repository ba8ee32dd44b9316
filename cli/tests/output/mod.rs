//! Reading what an `invariant` run printed, for the tests that run the binary.

use std::process::Output;

/// Bytes as (lossy) text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The trimmed stdout of a run that must have succeeded.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "invariant failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout).trim().to_string()
}
