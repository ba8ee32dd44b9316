//! HTTPS with a real server process: clients trusting the right CA are served, others
//! are refused; SIGHUP swaps the certificate for new connections without dropping open
//! ones, and a broken replacement keeps the previous certificate.

use std::time::Duration;

use anyhow::Context;
use integration_tests::ServerProcess;
use invariant_test_support::TestPki;

fn client(pki: &TestPki) -> anyhow::Result<reqwest::Client> {
    Ok(pki.client_security(None).http_client()?)
}

async fn id_status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(format!("{url}/id"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn hangup(server: &ServerProcess) -> anyhow::Result<()> {
    let pid = server.pid().context("pid")?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_without_dropping_connections() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = TestPki::new(&dir.path().join("first"));
    let second = TestPki::new(&dir.path().join("second"));
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live)?;
    let (cert, key) = (live.join("server.pem"), live.join("server.key"));
    std::fs::copy(&first.cert, &cert)?;
    std::fs::copy(&first.key, &key)?;
    let server = ServerProcess::start(
        "storage-server",
        &dir.path().join("storage"),
        &[
            "--tls-cert",
            cert.to_str().context("path")?,
            "--tls-key",
            key.to_str().context("path")?,
        ],
    )?;
    let url = server.url().to_string();
    anyhow::ensure!(url.starts_with("https://"), "served over TLS: {url}");

    let old_client = client(&first)?;
    assert_eq!(id_status(&old_client, &url).await, Some(200));
    assert_eq!(
        id_status(&client(&second)?, &url).await,
        None,
        "a client trusting another CA is refused"
    );
    assert_eq!(
        id_status(&reqwest::Client::new(), &url).await,
        None,
        "a client trusting only the system roots is refused"
    );

    // A broken replacement is refused and the current certificate stays.
    std::fs::write(&cert, "not a certificate")?;
    hangup(&server)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(id_status(&client(&first)?, &url).await, Some(200));

    std::fs::copy(&second.cert, &cert)?;
    std::fs::copy(&second.key, &key)?;
    hangup(&server)?;
    let new_client = client(&second)?;
    let mut reloaded = false;
    for _ in 0..50 {
        if id_status(&new_client, &url).await == Some(200) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reloaded,
        "new connections get the new certificate:\n{}",
        server.logs()
    );
    assert_eq!(
        id_status(&client(&first)?, &url).await,
        None,
        "new connections no longer get the old certificate"
    );
    // The connection opened before the reload is still served.
    assert_eq!(id_status(&old_client, &url).await, Some(200));
    assert!(server.logs().contains("TLS certificate reloaded"));
    assert!(server.logs().contains("not reloaded"));
    Ok(())
}
