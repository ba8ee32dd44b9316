//! `ehi serve` and `ehi token` as processes: the server prints `listening on
//! http://<addr>`, tokens minted offline by `ehi token` are accepted by it (they are
//! keyed to the keystore, not stored), and scopes are enforced.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use common::{PASSPHRASE, TestNet, patient_bundle};
use reqwest::StatusCode;
use serde_json::Value;

fn ehi(home: &Path, broker: &str) -> Command {
    common::cli::command(home, broker, PASSPHRASE)
}

fn run(home: &Path, broker: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = ehi(home, broker).args(args).output()?;
    ensure!(
        out.status.success(),
        "ehi {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Kills the child (by its own handle) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `ehi serve …` (killed when the returned child is dropped) and returns its
/// base url, read from the first line it prints.
async fn start_serve(mut serve: Command) -> anyhow::Result<(Child, String)> {
    let mut child = Child(serve.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?);
    let stdout = child.0.stdout.take().context("stdout")?;
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await???;
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("first line: {line:?}"))?
        .to_string();
    Ok((child, base))
}

/// With the `ehi` command: init, import the patient, a new app `app_name`, a grant of
/// `scope` to it, and `ehi token <grant>`. Returns the grant id and the token.
async fn grant_and_token(
    home: &Path,
    broker: &str,
    app_name: &str,
    scope: &str,
) -> anyhow::Result<(String, String)> {
    let (h, b) = (home.to_path_buf(), broker.to_string());
    let (app_name, scope) = (app_name.to_string(), scope.to_string());
    let bundle = home.join("patient.json");
    std::fs::write(&bundle, serde_json::to_vec(&patient_bundle())?)?;
    let bundle = bundle.to_str().context("path")?.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        run(&h, &b, &["init"])?;
        run(&h, &b, &["import", &bundle])?;
        let app = h.join("app.json");
        let app = app.to_str().context("path")?;
        let card = run(&h, &b, &["app", "new", &app_name, "--app-keystore", app])?;
        let card_file = h.join("card.json");
        std::fs::write(&card_file, card)?;
        let card_file = card_file.to_str().context("path")?;
        run(
            &h,
            &b,
            &["grant", card_file, "--scopes", &scope, "--purpose", "TREAT"],
        )?;
        let grants: Value = serde_json::from_str(&run(&h, &b, &["grants"])?)?;
        let grant = grants[0]["id"].as_str().context("grant id")?.to_string();
        let token = run(&h, &b, &["token", &grant, "--expires", "10m"])?;
        Ok((grant, token))
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ehi_serve_and_ehi_token() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    let h = home.path().to_path_buf();
    let b = broker.clone();
    let bundle = home.path().join("patient.json");
    std::fs::write(&bundle, serde_json::to_vec(&patient_bundle())?)?;
    let bundle = bundle.to_str().context("path")?.to_string();
    let (patient, app) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        run(&h, &b, &["init"])?;
        run(&h, &b, &["import", &bundle])?;
        let patient = run(&h, &b, &["token", "--patient", "--expires", "10m"])?;
        let app = run(
            &h,
            &b,
            &[
                "token",
                "--scopes",
                "patient/Observation.rs",
                "--expires",
                "1h",
            ],
        )?;
        Ok((patient, app))
    })
    .await??;
    ensure!(patient.starts_with("ehi1.") && app.starts_with("ehi1."));

    let mut serve = ehi(home.path(), &broker);
    serve.args(["serve", "--listen", "127.0.0.1:0"]);
    let (child, base) = start_serve(serve).await?;
    ensure!(base.starts_with("http://127.0.0.1:"), "{base}");

    let http = reqwest::Client::new();
    let cap: Value = http
        .get(format!("{base}/metadata"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(cap["resourceType"], "CapabilityStatement");
    let resp = http
        .get(format!("{base}/Observation"))
        .bearer_auth(&patient)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await?;
    assert_eq!(page["total"], 2);
    let resp = http
        .get(format!("{base}/Observation"))
        .bearer_auth(&app)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(format!("{base}/Condition"))
        .bearer_auth(&app)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http.get(format!("{base}/Condition")).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    drop(child);
    net.stop().await;
    Ok(())
}

/// `ehi token <grant>` (a token bound to the grant), `ehi serve --client`, and
/// `ehi token revoke` seen by the running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ehi_token_for_a_grant_and_its_revocation() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    let (grant, token) = grant_and_token(home.path(), &broker, "PillPal", "medications").await?;
    ensure!(token.starts_with("ehi1."), "{token}");

    // An unknown grant for --client is refused before serving.
    let out = ehi(home.path(), &broker)
        .args(["serve", "--listen", "127.0.0.1:0", "--client", "c=nope"])
        .output()?;
    ensure!(!out.status.success(), "--client with an unknown grant");

    let mut serve = ehi(home.path(), &broker);
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--client"])
        .arg(format!("pillpal-client-secretish={grant}"));
    let (child, base) = start_serve(serve).await?;
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            Ok::<_, anyhow::Error>(
                http.get(format!("{base}/{path}"))
                    .bearer_auth(&token)
                    .send()
                    .await?
                    .status(),
            )
        }
    };
    assert_eq!(status("MedicationRequest").await?, StatusCode::OK);
    assert_eq!(status("Observation").await?, StatusCode::FORBIDDEN);

    // Revoke this one token (given whole) and watch the server refuse it.
    let (h, b, t) = (home.path().to_path_buf(), broker.clone(), token.clone());
    tokio::task::spawn_blocking(move || run(&h, &b, &["token", "revoke", &t])).await??;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status("MedicationRequest").await? != StatusCode::UNAUTHORIZED {
        ensure!(
            std::time::Instant::now() < deadline,
            "the revoked token is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(child);
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clinical_grant_token_and_exit_on_removal() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    // `ehi grant … --scopes clinical` then `ehi token <grant>`.
    let (_grant, token) = grant_and_token(home.path(), &broker, "ClinicView", "clinical").await?;
    ensure!(token.starts_with("ehi1."), "{token}");

    let mut serve = ehi(home.path(), &broker);
    serve.args(["serve", "--listen", "127.0.0.1:0", "--exit-on-removal"]);
    let (mut child, base) = start_serve(serve).await?;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{base}/Observation"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let bundle: Value = resp.json().await?;
    assert_eq!(bundle["total"], 2, "{bundle}");
    let resp = http
        .get(format!("{base}/Patient"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // `ehi delete --yes`: the server exits.
    let (h, b) = (home.path().to_path_buf(), broker.clone());
    tokio::task::spawn_blocking(move || run(&h, &b, &["delete", "--yes"])).await??;
    let deleted = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        ensure!(
            deleted.elapsed() < Duration::from_secs(5),
            "ehi serve --exit-on-removal still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(status.success(), "exit status {status}");
    net.stop().await;
    Ok(())
}
