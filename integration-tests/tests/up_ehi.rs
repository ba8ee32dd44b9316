//! The `ehi` command against `invariant up --tls` with token checks on: a vault
//! created, a bundle imported and searched over HTTPS; without the CA or without a
//! token, `ehi` is refused and says why.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use integration_tests::bin_path;
use integration_tests::up::{CLIENT_ENV, Up, UpMode};

const PASSPHRASE: &str = "correct horse battery staple";

/// `ehi` with its own `HOME`, the network's broker and a passphrase; no client
/// settings inherited.
fn ehi(home: &Path, broker: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(bin_path("ehi")?);
    for var in CLIENT_ENV {
        command.env_remove(var);
    }
    command
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("EHI_KEYSTORE")
        .env("INVARIANT_BROKER", broker)
        .env("EHI_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null());
    Ok(command)
}

fn run(mut command: Command, args: &[impl AsRef<OsStr>]) -> anyhow::Result<Output> {
    Ok(command.args(args).output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn bundle() -> serde_json::Value {
    let patient = "urn:uuid:5f0c2a1e-3b4d-4c5e-8f6a-7b8c9d0e1f2a";
    serde_json::json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": patient, "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient",
                "name": [{"family": "Tlsworth", "given": ["Ada"]}],
                "gender": "female", "birthDate": "1970-01-02"}},
            {"fullUrl": "urn:uuid:5f0c2a1e-0001-4c5e-8f6a-7b8c9d0e1f2a",
             "request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}]},
                "subject": {"reference": patient},
                "effectiveDateTime": "2020-01-02T03:04:05Z",
                "valueQuantity": {"value": 170.1, "unit": "cm"}}},
            {"fullUrl": "urn:uuid:5f0c2a1e-0002-4c5e-8f6a-7b8c9d0e1f2a",
             "request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}]},
                "subject": {"reference": patient},
                "effectiveDateTime": "2021-01-02T03:04:05Z",
                "valueQuantity": {"value": 65.2, "unit": "kg"}}}
        ]
    })
}

#[test]
fn ehi_imports_and_searches_over_https_with_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = Up::start(
        dir.path(),
        UpMode {
            tls: true,
            open: false,
        },
    )?;
    net.wait_registered(3, &["slots", "distribute"])?;
    let broker = net.broker()?.to_string();
    let ca = net.ca_cert();

    // Without the CA: refused with a certificate error.
    let home = dir.path().join("untrusting");
    let mut command = ehi(&home, &broker)?;
    command.env("INVARIANT_TOKEN_FILE", net.operator_token_file());
    let out = run(command, &["init"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("certificate"),
        "{}",
        text(&out.stderr)
    );

    // Without a token: the first write is refused with 401.
    let home = dir.path().join("anonymous");
    let mut command = ehi(&home, &broker)?;
    command
        .env("INVARIANT_CA_CERT", &ca)
        .env("INVARIANT_CONFIG_DIR", dir.path().join("empty-config"));
    let out = run(command, &["init"])?;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));

    // With the CA and the operator token: init, import, search.
    let home = dir.path().join("patient");
    let with_token = || -> anyhow::Result<Command> {
        let mut command = ehi(&home, &broker)?;
        command
            .env("INVARIANT_CA_CERT", &ca)
            .env("INVARIANT_TOKEN_FILE", net.operator_token_file());
        Ok(command)
    };
    let out = run(with_token()?, &["init"])?;
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, serde_json::to_vec(&bundle())?)?;
    // The import finds the token `up` left for this broker by itself.
    let mut command = ehi(&home, &broker)?;
    command
        .env("INVARIANT_CA_CERT", &ca)
        .env("INVARIANT_CONFIG_DIR", net.config_dir());
    let out = run(command, &[OsStr::new("import"), file.as_os_str()])?;
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("3 created"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        with_token()?,
        &["search", "Observation", "code=http://loinc.org|8302-2"],
    )?;
    assert!(out.status.success(), "search: {}", text(&out.stderr));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(
        found["entry"][0]["resource"]["valueQuantity"]["value"], 170.1,
        "{found}"
    );
    Ok(())
}
