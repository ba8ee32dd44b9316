//! A failed `invariant download` takes back what it wrote: the folder it created is
//! removed, and a folder that was empty before is left empty.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use integration_tests::ServerProcess;

fn invariant(config_dir: &Path, broker: &str, args: &[&str]) -> anyhow::Result<Output> {
    integration_tests::up::invariant_cli(config_dir, broker, args)
}

#[test]
fn a_failed_download_leaves_no_folder_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let broker = ServerProcess::start("broker-server", &dir.path().join("broker"), &[])?;
    let _storage = ServerProcess::start(
        "storage-server",
        &dir.path().join("storage"),
        &["--broker", broker.url()],
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = invariant(&config, broker.url(), &["status"])?;
        if String::from_utf8_lossy(&status.stdout)
            .lines()
            .any(|l| l.starts_with("storage"))
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "storage did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A tree nobody stored.
    let link = format!("{{\"address\":\"{}\"}}", "ab".repeat(32));

    let created = dir.path().join("new-folder");
    let out = invariant(
        &config,
        broker.url(),
        &["download", &link, created.to_str().unwrap_or_default()],
    )?;
    assert!(!out.status.success());
    assert!(
        !created.exists(),
        "the failed download left {}",
        created.display()
    );

    let empty = dir.path().join("empty-folder");
    std::fs::create_dir(&empty)?;
    let out = invariant(
        &config,
        broker.url(),
        &["download", &link, empty.to_str().unwrap_or_default()],
    )?;
    assert!(!out.status.success());
    assert!(empty.is_dir(), "the folder the user made is kept");
    assert_eq!(std::fs::read_dir(&empty)?.count(), 0);
    Ok(())
}
