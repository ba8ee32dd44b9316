//! Server logs written to a file (as `invariant up` writes `<data-dir>/logs/*.log`) are
//! plain text: no ANSI colour codes when stderr is not a terminal.

use integration_tests::ServerProcess;

#[test]
fn logs_to_a_file_have_no_colour_codes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = ServerProcess::start("storage-server", &dir.path().join("storage"), &[])?;
    server.stop()?;
    let logs = server.logs();
    assert!(logs.contains("server started"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in the log file:\n{logs:?}"
    );
    Ok(())
}
