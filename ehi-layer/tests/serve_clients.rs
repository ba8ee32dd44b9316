//! `ehi serve` driven by real third-party FHIR clients: Python `fhirpy` (with every
//! returned resource validated by `fhir.resources` R4B models) and JavaScript
//! `fhir-kit-client`, each a script under `tests/clients/`. A client whose runtime or
//! package is missing is skipped with a loud message (a failure when `CI` is set;
//! `cargo xtask test` installs them):
//!
//! ```text
//! pip install fhirpy==2.3.1 fhir.resources==8.3.0
//! npm install --prefix target/ehi-clients fhir-kit-client@2.0.3
//! export NODE_PATH=$PWD/target/ehi-clients/node_modules   # (or install under tests/clients)
//! ```

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::ensure;
use common::{TestNet, input, patient_bundle};
use ehi_layer::serve::{self, TokenKey};
use serde_json::{Value, json};

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";
const N_HR: usize = 23;

fn heart_rates() -> Value {
    let entries: Vec<Value> = (0..N_HR)
        .map(|i| {
            json!({"resource": {"resourceType": "Observation", "id": format!("hr-{i:03}"),
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{PATIENT}")},
                "effectiveDateTime": format!("2022-02-{:02}T08:00:00Z", 1 + i % 28),
                "valueQuantity": {"value": 60 + i, "unit": "/min",
                    "system": "http://unitsofmeasure.org", "code": "/min"}}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The entry point of the ESM-only `fhir-kit-client` package, looked for under
/// `NODE_PATH` (when set) and `tests/clients/node_modules`.
fn fhir_kit_client() -> Option<PathBuf> {
    let mut roots: Vec<PathBuf> = std::env::var("NODE_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    roots.push(clients_dir().join("node_modules"));
    roots
        .into_iter()
        .map(|root| root.join("fhir-kit-client/dist/index.js"))
        .find(|p| p.exists())
}

fn file_url() -> String {
    fhir_kit_client()
        .map(|p| format!("file://{}", p.display()))
        .unwrap_or_default()
}

/// Whether `program args…` runs and exits 0.
fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn skip(what: &str, install: &str) {
    invariant_test_support::missing_tool(what, install);
}

async fn run_client(program: &str, script: &str, args: Vec<String>) -> anyhow::Result<Value> {
    let mut command = Command::new(program);
    command
        .arg(clients_dir().join(script))
        .args(args)
        .env("FHIR_KIT_CLIENT", file_url());
    let out = tokio::task::spawn_blocking(move || command.output()).await??;
    ensure!(
        out.status.success(),
        "{script} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(last)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn third_party_clients() -> anyhow::Result<()> {
    let python = works("python3", &["-c", "import fhirpy, fhir.resources.R4B"]);
    let node = fhir_kit_client().is_some() && works("node", &["--version"]);
    if !python {
        skip(
            "python3 with fhirpy and fhir.resources",
            "pip install fhirpy==2.3.1 fhir.resources==8.3.0",
        );
    }
    if !node {
        skip(
            "node with fhir-kit-client",
            "npm install --prefix target/ehi-clients fhir-kit-client@2.0.3 and set NODE_PATH",
        );
    }
    if !python && !node {
        return Ok(());
    }

    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_vault(dir.path()).await?;
    vault
        .import(vec![
            input("patient.json", &patient_bundle()),
            input("hr.json", &heart_rates()),
        ])
        .await?;
    let vault = Arc::new(vault);
    let key = TokenKey::from_keystore(&keystore);
    let token = key.mint_patient(ehi_layer::time::now_ms() / 1000, 600)?;
    let server = serve::start(vault.clone(), key, "127.0.0.1:0".parse()?).await?;
    let args = || {
        vec![
            server.url().to_string(),
            token.clone(),
            PATIENT.to_string(),
            "http://loinc.org|8867-4".to_string(),
            N_HR.to_string(),
        ]
    };

    if python {
        let seen = run_client("python3", "fhirpy_client.py", args()).await?;
        assert_eq!(seen["matches"], N_HR);
        assert_eq!(
            seen["counted"], N_HR,
            "fhirpy's .count() under handling=lenient"
        );
        let created = seen["created"].as_str().unwrap_or_default();
        assert_eq!(vault.read("Observation", created).await?["status"], "final");
    }
    if node {
        let seen = run_client("node", "fhir_kit_client.mjs", args()).await?;
        assert_eq!(seen["matches"], N_HR);
        let created = seen["created"].as_str().unwrap_or_default();
        assert_eq!(vault.history("Observation", created).await?.len(), 2);
    }

    server.stop().await?;
    net.stop().await;
    Ok(())
}
