//! Tests of input parsing (Bundles, NDJSON, histories), reference rewriting, content hashing and the small validators.

use super::*;
use serde_json::json;

fn parse(name: &str, value: &Value) -> Result<Parsed, ImportError> {
    parse_inputs(
        &[Input::from_bytes(
            name,
            serde_json::to_vec(value).expect("json"),
        )],
        &ImportOptions::default(),
    )
}

fn entry_error(result: Result<Parsed, ImportError>) -> String {
    match result {
        Err(e @ ImportError::Entry { .. }) => e.to_string(),
        other => panic!("expected an entry error, got {other:?}"),
    }
}

#[test]
fn transaction_urns_become_relative_references() {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:AAAAAAAA-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Observation", "id": "obs-1",
            "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:AAAAAAAA-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient/x"}},
        {"request": {"method": "DELETE", "url": "Condition/old"}}
    ]});
    let parsed = parse("t.json", &bundle).expect("parse");
    assert_eq!(parsed.changes.len(), 3);
    let patient = &parsed.changes[0];
    assert_eq!(patient.resource_type, "Patient");
    assert_eq!(patient.id, "aaaaaaaa-0000-4000-8000-000000000001");
    let Op::Put(obs) = &parsed.changes[1].op else {
        panic!("put")
    };
    assert_eq!(
        obs["subject"]["reference"],
        "Patient/aaaaaaaa-0000-4000-8000-000000000001"
    );
    assert_eq!(parsed.changes[1].id, "obs-1");
    assert_eq!(
        parsed.changes[2].op,
        Op::Delete {
            at: None,
            version: None
        }
    );
    assert_eq!(parsed.changes[2].id, "old");
    assert_eq!(parsed.notes.len(), 1);
}

#[test]
fn errors_name_the_entry() {
    let not_json = parse_inputs(
        &[Input::from_bytes("x.json", b"{nope".to_vec())],
        &ImportOptions::default(),
    );
    assert!(matches!(not_json, Err(ImportError::NotJson { .. })));

    let no_type = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p"}},
        {"fullUrl": "urn:uuid:1", "resource": {"id": "x"}}]});
    let msg = entry_error(parse("c.json", &no_type));
    assert!(
        msg.contains("c.json, entry 1 (fullUrl urn:uuid:1)"),
        "{msg}"
    );
    assert!(msg.contains("no resourceType"), "{msg}");

    let bad_ref = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Observation",
            "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:missing"}}}]});
    let msg = entry_error(parse("c.json", &bad_ref));
    assert!(
        msg.contains("entry 0") && msg.contains("urn:uuid:missing"),
        "{msg}"
    );

    let malformed_ref = json!({"resourceType": "Observation", "id": "o",
        "status": "final", "code": {"text": "x"}, "subject": {"reference": "not a reference"}});
    assert!(entry_error(parse("o.json", &malformed_ref)).contains("bad reference"));

    let duplicate = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:3", "resource": {"resourceType": "Patient"}},
        {"fullUrl": "urn:uuid:3", "resource": {"resourceType": "Patient"}}]});
    let msg = entry_error(parse("d.json", &duplicate));
    assert!(
        msg.contains("duplicate fullUrl urn:uuid:3 (also entry 0)"),
        "{msg}"
    );

    let bad_id = json!({"resourceType": "Patient", "id": "has space"});
    assert!(entry_error(parse("p.json", &bad_id)).contains("not a valid FHIR id"));

    let bad_instant = json!({"resourceType": "Patient", "id": "p",
        "meta": {"lastUpdated": "yesterday"}});
    assert!(entry_error(parse("p.json", &bad_instant)).contains("not an instant"));

    let message = json!({"resourceType": "Bundle", "type": "message", "entry": []});
    assert!(entry_error(parse("m.json", &message)).contains("not imported"));

    let patch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "PATCH", "url": "Patient/p"}}]});
    assert!(entry_error(parse("b.json", &patch)).contains("PATCH"));
}

#[test]
fn versions_may_share_a_full_url_and_conditional_references_resolve() {
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:5", "resource": {"resourceType": "Patient", "id": "p",
            "meta": {"versionId": "1"},
            "identifier": [{"system": "urn:mrn", "value": "42"}]}},
        {"fullUrl": "urn:uuid:5", "resource": {"resourceType": "Patient", "id": "p",
            "meta": {"versionId": "2"}}},
        {"resource": {"resourceType": "Observation", "id": "o",
            "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?identifier=urn:mrn%7C42"}}}]});
    let parsed = parse("v.json", &bundle).expect("parse");
    assert_eq!(parsed.changes.len(), 3);
    let Op::Put(obs) = &parsed.changes[2].op else {
        panic!("put")
    };
    assert_eq!(obs["subject"]["reference"], "Patient/p");
}

#[test]
fn ndjson_and_history() {
    let ndjson = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n";
    let parsed = parse_inputs(
        &[Input::from_bytes("Patient.ndjson", ndjson.to_vec())],
        &ImportOptions::default(),
    )
    .expect("ndjson");
    assert_eq!(parsed.changes.len(), 2);
    let bad = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"id\":\"b\"}\n";
    let err = parse_inputs(
        &[Input::from_bytes("x.ndjson", bad.to_vec())],
        &ImportOptions::default(),
    )
    .expect_err("bad");
    assert!(err.to_string().contains("line 2"), "{err}");

    let history = json!({"resourceType": "Bundle", "type": "history", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/p"}},
        {"resource": {"resourceType": "Patient", "id": "p", "active": true},
         "request": {"method": "PUT", "url": "Patient/p"}},
        {"resource": {"resourceType": "Patient", "id": "p"},
         "request": {"method": "PUT", "url": "Patient/p"}}]});
    let parsed = parse("h.json", &history).expect("history");
    assert_eq!(parsed.changes.len(), 3);
    assert!(matches!(parsed.changes[2].op, Op::Delete { .. }));
    let Op::Put(first) = &parsed.changes[0].op else {
        panic!("put")
    };
    assert!(first.get("active").is_none());
}

#[test]
fn content_hash_ignores_version_meta_and_key_order() {
    let a = json!({"resourceType": "Patient", "id": "p", "gender": "female"});
    let b = json!({"gender": "female", "id": "p", "resourceType": "Patient",
        "meta": {"versionId": "3", "lastUpdated": "2024-01-01T00:00:00Z"}});
    assert_eq!(content_hash(&a), content_hash(&b));
    let c = json!({"resourceType": "Patient", "id": "p", "gender": "male"});
    assert_ne!(content_hash(&a), content_hash(&c));
    let d = json!({"resourceType": "Patient", "id": "p", "gender": "female",
        "meta": {"profile": ["x"]}});
    assert_ne!(content_hash(&a), content_hash(&d));
}

#[test]
fn small_validators() {
    assert!(valid_instant("2024-06-01T10:00:00Z"));
    assert!(valid_instant("2024-06-01T10:00:00.123+02:00"));
    assert!(!valid_instant("2024-06-01"));
    assert!(!valid_instant("2024-06-01T10:00:00"));
    assert!(!valid_instant("2024-06-01T10:00:00.Z"));
    assert!(valid_type("Observation") && !valid_type("observation") && !valid_type(""));
    assert!(valid_id("a-b.c") && !valid_id("") && !valid_id("a/b"));
    assert_eq!(
        parse_request_url("Patient/1/_history/2").expect("url"),
        ("Patient".to_string(), Some("1".to_string()))
    );
    assert_eq!(
        parse_request_url("http://x/fhir/Patient?identifier=a").expect("url"),
        ("Patient".to_string(), None)
    );
    assert!(parse_request_url("$everything").is_err());
    let uuid = random_uuid();
    assert!(valid_id(&uuid) && uuid.len() == 36);
    let refs = patient_refs(
        "Observation",
        "o",
        &json!({"subject": {"reference": "Patient/p1"},
                "performer": [{"reference": "Patient/p2/_history/1"}, {"reference": "Practitioner/d"}]}),
    );
    assert_eq!(refs, vec!["p1".to_string(), "p2".to_string()]);
}
