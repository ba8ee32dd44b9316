//! FHIR decimals carry their precision in their text (`1.50` is not `1.5`), so every
//! number a patient imports must come back as the same JSON number token: through a
//! vault read, the export bundle and NDJSON files, `ehi serve` reads and searches, and
//! Bulk Data `$export`. Checked on hand-written edge cases and on every number of
//! three generated (Synthea) patients.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::TestNet;
use ehi_layer::serve::{self, TokenKey};
use ehi_layer::{Input, Vault, export};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Resource key ("Type/id") → every number token in it, in a stable order.
type Numbers = BTreeMap<String, Vec<String>>;

fn number_tokens(value: &Value, out: &mut Vec<String>) {
    match value {
        // With serde_json's `arbitrary_precision`, a parsed number displays as the exact
        // token it was parsed from.
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|i| number_tokens(i, out)),
        Value::Object(map) => map.values().for_each(|v| number_tokens(v, out)),
        Value::String(_) | Value::Bool(_) | Value::Null => {}
    }
}

fn add(numbers: &mut Numbers, resource: &Value) {
    let mut tokens = Vec::new();
    number_tokens(resource, &mut tokens);
    tokens.sort();
    if !tokens.is_empty() {
        numbers.insert(common::reference(resource), tokens);
    }
}

fn from_bundles<'a>(bundles: impl IntoIterator<Item = &'a Value>) -> Numbers {
    let mut numbers = Numbers::new();
    for bundle in bundles {
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            add(&mut numbers, &entry["resource"]);
        }
    }
    numbers
}

/// Parses JSON text the way a client would (keeping each number's token).
fn parse(text: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(text)?)
}

/// Compares two number tables and names the first difference.
fn same(what: &str, expected: &Numbers, got: &Numbers) -> anyhow::Result<()> {
    for (k, tokens) in expected {
        let Some(found) = got.get(k) else {
            bail!("{what}: {k} is missing (numbers {tokens:?})");
        };
        ensure!(
            found == tokens,
            "{what}: {k} numbers changed: sent {tokens:?}, got {found:?}"
        );
    }
    ensure!(
        got.len() == expected.len(),
        "{what}: {} resources with numbers, expected {}",
        got.len(),
        expected.len()
    );
    Ok(())
}

/// Checks every path out of the vault against `expected`.
async fn check_every_path(
    expected: &Numbers,
    vault: Arc<Vault>,
    key_source: &ehi_layer::Keystore,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    // Vault reads.
    let mut read = Numbers::new();
    for name in expected.keys() {
        let (t, id) = name.split_once('/').context("key")?;
        add(&mut read, &vault.read(t, id).await?);
    }
    same("vault read", expected, &read)?;

    // The export bundle, serialized and parsed back as a file reader would.
    let bundle = export::bundle(&vault, false).await?;
    let bundle = parse(&serde_json::to_string(&bundle)?)?;
    same("export bundle", expected, &from_bundles([&bundle]))?;

    // NDJSON files on disk.
    let files = export::ndjson(&vault, &dir.join("ndjson"), false).await?;
    let mut ndjson = Numbers::new();
    for file in files {
        for line in std::fs::read_to_string(&file.path)?.lines() {
            add(&mut ndjson, &parse(line)?);
        }
    }
    same("ndjson export", expected, &ndjson)?;

    // `ehi serve`: read each resource, search each type, and Bulk Data export.
    let key = TokenKey::from_keystore(key_source);
    let now = ehi_layer::time::now_ms() / 1000;
    let token = key.mint_patient(now, 3600)?;
    let server = serve::start(vault.clone(), key, "127.0.0.1:0".parse()?).await?;
    let http = Client::new();
    let base = server.url().to_string();
    let get = |url: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let resp = http.get(&url).bearer_auth(&token).send().await?;
            ensure!(resp.status() == StatusCode::OK, "{url}: {}", resp.status());
            parse(&resp.text().await?)
        }
    };
    let mut served = Numbers::new();
    for name in expected.keys() {
        add(&mut served, &get(format!("{base}/{name}")).await?);
    }
    same("serve read", expected, &served)?;

    let mut searched = Numbers::new();
    let types: std::collections::BTreeSet<&str> = expected
        .keys()
        .filter_map(|k| k.split_once('/').map(|(t, _)| t))
        .collect();
    for t in types {
        let mut next = Some(format!("{base}/{t}?_count=500"));
        while let Some(url) = next.take() {
            let page = get(url).await?;
            for entry in page["entry"].as_array().into_iter().flatten() {
                if entry["search"]["mode"] == "match" {
                    add(&mut searched, &entry["resource"]);
                }
            }
            next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_string);
        }
    }
    same("serve search", expected, &searched)?;

    let kickoff = http
        .get(format!("{base}/$export"))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .send()
        .await?;
    ensure!(
        kickoff.status() == StatusCode::ACCEPTED,
        "{}",
        kickoff.status()
    );
    let status_url = kickoff.headers()["content-location"].to_str()?.to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let manifest = loop {
        let resp = http.get(&status_url).bearer_auth(&token).send().await?;
        match resp.status() {
            StatusCode::ACCEPTED => tokio::time::sleep(Duration::from_millis(50)).await,
            StatusCode::OK => break parse(&resp.text().await?)?,
            other => bail!("export status {other}"),
        }
        ensure!(Instant::now() < deadline, "export did not finish");
    };
    let mut bulk = Numbers::new();
    for out in manifest["output"].as_array().context("output")? {
        let url = out["url"].as_str().context("url")?;
        let resp = http.get(url).bearer_auth(&token).send().await?;
        ensure!(resp.status() == StatusCode::OK, "{url}: {}", resp.status());
        for line in resp.text().await?.lines().filter(|l| !l.trim().is_empty()) {
            add(&mut bulk, &parse(line)?);
        }
    }
    same("bulk $export", expected, &bulk)?;
    server.stop().await?;
    Ok(())
}

/// The decimals that used to change on import, each in its own Observation (the last
/// two in exponent form: those keep their digits, and the exponent is written `e+2` /
/// `e-3`, see `EXPONENTS`).
const EDGE_CASES: [&str; 8] = [
    "462.45090472105085",
    "42.144646800000004",
    "-0.061101492592188444",
    "1.50",
    "12345678901234567890.1",
    "0.000",
    "1e2",
    "2.50E-3",
];

/// How the exponent forms above come back: same mantissa digits, same exponent value.
const EXPONENTS: [(&str, &str); 2] = [("1e2", "1e+2"), ("2.50E-3", "2.50e-3")];

fn edge_case_bundle() -> String {
    let mut entries = vec![
        r#"{"resource":{"resourceType":"Patient","id":"p1","name":[{"family":"Decimal"}]}}"#
            .to_string(),
    ];
    for (i, value) in EDGE_CASES.iter().enumerate() {
        entries.push(format!(
            r#"{{"resource":{{"resourceType":"Observation","id":"o{i}","status":"final",
            "code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}]}},
            "subject":{{"reference":"Patient/p1"}},
            "valueQuantity":{{"value":{value},"unit":"/min"}}}}}}"#
        ));
    }
    format!(
        r#"{{"resourceType":"Bundle","type":"collection","entry":[{}]}}"#,
        entries.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_case_decimals_come_back_as_sent() -> anyhow::Result<()> {
    let text = edge_case_bundle();
    let sent = parse(&text)?;
    let expected = from_bundles([&sent]);
    let all: Vec<&String> = expected.values().flatten().collect();
    for token in EDGE_CASES {
        let token = EXPONENTS
            .iter()
            .find(|(sent, _)| *sent == token)
            .map_or(token, |(_, kept)| kept);
        assert!(all.iter().any(|t| *t == token), "{token} parsed as {all:?}");
    }

    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_vault(&dir.path().join("v")).await?;
    vault
        .import(vec![Input::from_bytes("edge.json", text.into_bytes())])
        .await?;
    // Search still compares numerically with the value's implicit precision.
    let hits = vault.search("Observation", "value-quantity=1.5").await?;
    let ids: Vec<&str> = hits
        .resources
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["o3"], "1.50 is within 1.5's precision");
    let hits = vault.search("Observation", "value-quantity=gt1e19").await?;
    assert_eq!(hits.total, 1, "12345678901234567890.1 > 1e19");

    check_every_path(&expected, Arc::new(vault), &keystore, dir.path()).await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_synthea_number_comes_back_as_sent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(files) = common::synthea(3, 42, &dir.path().join("synthea"))? else {
        return Ok(());
    };
    let mut bundles = Vec::new();
    let mut inputs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        bundles.push(parse(&text)?);
        inputs.push(Input::from_bytes(
            file.display().to_string(),
            text.into_bytes(),
        ));
    }
    let expected = from_bundles(&bundles);
    let decimals = expected
        .values()
        .flatten()
        .filter(|t| t.contains('.'))
        .count();
    assert!(
        decimals > 100,
        "only {decimals} decimals in the Synthea data"
    );

    let net = TestNet::start(1, false).await?;
    let (keystore, _path, vault) = net.new_vault(&dir.path().join("v")).await?;
    vault
        .import_with(inputs, &common::household(), None)
        .await?;
    check_every_path(&expected, Arc::new(vault), &keystore, dir.path()).await?;
    net.stop().await;
    Ok(())
}

#[test]
fn a_json_value_keeps_number_tokens() -> anyhow::Result<()> {
    // The whole workspace builds serde_json with `arbitrary_precision`; without it this
    // fails and every test above would compare rounded numbers.
    let v: Value = serde_json::from_str(r#"{"a":1.50,"b":42.144646800000004}"#)?;
    assert_eq!(
        serde_json::to_string(&v)?,
        r#"{"a":1.50,"b":42.144646800000004}"#
    );
    assert_eq!(json!(1.5).to_string(), "1.5");
    Ok(())
}
