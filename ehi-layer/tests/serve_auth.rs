//! `ehi serve` authorization and accounting: tokens bound to grants (refused once the
//! grant is revoked or expired, or the token itself revoked), every request in the
//! audit log (batched), the SMART authorization-code flow with PKCE, `_summary`,
//! `_typeFilter`, and the decrypted-resource cache (warm-up, invalidation).

mod common;

use ehi_layer::share;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::{TestNet, input};
use ehi_layer::serve::{self, Claims, ServeOptions, TokenKey};
use ehi_layer::{Access, GrantInfo, Scope, Vault};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";
const DAY_MS: u64 = 86_400_000;

async fn grant(vault: &Vault, app: &str, scopes: &[Scope], ms: u64) -> anyhow::Result<GrantInfo> {
    common::grant_to(vault, app, scopes, Access::Read, ms).await
}

async fn get(http: &Client, url: &str, token: &str) -> anyhow::Result<(StatusCode, Value)> {
    common::get_json(http, url, token).await
}

fn now_s() -> u64 {
    ehi_layer::time::now_ms() / 1000
}

type Setup = (
    TestNet,
    tempfile::TempDir,
    ehi_layer::Keystore,
    TokenKey,
    Arc<Vault>,
);

async fn setup() -> anyhow::Result<Setup> {
    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let key = TokenKey::from_keystore(&keystore);
    Ok((net, dir, keystore, key, Arc::new(vault)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grant_tokens_are_bound_to_their_grant_and_revocable() -> anyhow::Result<()> {
    let (net, dir, _keystore, key, vault) = setup().await?;
    let meds = grant(&vault, "MedTracker", &[Scope::Medications], DAY_MS).await?;
    let short = grant(&vault, "ShortLived", &[Scope::Medications], 3_000).await?;
    let revoked_file = dir.path().join("keystore.json.revoked-tokens");
    let server = serve::start_with(
        vault.clone(),
        key.clone(),
        "127.0.0.1:0".parse()?,
        ServeOptions {
            revoked_tokens: Some(revoked_file.clone()),
            ..ServeOptions::default()
        },
    )
    .await?;
    let base = server.url().to_string();
    let http = Client::new();

    // A token bound to the medications grant: its scopes are the grant's.
    let (token, claims) = key.mint_grant(&meds, None, now_s(), 3600)?;
    assert_eq!(claims.grant.as_deref(), Some(meds.id.as_str()));
    assert!(
        claims.scope.contains("patient/MedicationRequest.rs"),
        "{}",
        claims.scope
    );
    assert!(!claims.scope.contains("Observation"), "{}", claims.scope);
    assert!(claims.exp <= meds.expires_ms / 1000);
    let (status, bundle) = get(&http, &format!("{base}/MedicationRequest"), &token).await?;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(bundle["total"], 1);
    // A type outside the grant: 403 with an OperationOutcome.
    let (status, body) = get(&http, &format!("{base}/Observation"), &token).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["resourceType"], "OperationOutcome");
    // Narrowing: asking for Observation through a medications grant gives nothing.
    assert!(
        key.mint_grant(&meds, Some("patient/Observation.rs"), now_s(), 60)
            .is_err()
    );
    // Narrowing keeps only the requested permissions: read without search.
    let (read_only, read_claims) = key.mint_grant(&meds, Some("patient/*.r"), now_s(), 60)?;
    assert!(
        read_claims.scope.split(' ').all(|s| s.ends_with(".r")),
        "{}",
        read_claims.scope
    );
    assert!(read_claims.scope.contains("patient/MedicationRequest.r"));
    let (status, _) = get(&http, &format!("{base}/MedicationRequest"), &read_only).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "search was not requested");
    // The patient's own token sees everything.
    let patient = key.mint_patient(now_s(), 3600)?;
    let (status, _) = get(&http, &format!("{base}/Observation"), &patient).await?;
    assert_eq!(status, StatusCode::OK);

    // One token revoked by id (the revocation file `ehi token revoke` writes).
    let (other, _) = key.mint_grant(&meds, None, now_s(), 3600)?;
    serve::token::revoke_token(&revoked_file, &claims.jti)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&http, &format!("{base}/MedicationRequest"), &token).await?;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["resourceType"], "OperationOutcome");
            assert!(body.to_string().contains("revoked"), "{body}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the revoked token is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = get(&http, &format!("{base}/MedicationRequest"), &other).await?;
    assert_eq!(
        status,
        StatusCode::OK,
        "another token of the grant still works"
    );

    // An expired grant: its tokens are refused even if the token itself has not
    // expired (a token minted by hand beyond the grant's expiry).
    let (short_token, mut short_claims) = key.mint_grant(&short, None, now_s(), 3600)?;
    let (status, _) = get(&http, &format!("{base}/MedicationRequest"), &short_token).await?;
    assert_eq!(status, StatusCode::OK);
    short_claims.exp = now_s() + 3600;
    short_claims.jti = "0123456789abcdef0123456789abcdef".into();
    let long: String = key.mint(&short_claims)?;
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (status, body) = get(&http, &format!("{base}/MedicationRequest"), &long).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.to_string().contains("expired"), "{body}");
    assert!(key.mint_grant(&short, None, now_s(), 60).is_err());

    // The grant revoked: after the server's next refresh its tokens get 401.
    share::revoke(&vault, &meds.id, false).await?;
    server.refresh().await?;
    let (status, body) = get(&http, &format!("{base}/MedicationRequest"), &other).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.to_string().contains("revoked"), "{body}");
    // A forged grant claim (not a grant of this vault) is refused too.
    let forged = Claims {
        grant: Some("00".repeat(16)),
        jti: "fedcba9876543210fedcba9876543210".into(),
        ..claims.clone()
    };
    let (status, _) = get(
        &http,
        &format!("{base}/MedicationRequest"),
        &key.mint(&forged)?,
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    server.stop().await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_audited_in_batches() -> anyhow::Result<()> {
    let (net, _dir, _keystore, key, vault) = setup().await?;
    let meds = grant(&vault, "MedTracker", &[Scope::Medications], DAY_MS).await?;
    let server = serve::start_with(
        vault.clone(),
        key.clone(),
        "127.0.0.1:0".parse()?,
        ServeOptions {
            audit_flush_every: Duration::from_secs(3600),
            audit_batch: 10,
            ..ServeOptions::default()
        },
    )
    .await?;
    let before = vault.audit_entries().await?.len();
    let base = server.url().to_string();
    let http = Client::new();
    let patient = key.mint_patient(now_s(), 3600)?;
    let (app, _) = key.mint_grant(&meds, None, now_s(), 3600)?;
    // 10 patient reads, 10 app searches, 3 app refusals (403), 2 without a token.
    for _ in 0..10 {
        let (s, _) = get(&http, &format!("{base}/Patient/{PATIENT}"), &patient).await?;
        assert_eq!(s, StatusCode::OK);
    }
    for _ in 0..10 {
        let (s, _) = get(
            &http,
            &format!("{base}/MedicationRequest?status=active"),
            &app,
        )
        .await?;
        assert_eq!(s, StatusCode::OK);
    }
    for _ in 0..3 {
        let (s, _) = get(&http, &format!("{base}/Observation"), &app).await?;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    for _ in 0..2 {
        let s = http.get(format!("{base}/Patient")).send().await?.status();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Batches of 10 are flushed without waiting for the (hour-long) timer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.audit_pending() >= 10 {
        ensure!(Instant::now() < deadline, "no batch flushed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.flush_audit().await?;
    assert_eq!(server.audit_pending(), 0);
    let entries = vault.audit_entries().await?;
    assert_eq!(entries.len(), before + 25, "one entry per request");
    let events: Vec<Value> = entries[before..]
        .iter()
        .map(|e| e.event())
        .collect::<Result<_, _>>()?;
    let agent = |e: &Value| e["agent"][0]["who"].clone();
    let patients = events
        .iter()
        .filter(|e| agent(e)["identifier"]["system"] == "urn:ehi-layer:ed25519")
        .count();
    assert_eq!(patients, 10);
    let apps: Vec<&Value> = events
        .iter()
        .filter(|e| agent(e)["display"] == "MedTracker")
        .collect();
    assert_eq!(apps.len(), 13);
    for e in &apps {
        assert_eq!(agent(e)["identifier"]["value"], meds.id.as_str());
        assert_eq!(
            e["agent"][1]["requestor"], false,
            "the device is not the requestor"
        );
    }
    let refused = apps.iter().filter(|e| e["outcome"] == "8").count();
    assert_eq!(refused, 3);
    let searches = apps
        .iter()
        .filter(|e| e["subtype"][0]["code"] == "search")
        .filter(|e| e["entity"][0]["what"]["display"] == "/MedicationRequest?status=active")
        .count();
    assert_eq!(searches, 10);
    let anonymous = events
        .iter()
        .filter(|e| agent(e)["display"] == "unauthenticated client" && e["outcome"] == "8")
        .count();
    assert_eq!(anonymous, 2);
    assert!(events.iter().all(|e| e["recorded"].is_string()));
    assert_eq!(vault.audit_verify().await?, before + 25);

    // Stopping flushes what is left.
    let (s, _) = get(&http, &format!("{base}/Patient/{PATIENT}"), &patient).await?;
    assert_eq!(s, StatusCode::OK);
    server.stop().await?;
    assert_eq!(vault.audit_verify().await?, before + 26);
    net.stop().await;
    Ok(())
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn query_of(location: &str) -> Vec<(String, String)> {
    let query = location.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smart_authorization_code_flow_with_pkce() -> anyhow::Result<()> {
    let (net, _dir, _keystore, key, vault) = setup().await?;
    let meds = grant(&vault, "MedTracker", &[Scope::Medications], DAY_MS).await?;
    let client_id = "medtracker-7f3a9c2e41b84d0e";
    let options = ServeOptions {
        clients: vec![(client_id.to_string(), meds.id.clone())],
        ..ServeOptions::default()
    };
    let server = serve::start_with(
        vault.clone(),
        key.clone(),
        "127.0.0.1:0".parse()?,
        options.clone(),
    )
    .await?;
    let base = server.url().to_string();
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    let config: Value = http
        .get(format!("{base}/.well-known/smart-configuration"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        config["authorization_endpoint"],
        format!("{base}/authorize")
    );
    assert_eq!(config["token_endpoint"], format!("{base}/token"));
    assert_eq!(config["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        config["grant_types_supported"],
        json!(["authorization_code"])
    );
    assert!(
        config["capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("permission-v2")))
    );
    assert!(
        config["scopes_supported"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );

    let redirect = "http://127.0.0.1:9/callback";
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-extra-entropy";
    let challenge = serve::oauth::s256(verifier);
    // RFC 7636 appendix B test vector.
    assert_eq!(
        serve::oauth::s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let authorize = |base: &str, challenge: &str, method: &str| {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair(
                "scope",
                "launch/patient patient/MedicationRequest.rs patient/Observation.rs",
            )
            .append_pair("state", "st-42")
            .append_pair("aud", base)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", method)
            .finish();
        format!("{base}/authorize?{query}")
    };
    let code_for = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await?;
            ensure!(
                resp.status() == StatusCode::FOUND,
                "status {}",
                resp.status()
            );
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .context("Location")?
                .to_string();
            ensure!(location.starts_with(redirect), "{location}");
            let q = query_of(&location);
            ensure!(param(&q, "state").as_deref() == Some("st-42"), "{location}");
            param(&q, "code").context(format!("no code in {location}"))
        }
    };
    let exchange = |base: String, code: String, verifier: String, redirect: String| {
        let http = http.clone();
        async move {
            let resp = http
                .post(format!("{base}/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", redirect.as_str()),
                    ("code_verifier", verifier.as_str()),
                    ("client_id", client_id),
                ]))
                .send()
                .await?;
            let status = resp.status();
            let body: Value = resp.json().await?;
            Ok::<_, anyhow::Error>((status, body))
        }
    };

    // The full flow.
    let code = code_for(authorize(&base, &challenge, "S256")).await?;
    let (status, body) =
        exchange(base.clone(), code.clone(), verifier.into(), redirect.into()).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["patient"], PATIENT);
    assert!(
        body["expires_in"]
            .as_u64()
            .is_some_and(|s| s > 0 && s <= 3600)
    );
    assert_eq!(
        body["scope"], "patient/MedicationRequest.rs",
        "narrowed to grant ∩ request"
    );
    let token = body["access_token"].as_str().context("access_token")?;
    let (status, _) = get(&http, &format!("{base}/MedicationRequest"), token).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&http, &format!("{base}/Observation"), token).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The same code again: invalid_grant.
    let (status, body) = exchange(base.clone(), code, verifier.into(), redirect.into()).await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
    );
    // A wrong verifier (and the code is spent afterwards).
    let code = code_for(authorize(&base, &challenge, "S256")).await?;
    let wrong = "x".repeat(50);
    let (status, body) = exchange(base.clone(), code.clone(), wrong, redirect.into()).await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
    );
    let (status, body) = exchange(base.clone(), code, verifier.into(), redirect.into()).await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
    );
    // An attempt refused for a missing parameter spends the code too.
    let code = code_for(authorize(&base, &challenge, "S256")).await?;
    let resp = http
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect),
            ("client_id", client_id),
        ]))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, body) = exchange(base.clone(), code, verifier.into(), redirect.into()).await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_grant")),
        "{body}"
    );
    // A wrong redirect_uri.
    let code = code_for(authorize(&base, &challenge, "S256")).await?;
    let (status, body) = exchange(
        base.clone(),
        code,
        verifier.into(),
        "http://127.0.0.1:9/other".into(),
    )
    .await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("redirect_uri"))
    );
    // Unknown client at /token; unsupported grant type.
    let resp = http
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "authorization_code"),
            ("code", "c"),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
            ("client_id", "nobody"),
        ]))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.json::<Value>().await?["error"], "invalid_client");
    let resp = http
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("grant_type", "client_credentials")]))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await?["error"],
        "unsupported_grant_type"
    );
    // PKCE is mandatory: plain is refused (redirected with an error).
    let resp = http.get(authorize(&base, verifier, "plain")).send().await?;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert_eq!(
        param(&query_of(location), "error").as_deref(),
        Some("invalid_request")
    );
    assert!(param(&query_of(location), "code").is_none());
    // An unregistered client: 400 JSON, no redirect.
    let resp = http
        .get(authorize(&base, &challenge, "S256").replace(client_id, "stranger"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    server.stop().await?;

    // An expired code (a server whose codes last 1 ms).
    let server = serve::start_with(
        vault.clone(),
        key.clone(),
        "127.0.0.1:0".parse()?,
        ServeOptions {
            code_ttl: Duration::from_millis(1),
            ..options
        },
    )
    .await?;
    let base = server.url().to_string();
    let code = code_for(authorize(&base, &challenge, "S256")).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = exchange(base.clone(), code, verifier.into(), redirect.into()).await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("expired"))
    );
    server.stop().await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn summary_type_filter_and_cache() -> anyhow::Result<()> {
    let (net, _dir, keystore, key, vault) = setup().await?;
    let noted = json!({"resourceType": "Observation", "id": "noted", "status": "final",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">hr</div>"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{PATIENT}")},
        "effectiveDateTime": "2022-01-01T08:00:00Z", "valueQuantity": {"value": 61},
        "note": [{"text": "after a run"}], "referenceRange": [{"text": "60-100"}]});
    vault.import(vec![input("noted.json", &noted)]).await?;
    let server = serve::start(vault.clone(), key.clone(), "127.0.0.1:0".parse()?).await?;
    let base = server.url().to_string();
    let http = Client::new();
    let patient = key.mint_patient(now_s(), 3600)?;

    // Warm-up: every current resource is in memory.
    tokio::time::timeout(Duration::from_secs(30), server.warmed()).await?;
    assert_eq!(server.cached(), vault.list().await.len() as u64);

    // _summary=true: summary elements only, SUBSETTED.
    let (status, page) = get(
        &http,
        &format!("{base}/Observation?_id=noted&_summary=true"),
        &patient,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let r = &page["entry"][0]["resource"];
    assert_eq!(r["status"], "final");
    assert!(r.get("valueQuantity").is_some() && r.get("effectiveDateTime").is_some());
    assert!(
        r.get("note").is_none() && r.get("referenceRange").is_none() && r.get("text").is_none(),
        "{r}"
    );
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    assert!(r["meta"]["versionId"].is_string(), "meta kept");
    // _summary=text: text, id, meta and the mandatory elements.
    let (_, r) = get(
        &http,
        &format!("{base}/Observation/noted?_summary=text"),
        &patient,
    )
    .await?;
    assert!(r.get("text").is_some() && r.get("code").is_some() && r.get("status").is_some());
    assert!(
        r.get("valueQuantity").is_none() && r.get("note").is_none(),
        "{r}"
    );
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    // Nothing removed, nothing tagged.
    let (_, r) = get(&http, &format!("{base}/Observation/noted"), &patient).await?;
    assert!(r["meta"].get("tag").is_none() && r.get("note").is_some());
    let (status, _) = get(
        &http,
        &format!("{base}/Observation?_summary=maybe"),
        &patient,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // _typeFilter in a bulk export: Observations matching the filter, Patients whole.
    let filter = "Observation?code=http://loinc.org|29463-7";
    let kick = format!(
        "{base}/$export?_type=Observation,Patient&_typeFilter={}",
        form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
    );
    let resp = http
        .get(&kick)
        .bearer_auth(&patient)
        .header("Prefer", "respond-async")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let status_url = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .context("Content-Location")?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let manifest = loop {
        let resp = http.get(&status_url).bearer_auth(&patient).send().await?;
        if resp.status() == StatusCode::OK {
            break resp.json::<Value>().await?;
        }
        ensure!(
            resp.status() == StatusCode::ACCEPTED && Instant::now() < deadline,
            "export"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let count = |t: &str| {
        manifest["output"]
            .as_array()
            .and_then(|o| o.iter().find(|f| f["type"] == t))
            .and_then(|f| f["count"].as_u64())
    };
    assert_eq!(count("Observation"), Some(1), "{manifest}");
    assert_eq!(count("Patient"), Some(1), "{manifest}");
    let file = manifest["output"]
        .as_array()
        .and_then(|o| o.iter().find(|f| f["type"] == "Observation"))
        .and_then(|f| f["url"].as_str())
        .context("file")?;
    let ndjson = http
        .get(file)
        .bearer_auth(&patient)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        ndjson.contains("29463-7") && !ndjson.contains("8302-2"),
        "{ndjson}"
    );
    for bad in ["Observation?nonsense=1", "Condition?code=x", "NotAType?x=1"] {
        let url = format!(
            "{base}/$export?_type=Observation&_typeFilter={}",
            form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>()
        );
        let resp = http
            .get(&url)
            .bearer_auth(&patient)
            .header("Prefer", "respond-async")
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // The cache follows this server's writes ...
    let mut changed = noted.clone();
    changed["valueQuantity"]["value"] = json!(99);
    let resp = http
        .put(format!("{base}/Observation/noted"))
        .bearer_auth(&patient)
        .header("content-type", "application/fhir+json")
        .body(changed.to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, r) = get(&http, &format!("{base}/Observation/noted"), &patient).await?;
    assert_eq!(r["valueQuantity"]["value"], 99);
    // ... and another device's (after a refresh).
    let other = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    changed["valueQuantity"]["value"] = json!(42);
    other.import(vec![input("other.json", &changed)]).await?;
    server.refresh().await?;
    let (_, r) = get(&http, &format!("{base}/Observation/noted"), &patient).await?;
    assert_eq!(
        r["valueQuantity"]["value"], 42,
        "another device's change shows"
    );
    server.stop().await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_warm_up_a_refresh_does_not_warm_the_cache() -> anyhow::Result<()> {
    // warm_up: false means no warm-up at start nor after a refresh that brought
    // another device's changes (the emptied cache fills only as requests read).
    let (net, _dir, keystore, key, vault) = setup().await?;
    let server = serve::start_with(
        vault.clone(),
        key.clone(),
        "127.0.0.1:0".parse()?,
        ServeOptions {
            warm_up: false,
            ..ServeOptions::default()
        },
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(30), server.warmed()).await?;
    assert_eq!(server.cached(), 0);
    let other = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    let obs = json!({"resourceType": "Observation", "id": "elsewhere", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{PATIENT}")},
        "effectiveDateTime": "2022-01-01T08:00:00Z", "valueQuantity": {"value": 70}});
    other.import(vec![input("elsewhere.json", &obs)]).await?;
    server.refresh().await?;
    tokio::time::timeout(Duration::from_secs(30), server.warmed()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.cached(), 0, "no warm-up after the refresh");
    server.stop().await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorize_refuses_a_redirect_uri_that_cannot_be_a_location() -> anyhow::Result<()> {
    // A redirect_uri with a space, a control character or non-ASCII text cannot be
    // sent back in a Location header: 400 JSON, not a 302 without a Location.
    let (net, _dir, _keystore, key, vault) = setup().await?;
    let meds = grant(&vault, "MedTracker", &[Scope::Medications], DAY_MS).await?;
    let client_id = "medtracker-7f3a9c2e41b84d0e";
    let server = serve::start_with(
        vault.clone(),
        key.clone(),
        "127.0.0.1:0".parse()?,
        ServeOptions {
            clients: vec![(client_id.to_string(), meds.id.clone())],
            ..ServeOptions::default()
        },
    )
    .await?;
    let base = server.url().to_string();
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let challenge = serve::oauth::s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-extra");
    for redirect in [
        "http://127.0.0.1:9/caf\u{e9}",
        "http://127.0.0.1:9/a b",
        "http://127.0.0.1:9/a\nb",
    ] {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair("aud", &base)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let resp = http.get(format!("{base}/authorize?{query}")).send().await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{redirect:?}");
        let body: Value = resp.json().await?;
        assert_eq!(body["error"], "invalid_request", "{redirect:?}");
    }
    server.stop().await?;
    net.stop().await;
    Ok(())
}
