//! `ehi serve` against a real in-process network: the FHIR REST API driven over HTTP
//! with reqwest (capability, search with paging, read/vread/history, create/update with
//! If-Match, delete, $everything, Bulk Data export, tokens and scopes, error statuses).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::{TestNet, input, patient_bundle};
use ehi_layer::serve::{self, TokenKey};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";
const HR: &str = "http://loinc.org|8867-4";
const N_HR: usize = 37;

/// 37 heart-rate Observations of the patient, one a day from 2022-01-01.
fn heart_rates() -> Value {
    let entries: Vec<Value> = (0..N_HR)
        .map(|i| {
            json!({"resource": {"resourceType": "Observation", "id": format!("hr-{i:03}"),
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{PATIENT}")},
                "effectiveDateTime": format!("2022-01-{:02}T08:00:00Z", 1 + i % 28),
                "valueQuantity": {"value": 60 + i, "unit": "/min"}}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

struct Api {
    http: Client,
    base: String,
    token: String,
}

impl Api {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/{path}", self.base)
        }
    }

    async fn get_with(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.get_with(path, Some(&self.token)).await
    }
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find_map(|l| {
        (l["relation"] == relation)
            .then(|| l["url"].as_str().map(str::to_string))
            .flatten()
    })
}

fn assert_outcome(body: &Value, what: &str) {
    assert_eq!(body["resourceType"], "OperationOutcome", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fhir_rest_api() -> anyhow::Result<()> {
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
    let now = ehi_layer::time::now_ms() / 1000;
    let server = serve::start(vault.clone(), key.clone(), "127.0.0.1:0".parse()?).await?;
    let api = Api {
        http: Client::new(),
        base: server.url().to_string(),
        token: key.mint_patient(now, 3600)?,
    };

    // --- Capability: generated from the ehi-search table.
    let (status, cap) = api.get_with("metadata", None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cap["fhirVersion"], "4.0.1");
    let resources = cap["rest"][0]["resource"].as_array().context("resources")?;
    assert_eq!(resources.len(), ehi_search::resource_types().count());
    let obs = resources
        .iter()
        .find(|r| r["type"] == "Observation")
        .context("Observation")?;
    let names: Vec<&str> = obs["searchParam"]
        .as_array()
        .context("params")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let expected: Vec<&str> = ehi_search::supported_parameters("Observation")
        .context("table")?
        .iter()
        .map(|p| p.code)
        .collect();
    assert_eq!(names, expected);

    // --- DNS rebinding: a Host naming another server is refused before anything runs.
    let port = server.local_addr().port();
    let foreign = api
        .http
        .get(format!("{}/metadata", api.base))
        .header("host", format!("rebound.example:{port}"))
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::BAD_REQUEST);
    let body: Value = foreign.json().await?;
    assert_outcome(&body, "DNS rebinding");
    let local = api
        .http
        .get(format!("{}/metadata", api.base))
        .header("host", format!("localhost:{port}"))
        .send()
        .await?;
    assert_eq!(local.status(), StatusCode::OK);

    // --- 401s.
    let (status, body) = api.get_with("Observation", None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_outcome(&body, "no token");
    let (status, _) = api
        .get_with("Observation", Some("ehi1.bogus.token"))
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let expired = key.mint_patient(now - 100, 10)?;
    let (status, body) = api.get_with("Observation", Some(&expired)).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.to_string().contains("expired"), "{body}");
    let foreign = TokenKey::from_bytes([9; 32]).mint_patient(now, 3600)?;
    let (status, _) = api.get_with("Observation", Some(&foreign)).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // --- Search with paging to the end: every id exactly once, equal to the vault's.
    let (_, all) = vault
        .search_ids("Observation", &format!("code={HR}"))
        .await?;
    assert_eq!(all.len(), N_HR);
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "Observation?code={}&_count=10",
        HR.replace('|', "%7C")
    ));
    let mut pages = 0;
    while let Some(url) = next {
        let (status, page) = api.get(&url).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["type"], "searchset");
        assert_eq!(page["total"], N_HR);
        seen.extend(ids(&page, "match"));
        next = link(&page, "next");
        pages += 1;
        ensure!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, all, "pages equal the vault's own search");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), N_HR);
    // A middle page equals the vault's search for the same parameters; previous link.
    let q = format!("code={HR}&_sort=-date&_count=5&_offset=5");
    let hits = vault.search("Observation", &q).await?;
    let (_, page) = api
        .get(&format!(
            "Observation?code={}&_sort=-date&_count=5&_offset=5",
            HR.replace('|', "%7C")
        ))
        .await?;
    let vault_ids: Vec<String> = hits
        .resources
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids(&page, "match"), vault_ids);
    assert!(link(&page, "previous").is_some());
    // Date range.
    let (_, page) = api
        .get("Observation?date=ge2022-01-10&date=lt2022-01-12&_count=100")
        .await?;
    let (total, _) = vault
        .search_ids("Observation", "date=ge2022-01-10&date=lt2022-01-12")
        .await?;
    assert_eq!(page["total"], total);
    assert!(total > 0);
    // POST _search with a form body.
    let resp = api
        .http
        .post(api.url("Observation/_search"))
        .bearer_auth(&api.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={}&_count=3", HR.replace('|', "%7C")))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await?;
    assert_eq!(page["total"], N_HR);
    assert_eq!(ids(&page, "match").len(), 3);
    // _summary=count, _elements, _include, _revinclude.
    let (_, page) = api.get("Observation?_summary=count").await?;
    assert_eq!(page["total"], N_HR + 2);
    assert!(page.get("entry").is_none());
    let (_, page) = api.get("Observation?_elements=status&_count=1").await?;
    let first = &page["entry"][0]["resource"];
    assert_eq!(first["status"], "final");
    // Mandatory elements (Observation.code is 1..1) stay; the others go.
    assert!(first.get("code").is_some());
    assert!(first.get("subject").is_none() && first.get("valueQuantity").is_none());
    assert_eq!(first["meta"]["tag"][0]["code"], "SUBSETTED");
    let (_, page) = api
        .get("Observation?_id=hr-000&_include=Observation:subject")
        .await?;
    assert_eq!(ids(&page, "match"), ["hr-000"]);
    assert_eq!(ids(&page, "include"), [PATIENT]);
    let (_, page) = api
        .get(&format!(
            "Patient?_id={PATIENT}&_revinclude=Observation:subject"
        ))
        .await?;
    assert_eq!(ids(&page, "include").len(), N_HR + 2);

    // --- Error statuses.
    let (status, body) = api.get("Observation?nonsense=1").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "unknown parameter");
    let (status, _) = api.get("Observation?_count=ten").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = api.get("NotAType/1").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&body, "unknown type");
    let (status, body) = api.get("Observation/does-not-exist").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&body, "unknown id");
    let (status, _) = api.get("Observation/hr-000/_history/99").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get("Observation?_format=xml").await?;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    let resp = api
        .http
        .get(api.url("Patient"))
        .bearer_auth(&api.token)
        .header("accept", "application/fhir+xml")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    assert_outcome(&resp.json().await?, "xml");

    // --- Read, create, update with If-Match, vread, history, delete.
    let resp = api
        .http
        .get(api.url(&format!("Patient/{PATIENT}")))
        .bearer_auth(&api.token)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    let patient: Value = resp.json().await?;
    assert_eq!(patient["name"][0]["family"], "Quixotebaum");

    let new_obs = json!({"resourceType": "Observation", "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": format!("Patient/{PATIENT}")},
        "effectiveDateTime": "2024-02-02T10:00:00Z"});
    let resp = api
        .http
        .post(api.url("Observation"))
        .bearer_auth(&api.token)
        .header("content-type", "application/fhir+json")
        .body(new_obs.to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str()?.to_string();
    let created: Value = resp.json().await?;
    let id = created["id"].as_str().context("id")?.to_string();
    assert!(
        location.ends_with(&format!("Observation/{id}/_history/1")),
        "{location}"
    );
    assert_eq!(
        vault.read("Observation", &id).await?["status"],
        "preliminary"
    );

    // Read through the server (cached), then update: the read sees the new version.
    let (_, cached) = api.get(&format!("Observation/{id}")).await?;
    assert_eq!(cached["status"], "preliminary");
    let mut changed = created.clone();
    changed["status"] = json!("final");
    let put = |body: &Value, etag: &str| {
        api.http
            .put(api.url(&format!("Observation/{id}")))
            .bearer_auth(&api.token)
            .header("content-type", "application/fhir+json")
            .header("if-match", etag)
            .body(body.to_string())
            .send()
    };
    let resp = put(&changed, "W/\"1\"").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "W/\"2\"");
    changed["status"] = json!("amended");
    let resp = put(&changed, "W/\"1\"").await?;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_outcome(&resp.json().await?, "412");
    assert_eq!(vault.read("Observation", &id).await?["status"], "final");
    let (_, current) = api.get(&format!("Observation/{id}")).await?;
    assert_eq!(current["status"], "final");
    assert_eq!(current["meta"]["versionId"], "2");
    let (status, v1) = api.get(&format!("Observation/{id}/_history/1")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["status"], "preliminary");
    let (_, hist) = api.get(&format!("Observation/{id}/_history")).await?;
    assert_eq!(hist["type"], "history");
    assert_eq!(hist["total"], 2);
    let (_, type_hist) = api.get("Observation/_history?_count=500").await?;
    assert_eq!(type_hist["total"], N_HR + 2 + 2);
    // Invalid resources.
    let resp = api
        .http
        .post(api.url("Observation"))
        .bearer_auth(&api.token)
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType": "Observation", "status": null}"#)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let resp = api
        .http
        .post(api.url("Observation"))
        .bearer_auth(&api.token)
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType": "Patient"}"#)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = api
        .http
        .post(api.url("Observation"))
        .bearer_auth(&api.token)
        .header("content-type", "application/fhir+json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Delete → 410.
    let resp = api
        .http
        .delete(api.url(&format!("Observation/{id}")))
        .bearer_auth(&api.token)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, body) = api.get(&format!("Observation/{id}")).await?;
    assert_eq!(status, StatusCode::GONE);
    assert_outcome(&body, "410");

    // --- $everything.
    let (status, everything) = api
        .get(&format!("Patient/{PATIENT}/$everything?_count=1000"))
        .await?;
    assert_eq!(status, StatusCode::OK);
    let compartment = vault.patient_compartment(PATIENT).await?;
    // The compartment, and the stored resources it references (the Practitioner).
    let stored: HashSet<String> = vault.list().await.into_iter().collect();
    let mut expected: HashSet<String> = compartment.iter().map(common::reference).collect();
    let text = serde_json::to_string(&compartment)?;
    for reference in stored.iter() {
        if text.contains(&format!("\"reference\":\"{reference}\"")) {
            expected.insert(reference.clone());
        }
    }
    assert!(
        expected.len() > compartment.len(),
        "the compartment references others"
    );
    assert_eq!(everything["total"], expected.len());
    assert!(ids(&everything, "match").contains(&PATIENT.to_string()));

    // --- Scopes.
    let app = key.mint_app("openid patient/Observation.rs", now, 600)?;
    let (status, page) = api.get_with("Observation?_count=2", Some(&app)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], N_HR + 2);
    let (status, body) = api
        .get_with(&format!("Patient/{PATIENT}"), Some(&app))
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_outcome(&body, "403");
    let (status, _) = api.get_with("Condition", Some(&app)).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let resp = api
        .http
        .post(api.url("Observation"))
        .bearer_auth(&app)
        .header("content-type", "application/fhir+json")
        .body(new_obs.to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (_, everything) = api
        .get_with(
            &format!("Patient/{PATIENT}/$everything?_count=1000"),
            Some(&app),
        )
        .await?;
    assert!(
        everything["entry"]
            .as_array()
            .context("entries")?
            .iter()
            .all(|e| e["resource"]["resourceType"] == "Observation")
    );

    // --- Bulk Data export.
    let (status, _) = api.get("$export").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no Prefer: respond-async");
    let manifest = bulk_export(&api, "$export", &api.token).await?;
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for r in vault.list().await {
        if let Some((t, _)) = r.split_once('/') {
            *expected.entry(t.to_string()).or_default() += 1;
        }
    }
    let counts = download(&api, &manifest, &api.token).await?;
    assert_eq!(counts, expected);
    let url = manifest["output"][0]["url"].as_str().context("url")?;
    let (status, _) = api.get_with(url, None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Patient-level export with an app token: only what its scopes allow.
    let manifest = bulk_export(&api, "Patient/$export?_type=Observation", &app).await?;
    let counts = download(&api, &manifest, &app).await?;
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(counts["Observation"], N_HR + 2);
    let resp = api
        .http
        .get(api.url("$export?_type=Patient"))
        .bearer_auth(&app)
        .header("prefer", "respond-async")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    server.stop().await?;
    net.stop().await;
    Ok(())
}

async fn bulk_export(api: &Api, kickoff: &str, token: &str) -> anyhow::Result<Value> {
    let resp = api
        .http
        .get(api.url(kickoff))
        .bearer_auth(token)
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::ACCEPTED,
        "kick-off: {}",
        resp.status()
    );
    let status_url = resp.headers()["content-location"].to_str()?.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = api.http.get(&status_url).bearer_auth(token).send().await?;
        match resp.status() {
            StatusCode::ACCEPTED => {
                // Patient-level jobs count patients, system-level ones resources.
                let unit = if kickoff.starts_with("Patient") || kickoff.starts_with("Group") {
                    " patients"
                } else {
                    " resources"
                };
                let progress = resp
                    .headers()
                    .get("x-progress")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                ensure!(
                    progress.ends_with(unit),
                    "X-Progress {progress:?} for {kickoff}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            StatusCode::OK => {
                let manifest: Value = resp.json().await?;
                assert_eq!(manifest["requiresAccessToken"], true);
                assert!(manifest["transactionTime"].is_string());
                assert!(
                    manifest["request"]
                        .as_str()
                        .is_some_and(|r| r.contains("$export"))
                );
                assert_eq!(manifest["error"], json!([]));
                return Ok(manifest);
            }
            other => bail!("export status {other}"),
        }
        ensure!(Instant::now() < deadline, "export did not finish");
    }
}

async fn download(
    api: &Api,
    manifest: &Value,
    token: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for out in manifest["output"].as_array().context("output")? {
        let url = out["url"].as_str().context("url")?;
        let resp = api.http.get(url).bearer_auth(token).send().await?;
        ensure!(resp.status() == StatusCode::OK, "{url}: {}", resp.status());
        let text = resp.text().await?;
        let t = out["type"].as_str().context("type")?;
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let r: Value = serde_json::from_str(line)?;
            ensure!(r["resourceType"] == t);
            n += 1;
        }
        assert_eq!(out["count"], n);
        counts.insert(t.to_string(), n);
    }
    Ok(counts)
}
