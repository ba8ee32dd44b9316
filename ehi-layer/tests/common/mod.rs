//! Test harness: a real local invariant network started in-process (broker, three
//! storage servers, slots, distributor — each on 127.0.0.1:0 over its own temporary
//! directory), keystores with cheap Argon2 parameters (and new vaults, optionally with
//! the patient bundle imported), clients of the network's distributor and slots server,
//! device pairing through an invite code, hand-written FHIR bundles and Synthea
//! generation; [`cli`] runs the `ehi` binary.

#![allow(dead_code)]

pub mod cli;

use ehi_layer::share;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use ehi_layer::device::{self, Invite};
use ehi_layer::{Input, KdfParams, Keystore, Network, Vault};
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::{BrokerClient, DistributorClient, SlotsClient};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A running local network.
pub struct TestNet {
    pub broker_url: String,
    pub dirs: Vec<(String, TempDir)>,
    servers: Vec<Server>,
}

impl TestNet {
    /// Broker, `storages` storage servers, slots and (optionally) a distributor, all
    /// registered with the broker before this returns.
    pub async fn start(storages: usize, with_distributor: bool) -> anyhow::Result<TestNet> {
        let mut dirs = Vec::new();
        let mut servers = Vec::new();

        let broker_dir = tempfile::tempdir()?;
        let ctx =
            ServerContext::prepare(ServerOptions::ephemeral(Role::Broker, broker_dir.path()))?;
        let broker = broker_server::start(&ctx, broker_server::BrokerConfig::default()).await?;
        let broker_url = broker.url().to_string();
        servers.push(broker);
        dirs.push(("broker".to_string(), broker_dir));

        let options = |role: Role, dir: &Path| {
            let mut options = ServerOptions::ephemeral(role, dir);
            options.broker = Some(broker_url.clone());
            options
        };
        for i in 0..storages {
            let dir = tempfile::tempdir()?;
            let ctx = ServerContext::prepare(options(Role::Storage, dir.path()))?;
            // Every blob in its own file: tests tamper with blob files.
            let config = storage_server::StorageConfig {
                pack: storage_server::pack::PackConfig {
                    max_blob: 0,
                    ..Default::default()
                },
                ..Default::default()
            };
            servers.push(storage_server::start(&ctx, config).await?);
            dirs.push((format!("storage-{i}"), dir));
        }
        let dir = tempfile::tempdir()?;
        let ctx = ServerContext::prepare(options(Role::Slots, dir.path()))?;
        servers.push(slots_server::start(&ctx, Default::default()).await?);
        dirs.push(("slots".to_string(), dir));
        if with_distributor {
            let dir = tempfile::tempdir()?;
            let ctx = ServerContext::prepare(options(Role::Distributor, dir.path()))?;
            let config = distributor::DistributorConfig {
                health_interval: Duration::from_millis(500),
                ..Default::default()
            };
            servers.push(distributor::start(&ctx, config).await?);
            dirs.push(("distributor".to_string(), dir));
        }

        let net = TestNet {
            broker_url,
            dirs,
            servers,
        };
        net.wait_registered("storage", storages).await?;
        net.wait_registered("slots", 1).await?;
        if with_distributor {
            net.wait_registered("distribute", 1).await?;
        }
        Ok(net)
    }

    /// Adds a names server (registered with the broker before this returns).
    pub async fn start_names(&mut self) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut options = ServerOptions::ephemeral(Role::Names, dir.path());
        options.broker = Some(self.broker_url.clone());
        let ctx = ServerContext::prepare(options)?;
        self.servers
            .push(names_server::start(&ctx, Default::default()).await?);
        self.dirs.push(("names".to_string(), dir));
        self.wait_registered("names", 1).await
    }

    async fn wait_registered(&self, kind: &str, count: usize) -> anyhow::Result<()> {
        let broker = BrokerClient::new(&self.broker_url)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if broker.registered(kind).await?.len() >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{kind} servers did not register");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A network handle for a vault (a "device").
    pub async fn connect(&self, keystore: Option<&Keystore>) -> anyhow::Result<Network> {
        Ok(Network::connect(&self.broker_url, keystore.map(Keystore::slots_server)).await?)
    }

    /// A fresh keystore saved under `dir`, and a new vault for it.
    pub async fn new_vault(&self, dir: &Path) -> anyhow::Result<(Keystore, PathBuf, Vault)> {
        let net = self.connect(None).await?;
        let keystore = Keystore::generate(net.slots_server())?;
        let path = dir.join("keystore.json");
        keystore.save(&path, PASSPHRASE, KdfParams::insecure_fast())?;
        let vault = Vault::create(net, &keystore).await?;
        Ok((keystore, path, vault))
    }

    /// A fresh keystore and vault as [`TestNet::new_vault`] makes them, with
    /// [`patient_bundle`] imported.
    pub async fn new_patient_vault(
        &self,
        dir: &Path,
    ) -> anyhow::Result<(Keystore, PathBuf, Vault)> {
        let (keystore, path, vault) = self.new_vault(dir).await?;
        vault
            .import(vec![input("patient.json", &patient_bundle())])
            .await?;
        Ok((keystore, path, vault))
    }

    /// Every file under every server's data directory.
    pub fn data_files(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for (name, dir) in &self.dirs {
            walk(dir.path(), &mut |p| {
                out.push((name.clone(), p.to_path_buf()))
            });
        }
        out
    }

    /// Every data file of every server with its bytes. The servers keep running, so a
    /// temporary file listed may be renamed before it is read: such a file is skipped
    /// and a second listing picks up what it became.
    pub fn data_file_contents(&self) -> anyhow::Result<Vec<(String, PathBuf, Vec<u8>)>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for _ in 0..2 {
            for (server, path) in self.data_files() {
                if seen.contains(&path) {
                    continue;
                }
                let data = match std::fs::read(&path) {
                    Ok(data) => data,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                seen.insert(path.clone());
                out.push((server, path, data));
            }
        }
        Ok(out)
    }

    /// Blob files of the storage servers (`blobs/ab/cd/<rest>`, not temp files).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (name, dir) in &self.dirs {
            if !name.starts_with("storage") {
                continue;
            }
            let blobs = dir.path().join("blobs");
            walk(&blobs, &mut |p| {
                let is_blob = p
                    .strip_prefix(&blobs)
                    .map(|rel| rel.components().count() == 3 && !rel.starts_with("tmp"))
                    .unwrap_or(false);
                if is_blob {
                    out.push(p.to_path_buf());
                }
            });
        }
        out.sort();
        out
    }

    /// Stops every server.
    pub async fn stop(self) {
        for server in self.servers.into_iter().rev() {
            let _ = server.stop().await;
        }
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, f);
        } else {
            f(&path);
        }
    }
}

/// The passphrase of test keystores.
pub const PASSPHRASE: &str = "test passphrase, not secret";

/// A client of the network's (first) distributor.
pub async fn distributor(net: &TestNet) -> anyhow::Result<DistributorClient> {
    let broker = BrokerClient::new(&net.broker_url)?;
    let ids = broker.registered("distribute").await?;
    let url = broker
        .resolve(&ids[0])
        .await?
        .ok_or_else(|| anyhow::anyhow!("distributor"))?;
    Ok(DistributorClient::new(&url)?)
}

/// A client of the network's slots server.
pub async fn slots_client(net: &TestNet) -> anyhow::Result<SlotsClient> {
    let broker = BrokerClient::new(&net.broker_url)?;
    let ids = broker.registered("slots").await?;
    let url = broker
        .resolve(&ids[0])
        .await?
        .ok_or_else(|| anyhow::anyhow!("slots"))?;
    Ok(SlotsClient::new(&url)?)
}

/// Pairs a new device with `vault` through an invite code; returns its keystore and the
/// device id the inviter recorded.
pub async fn pair(
    net: &TestNet,
    vault: &Arc<Vault>,
    keystore: &Keystore,
) -> anyhow::Result<(Keystore, String)> {
    let invite = Invite::create(vault, Duration::from_secs(60)).await?;
    let code = invite.code();
    let inviter = {
        let vault = vault.clone();
        let keystore = keystore.clone();
        tokio::spawn(async move { invite.complete(&vault, &keystore).await })
    };
    let parsed = device::InviteCode::parse(&code)?;
    let joiner_net = Network::connect(&net.broker_url, Some(parsed.slots_server())).await?;
    let joined = device::join(&joiner_net, &code).await?;
    let info = inviter.await??;
    Ok((joined, info.id))
}

/// Import options for a vault that keeps several patients' records (a household's),
/// as the generated-patient tests need.
pub fn household() -> ehi_layer::ImportOptions {
    ehi_layer::ImportOptions {
        allow_other_patients: true,
        ..ehi_layer::ImportOptions::default()
    }
}

/// An input from a JSON value.
pub fn input(name: &str, value: &Value) -> Input {
    Input::from_bytes(name, serde_json::to_vec(value).unwrap_or_default())
}

/// A hand-written patient as a transaction bundle with `urn:uuid:` references: a
/// Patient, an Encounter, two Observations, a Condition, a MedicationRequest, an
/// Immunization, an AllergyIntolerance, a Claim and a Practitioner.
pub fn patient_bundle() -> Value {
    let p = "urn:uuid:0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";
    let e = "urn:uuid:7d1f3a9c-2b4e-4c6d-8e0f-1a2b3c4d5e6f";
    let dr = "urn:uuid:3c9e1d7b-5a2f-4e8c-b6d4-0f1e2d3c4b5a";
    json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": p, "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient",
                "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-77120934"},
                               {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-41-8823"}],
                "name": [{"family": "Quixotebaum", "given": ["Zelphina", "Marguerite"]}],
                "gender": "female", "birthDate": "1961-08-29",
                "telecom": [{"system": "phone", "value": "555-301-7789"}],
                "address": [{"line": ["4431 Wintergreen Hollow"], "city": "Tallahassee", "postalCode": "32301"}]}},
            {"fullUrl": dr, "request": {"method": "POST", "url": "Practitioner"},
             "resource": {"resourceType": "Practitioner",
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9988776655"}],
                "name": [{"family": "Oyelaran-Whitfield", "given": ["Bartholomew"]}]}},
            {"fullUrl": e, "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": p},
                "participant": [{"individual": {"reference": dr}}],
                "period": {"start": "2019-03-14T09:26:53-04:00", "end": "2019-03-14T09:58:17-04:00"}}},
            {"fullUrl": "urn:uuid:a1b2c3d4-0001-4a5b-8c6d-7e8f9a0b1c2d", "request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}]},
                "subject": {"reference": p}, "encounter": {"reference": e},
                "effectiveDateTime": "2019-03-14T09:31:07-04:00",
                "valueQuantity": {"value": 163.7, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}}},
            {"fullUrl": "urn:uuid:a1b2c3d4-0002-4a5b-8c6d-7e8f9a0b1c2d", "request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}]},
                "subject": {"reference": p}, "encounter": {"reference": e},
                "effectiveDateTime": "2021-11-02T14:05:44-04:00",
                "valueQuantity": {"value": 71.3, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}},
            {"fullUrl": "urn:uuid:a1b2c3d4-0003-4a5b-8c6d-7e8f9a0b1c2d", "request": {"method": "POST", "url": "Condition"},
             "resource": {"resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}]},
                "subject": {"reference": p}, "onsetDateTime": "2017-05-23T08:00:00-04:00"}},
            {"fullUrl": "urn:uuid:a1b2c3d4-0004-4a5b-8c6d-7e8f9a0b1c2d", "request": {"method": "POST", "url": "MedicationRequest"},
             "resource": {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975"}]},
                "subject": {"reference": p}, "requester": {"reference": dr}, "authoredOn": "2017-06-01T10:00:00-04:00"}},
            {"fullUrl": "urn:uuid:a1b2c3d4-0005-4a5b-8c6d-7e8f9a0b1c2d", "request": {"method": "POST", "url": "Immunization"},
             "resource": {"resourceType": "Immunization", "status": "completed",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
                "patient": {"reference": p}, "occurrenceDateTime": "2020-10-15T11:12:13-04:00"}},
            {"fullUrl": "urn:uuid:a1b2c3d4-0006-4a5b-8c6d-7e8f9a0b1c2d", "request": {"method": "POST", "url": "AllergyIntolerance"},
             "resource": {"resourceType": "AllergyIntolerance",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "300916003", "display": "Latex allergy"}]},
                "patient": {"reference": p}, "recordedDate": "2015-02-17T13:45:00-05:00"}},
            {"fullUrl": "urn:uuid:a1b2c3d4-0007-4a5b-8c6d-7e8f9a0b1c2d", "request": {"method": "POST", "url": "Claim"},
             "resource": {"resourceType": "Claim", "status": "active", "use": "claim",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
                "patient": {"reference": p}, "created": "2019-03-14T09:58:17-04:00",
                "provider": {"reference": dr}, "priority": {"coding": [{"code": "normal"}]},
                "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "Blue Kestrel Mutual"}}],
                "total": {"value": 412.55, "currency": "USD"}}}
        ]
    })
}

/// Where synthea writes, or `None` (with a loud message; a failure when `CI` is set)
/// when it is not installed.
pub fn synthea(patients: u32, seed: u64, dir: &Path) -> anyhow::Result<Option<Vec<PathBuf>>> {
    Ok(invariant_test_support::synthea(patients, seed, dir)?)
}

/// Every string a test may look for in server data: names, identifiers, codes, dates,
/// ids, resource types and free text — those of at least `min_len` characters.
pub fn needles(value: &Value, min_len: usize) -> Vec<String> {
    let mut out = Vec::new();
    collect_strings(value, &mut out);
    let ids: Vec<String> = out
        .iter()
        .filter_map(|s| s.strip_prefix("urn:uuid:").map(str::to_string))
        .collect();
    out.extend(ids);
    out.retain(|s| s.len() >= min_len && !s.starts_with("http") && !s.starts_with("urn:"));
    out.sort();
    out.dedup();
    out
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        Value::Number(n) => out.push(n.to_string()),
        Value::Bool(_) | Value::Null => {}
    }
}

/// The export as comparable data: the Bundle without its timestamp.
pub fn without_timestamp(mut bundle: Value) -> Value {
    if let Some(map) = bundle.as_object_mut() {
        map.remove("timestamp");
    }
    bundle
}

/// Grants `scopes` of `vault` to a new app named `app` for `ms` milliseconds.
pub async fn grant_to(
    vault: &ehi_layer::Vault,
    app: &str,
    scopes: &[ehi_layer::Scope],
    access: ehi_layer::Access,
    ms: u64,
) -> anyhow::Result<ehi_layer::GrantInfo> {
    let app = ehi_layer::AppKeystore::generate(app)?;
    let (info, _) = share::grant(
        vault,
        ehi_layer::grant::GrantRequest {
            app: app.card().verify()?,
            scopes: scopes.to_vec(),
            access,
            duration_ms: ms,
            purpose: "TREAT".into(),
        },
    )
    .await?;
    Ok(info)
}

/// `GET url` with `token`: the status and the JSON body (`Null` when not JSON).
pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let resp = http.get(url).bearer_auth(token).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// `Type/id` of a resource (`?` for a missing part).
pub fn reference(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap_or("?"),
        resource["id"].as_str().unwrap_or("?")
    )
}
