//! The International Patient Summary (HL7 IPS): one patient's records summarised as a
//! FHIR `document` Bundle, signed with the patient's key.
//!
//! ## The document
//! [`build`] reads the Patient and its compartment and assembles:
//! - `Bundle.type = document`, a fresh `identifier` (`urn:uuid:…`, also the Bundle's
//!   id) and `timestamp`;
//! - first entry a `Composition`: `status` final, `type` LOINC 60591-5 (Patient summary
//!   Document), `subject` and `author` the Patient (the patient writes this summary),
//!   an `attester` of mode `personal` (the patient, who signs it), `date`, `title`,
//!   `confidentiality` N, a generated narrative, and the sections of [`SECTIONS`];
//! - every resource a section names, then every resource those reference (followed
//!   until nothing new is found: encounters, practitioners, organizations, a
//!   DiagnosticReport's results, a MedicationRequest's Medication, …) as long as the
//!   vault holds it. Resources go in as stored, byte-for-byte (numbers keep their text);
//!   each entry's `fullUrl` is `<base>/<Type>/<id>`, so the stored relative references
//!   (`Patient/p1`) resolve inside the Bundle by FHIR's rule for relative references in
//!   a Bundle. `base` is the FHIR base of the front end (`ehi serve`'s url, or
//!   `ehi://<vault slot>` for the command line, as `ehi search` answers).
//!
//! ## Sections
//! The IPS guide (2.0) defines sixteen sections, each identified by a LOINC code.
//! Problems (11450-4), Allergies and intolerances (48765-2) and Medication summary
//! (10160-0) are *required*: each is always present, and without entries it carries
//! `emptyReason` `unavailable` (list-empty-reason: the vault holds no such record;
//! that is not the clinical judgement "nil known") and a narrative saying so.
//! Immunizations (11369-6), Results (30954-2), History of procedures (47519-4), Medical
//! devices (46264-8) and Vital signs (8716-3) — recommended or commonly expected — are
//! always present too, with the same empty form. The others (Past history of illness
//! 11348-0, Plan of care 18776-5, Social history 29762-2, Advance directives 42348-3,
//! Alerts 104605-1) appear only when the vault has data for them. Functional status,
//! History of pregnancy and Patient story are not produced (no reliable way to tell
//! their records apart without terminology).
//!
//! Which record goes where is decided from the resources alone (no terminology
//! server), by [`section_of`]: Conditions are problems, or past illnesses when their
//! clinical status is inactive, remission or resolved; AllergyIntolerances that are
//! not inactive or resolved; MedicationStatements (active, intended, on-hold) and
//! MedicationRequests (active, on-hold); Immunizations; Procedures;
//! DeviceUseStatements; Observations by category — `vital-signs` (or a LOINC code of
//! the R4 vital signs profile) are vital signs, `social-history` social history,
//! `laboratory`, `imaging`, `procedure` or none are results, any other category (a
//! survey, an exam) is left out — and DiagnosticReports as results; CarePlans (active,
//! on-hold, draft) and ImmunizationRecommendations as the plan of care; active
//! Consents of scope `adr` as advance directives; active Flags as alerts.
//! Entered-in-error, refuted, cancelled and not-done records are always left out.
//! Results, Vital signs and Social history keep the most recent Observation (or
//! DiagnosticReport) of each code, so a summary of years of measurements stays short.
//!
//! Every section has a `text` (status `generated`, XHTML) listing its entries, built
//! from the resources' own `text`/`display` of their codes, their dates, statuses and
//! values, escaped for XHTML.
//!
//! ## The signature
//! [`sign`] adds `Bundle.signature` (FHIR R4 `Signature`): a JSON Web Signature
//! (RFC 7515) with `alg` `Ed25519` (the fully-specified name RFC 9864 gives EdDSA over
//! Ed25519; [`verify`] also accepts the older polymorphic `EdDSA` of RFC 8037) made with
//! the patient's signing key — the key whose public half is the vault slot's id — in
//! compact serialization with a **detached payload** (`<header>..<signature>`, RFC 7515
//! appendix F), base64 in `Signature.data`; `sigFormat` `application/jose`;
//! `targetFormat`
//! `application/fhir+json;canonicalization=http://hl7.org/fhir/canonicalization/json`.
//! The payload is the **RFC 8785 (JCS) canonical JSON of the whole Bundle without its
//! `signature` element** — what FHIR's JSON canonicalization names: members sorted,
//! no insignificant whitespace, numbers in their ECMAScript form. Why this form: a JWS
//! (`application/jose`) is the JSON signature FHIR's signature page names, so a JOSE
//! library verifies it as it is (the tests check one: Python's `joserfc` with the
//! `rfc8785` canonicalizer); Ed25519 is the key the patient already holds; a detached
//! payload keeps the Bundle readable as it is, not wrapped in base64; and JCS makes the
//! signed bytes independent of how the Bundle was re-serialized on the way
//! (indentation, member order). Narrative, `meta` and ids are signed too: the whole
//! document is the patient's statement. The protected header carries the public key
//! as a JWK (`kty` OKP, `crv` Ed25519), so [`signer`] can say who signed; whether that
//! key is the patient's must be known another way (the verifier passes the key it
//! trusts to [`verify`]).
//!
//! Limits of the form: JCS writes every number as an IEEE-754 double, so `1.50` and
//! `1.5` (or two integers past 2^53 that round alike) canonicalize alike — changing a
//! number's spelling without changing its double value does not break the signature,
//! and a number outside the double range cannot be signed ([`SignatureError::Canonical`]).
//! The elements of `Bundle.signature` itself (`when`, `who`) are not covered.
//!
//! ## The checklist
//! [`check`] lists what keeps a Bundle from being such a summary: document type,
//! identifier, timestamp; the Composition first, with the IPS type, subject, author,
//! date, title; exactly one Patient, the subject; the required sections; every section
//! with a code, a generated XHTML narrative, and entries or an `emptyReason` (not both);
//! every section entry included; fullUrls present and unique; every reference
//! resolvable inside the Bundle. The tests run it over summaries of the fixture
//! patient and of Synthea patients.
//!
//! ## Reads and audit
//! [`build`] and [`summary`] read the vault without auditing: the command line goes
//! through [`crate::reads::Reads::patient_summary`], which queues one audit entry
//! (`Patient/<id>/$summary`), and `ehi serve` audits each request itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Map, Value, json};

use crate::error::{EhiError, Result};
use crate::time::{instant, now_ms};
use crate::vault::Vault;

/// LOINC, the system of the section and document codes.
pub const LOINC: &str = "http://loinc.org";
/// The document type of an IPS: LOINC 60591-5.
pub const IPS_TYPE: &str = "60591-5";
/// `Signature.targetFormat`: FHIR JSON, canonicalized as FHIR's JSON canonicalization.
pub const TARGET_FORMAT: &str =
    "application/fhir+json;canonicalization=http://hl7.org/fhir/canonicalization/json";
/// `Signature.sigFormat`: a JOSE (JWS) signature.
pub const SIG_FORMAT: &str = "application/jose";
const EMPTY_REASON: &str = "http://terminology.hl7.org/CodeSystem/list-empty-reason";
const XHTML: &str = "http://www.w3.org/1999/xhtml";

/// One IPS section: its LOINC code and display, its title, and whether it is always
/// present (with an `emptyReason` when the vault has nothing for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionDef {
    /// The LOINC code.
    pub code: &'static str,
    /// The LOINC display.
    pub display: &'static str,
    /// The section title.
    pub title: &'static str,
    /// Required by the IPS guide (Problems, Allergies, Medication summary).
    pub required: bool,
    /// Present even when empty (the required sections and the ones most readers look
    /// for).
    pub always: bool,
}

const fn section(
    code: &'static str,
    display: &'static str,
    title: &'static str,
    required: bool,
    always: bool,
) -> SectionDef {
    SectionDef {
        code,
        display,
        title,
        required,
        always,
    }
}

/// The sections produced, in document order.
pub const SECTIONS: &[SectionDef] = &[
    section("11450-4", "Problem list - Reported", "Problems", true, true),
    section(
        "48765-2",
        "Allergies and adverse reactions Document",
        "Allergies and Intolerances",
        true,
        true,
    ),
    section(
        "10160-0",
        "History of Medication use Narrative",
        "Medication Summary",
        true,
        true,
    ),
    section(
        "11369-6",
        "History of Immunization Narrative",
        "Immunizations",
        false,
        true,
    ),
    section(
        "30954-2",
        "Relevant diagnostic tests/laboratory data Narrative",
        "Results",
        false,
        true,
    ),
    section(
        "47519-4",
        "History of Procedures Document",
        "History of Procedures",
        false,
        true,
    ),
    section(
        "46264-8",
        "History of medical device use",
        "Medical Devices",
        false,
        true,
    ),
    section("8716-3", "Vital signs", "Vital Signs", false, true),
    section(
        "11348-0",
        "History of Past illness Narrative",
        "Past History of Illness",
        false,
        false,
    ),
    section("18776-5", "Plan of care note", "Plan of Care", false, false),
    section(
        "29762-2",
        "Social history Narrative",
        "Social History",
        false,
        false,
    ),
    section(
        "42348-3",
        "Advance directives",
        "Advance Directives",
        false,
        false,
    ),
    section("104605-1", "Alert", "Alerts", false, false),
];

/// The LOINC codes of the R4 vital signs profile (an Observation with one of these is
/// a vital sign even without the `vital-signs` category).
const VITAL_CODES: &[&str] = &[
    "85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4", "29463-7",
    "39156-5", "85354-9", "8480-6", "8462-4", "8478-0", "3141-9", "8287-5",
];

/// Sections whose entries are reduced to the most recent record of each code.
const LATEST_PER_CODE: &[&str] = &["30954-2", "8716-3", "29762-2"];

/// The Patient of a one-patient vault: its id, or an error naming how many there are.
pub async fn the_patient(vault: &Vault) -> Result<String> {
    let patients: Vec<String> = vault
        .list()
        .await
        .into_iter()
        .filter_map(|r| r.strip_prefix("Patient/").map(str::to_string))
        .collect();
    match patients.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(EhiError::NotFound("a Patient in this vault".into())),
        more => Err(EhiError::InvalidArgument(format!(
            "the vault holds {} Patients ({}); name one",
            more.len(),
            more.join(", ")
        ))),
    }
}

/// The signed summary of `Patient/patient_id` ([`build`], then [`sign`] with the
/// vault's signing key). Not audited (see the module docs).
pub async fn summary(vault: &Vault, patient_id: &str, base: &str) -> Result<Value> {
    let mut bundle = build(vault, patient_id, base).await?;
    sign(&mut bundle, &vault.signing, now_ms())?;
    Ok(bundle)
}

/// The unsigned summary document of `Patient/patient_id` (see the module docs).
/// Fails as a read does when the Patient is unknown or deleted. Not audited.
pub async fn build(vault: &Vault, patient_id: &str, base: &str) -> Result<Value> {
    let base = base.trim_end_matches('/');
    let patient = vault.read("Patient", patient_id).await?;
    let compartment = vault.patient_compartment(patient_id).await?;
    let mut known: HashMap<String, Value> = compartment
        .into_iter()
        .filter_map(|r| Some((key_of(&r)?, r)))
        .collect();
    let patient_key = format!("Patient/{patient_id}");
    known.insert(patient_key.clone(), patient.clone());

    // Section entries.
    let mut by_section: BTreeMap<usize, Vec<&Value>> = BTreeMap::new();
    let mut sorted: Vec<(&String, &Value)> = known.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (_, resource) in &sorted {
        if let Some(i) = section_of(resource) {
            by_section.entry(i).or_default().push(resource);
        }
    }
    for (i, entries) in by_section.iter_mut() {
        if LATEST_PER_CODE.contains(&SECTIONS[*i].code) {
            *entries = latest_per_code(entries);
        }
        entries.sort_by_key(|r| std::cmp::Reverse(date_of(r).unwrap_or_default()));
    }

    // What goes into the Bundle: the Patient, the section entries, then everything
    // they reference, as far as the vault holds it.
    let mut order: Vec<String> = vec![patient_key.clone()];
    let mut included: HashSet<String> = HashSet::from([patient_key.clone()]);
    for entries in by_section.values() {
        for r in entries {
            if let Some(k) = key_of(r)
                && included.insert(k.clone())
            {
                order.push(k);
            }
        }
    }
    let mut resolved: HashMap<String, Value> = HashMap::new();
    let mut next = 0;
    while next < order.len() {
        let key = order[next].clone();
        next += 1;
        let resource = match known.get(&key).or_else(|| resolved.get(&key)) {
            Some(r) => r.clone(),
            None => continue,
        };
        let mut wanted = Vec::new();
        walk_references(&resource, &mut |reference| {
            if let Some((t, id)) = relative(reference) {
                wanted.push(format!("{t}/{id}"));
            }
        });
        for k in wanted {
            if included.contains(&k) {
                continue;
            }
            if !known.contains_key(&k) {
                let Some((t, id)) = k.split_once('/') else {
                    continue;
                };
                match vault.read(t, id).await {
                    Ok(r) => {
                        resolved.insert(k.clone(), r);
                    }
                    // Not held (or deleted): the reference stays unresolved.
                    Err(EhiError::NotFound(_) | EhiError::Gone(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            included.insert(k.clone());
            order.push(k);
        }
    }
    let rest_start = 1 + by_section.values().map(Vec::len).sum::<usize>();
    if order.len() > rest_start {
        order[rest_start..].sort();
    }

    let now = now_ms();
    let date = instant(now);
    let document_id = uuid::Uuid::new_v4().to_string();
    let composition_id = uuid::Uuid::new_v4().to_string();
    let sections: Vec<Value> = SECTIONS
        .iter()
        .enumerate()
        .filter_map(|(i, def)| {
            let entries = by_section.get(&i).map(Vec::as_slice).unwrap_or_default();
            if entries.is_empty() && !def.always {
                return None;
            }
            Some(section_json(def, entries, &resolved))
        })
        .collect();
    let name = patient_name(&patient);
    let birth = patient["birthDate"].as_str().unwrap_or("unknown");
    let composition = json!({
        "resourceType": "Composition",
        "id": composition_id,
        "text": {
            "status": "generated",
            "div": div(&format!(
                "<p>International Patient Summary of {}, born {}, written from the \
                 patient's own records on {}.</p>",
                escape(&name), escape(birth), escape(&date)
            )),
        },
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": IPS_TYPE,
                             "display": "Patient summary Document"}]},
        "subject": {"reference": patient_key, "display": name},
        "date": date,
        "author": [{"reference": patient_key, "display": name}],
        "title": format!("International Patient Summary of {name}"),
        "confidentiality": "N",
        "attester": [{"mode": "personal", "time": date,
                      "party": {"reference": patient_key, "display": name}}],
        "section": sections,
    });

    let mut entries = vec![json!({
        "fullUrl": format!("{base}/Composition/{composition_id}"),
        "resource": composition,
    })];
    for key in order {
        let Some(resource) = known.remove(&key).or_else(|| resolved.remove(&key)) else {
            continue;
        };
        entries.push(json!({"fullUrl": format!("{base}/{key}"), "resource": resource}));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "id": document_id,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{document_id}")},
        "type": "document",
        "timestamp": date,
        "entry": entries,
    }))
}

/// `Type/id` of a resource.
fn key_of(resource: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        resource["resourceType"].as_str()?,
        resource["id"].as_str()?
    ))
}

/// The (type, id) of a relative literal reference (`Type/id`, `Type/id/_history/n`).
fn relative(reference: &str) -> Option<(&str, &str)> {
    if reference.contains(':') || reference.contains('?') || reference.starts_with('#') {
        return None;
    }
    let mut parts = reference.split('/');
    let t = parts.next()?;
    let id = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) | (Some("_history"), Some(_), None) => {}
        _ => return None,
    }
    (crate::fhir::valid_type(t) && crate::fhir::valid_id(id)).then_some((t, id))
}

/// Calls `f` with every `reference` string in `value`.
fn walk_references(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference") {
                f(reference);
            }
            map.values().for_each(|v| walk_references(v, f));
        }
        Value::Array(items) => items.iter().for_each(|v| walk_references(v, f)),
        _ => {}
    }
}

fn codes(concept: &Value) -> impl Iterator<Item = (&str, &str)> {
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["system"].as_str().unwrap_or(""), c["code"].as_str()?)))
}

fn has_code(concept: &Value, code: &str) -> bool {
    codes(concept).any(|(_, c)| c == code)
}

fn categories(resource: &Value) -> Vec<&str> {
    resource["category"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(codes)
        .map(|(_, c)| c)
        .collect()
}

/// The index in [`SECTIONS`] of the section `resource` belongs in, if any.
pub fn section_of(resource: &Value) -> Option<usize> {
    let index = |code: &str| SECTIONS.iter().position(|s| s.code == code);
    let status = resource["status"].as_str().unwrap_or("");
    if matches!(status, "entered-in-error" | "cancelled" | "not-done") {
        return None;
    }
    if ["entered-in-error", "refuted"]
        .iter()
        .any(|c| has_code(&resource["verificationStatus"], c))
    {
        return None;
    }
    match resource["resourceType"].as_str()? {
        "Condition" => {
            let past = ["inactive", "remission", "resolved"]
                .iter()
                .any(|c| has_code(&resource["clinicalStatus"], c));
            index(if past { "11348-0" } else { "11450-4" })
        }
        "AllergyIntolerance" => {
            let inactive = ["inactive", "resolved"]
                .iter()
                .any(|c| has_code(&resource["clinicalStatus"], c));
            if inactive { None } else { index("48765-2") }
        }
        "MedicationStatement" => matches!(status, "active" | "intended" | "on-hold")
            .then(|| index("10160-0"))
            .flatten(),
        "MedicationRequest" => matches!(status, "active" | "on-hold")
            .then(|| index("10160-0"))
            .flatten(),
        "Immunization" => index("11369-6"),
        "Procedure" => index("47519-4"),
        "DeviceUseStatement" => index("46264-8"),
        "DiagnosticReport" => index("30954-2"),
        "Observation" => {
            let cats = categories(resource);
            if cats.contains(&"vital-signs")
                || codes(&resource["code"]).any(|(s, c)| s == LOINC && VITAL_CODES.contains(&c))
            {
                index("8716-3")
            } else if cats.contains(&"social-history") {
                index("29762-2")
            } else if cats.is_empty()
                || cats
                    .iter()
                    .any(|c| matches!(*c, "laboratory" | "imaging" | "procedure"))
            {
                index("30954-2")
            } else {
                None
            }
        }
        "CarePlan" => matches!(status, "active" | "on-hold" | "draft")
            .then(|| index("18776-5"))
            .flatten(),
        "ImmunizationRecommendation" => index("18776-5"),
        "Consent" => {
            let directive = resource["scope"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["code"] == "adr");
            (directive && status == "active")
                .then(|| index("42348-3"))
                .flatten()
        }
        "Flag" => (status == "active").then(|| index("104605-1")).flatten(),
        _ => None,
    }
}

/// The most recent record of each code (records without a code are all kept).
fn latest_per_code<'a>(entries: &[&'a Value]) -> Vec<&'a Value> {
    let mut best: BTreeMap<String, &'a Value> = BTreeMap::new();
    let mut uncoded = Vec::new();
    for r in entries {
        let Some((system, code)) = codes(&r["code"]).next() else {
            uncoded.push(*r);
            continue;
        };
        let key = format!(
            "{}|{system}|{code}",
            r["resourceType"].as_str().unwrap_or("")
        );
        match best.get(&key) {
            Some(old) if date_of(old) >= date_of(r) => {}
            _ => {
                best.insert(key, r);
            }
        }
    }
    best.into_values().chain(uncoded).collect()
}

/// The clinically relevant date of a record, as written.
fn date_of(resource: &Value) -> Option<&str> {
    const DATES: &[&[&str]] = &[
        &["onsetDateTime"],
        &["effectiveDateTime"],
        &["effectiveInstant"],
        &["effectivePeriod", "start"],
        &["occurrenceDateTime"],
        &["performedDateTime"],
        &["performedPeriod", "start"],
        &["authoredOn"],
        &["dateAsserted"],
        &["recordedDate"],
        &["timingDateTime"],
        &["period", "start"],
        &["dateTime"],
        &["date"],
        &["issued"],
    ];
    DATES.iter().find_map(|path| {
        path.iter()
            .try_fold(resource, |v, p| v.get(*p))
            .and_then(Value::as_str)
    })
}

/// A CodeableConcept in words: its text, else a coding's display, else `system|code`.
fn concept_text(concept: &Value) -> Option<String> {
    if let Some(text) = concept["text"].as_str() {
        return Some(text.to_string());
    }
    let codings = concept["coding"].as_array()?;
    codings
        .iter()
        .find_map(|c| c["display"].as_str().map(str::to_string))
        .or_else(|| {
            codings.iter().find_map(|c| {
                let code = c["code"].as_str()?;
                Some(match c["system"].as_str() {
                    Some(system) => format!("{system}|{code}"),
                    None => code.to_string(),
                })
            })
        })
}

/// A Quantity in words, its value as written.
fn quantity_text(q: &Value) -> Option<String> {
    let value = match &q["value"] {
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let unit = q["unit"].as_str().or_else(|| q["code"].as_str());
    let comparator = q["comparator"].as_str().unwrap_or("");
    Some(match unit {
        Some(unit) => format!("{comparator}{value} {unit}"),
        None => format!("{comparator}{value}"),
    })
}

/// An Observation's (or component's) value in words.
fn value_text(v: &Value) -> Option<String> {
    if let Some(q) = v.get("valueQuantity") {
        return quantity_text(q);
    }
    if let Some(c) = v.get("valueCodeableConcept") {
        return concept_text(c);
    }
    for key in [
        "valueString",
        "valueDateTime",
        "valueTime",
        "valuePeriod",
        "valueBoolean",
        "valueInteger",
    ] {
        match v.get(key) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Number(n)) => return Some(n.to_string()),
            Some(Value::Bool(b)) => return Some(b.to_string()),
            _ => {}
        }
    }
    let parts: Vec<String> = v["component"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let value = value_text(c)?;
            Some(match concept_text(&c["code"]) {
                Some(name) => format!("{name}: {value}"),
                None => value,
            })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// What a record is called: its code (or vaccine, medication, …), else its own
/// narrative's text, else `Type/id`.
fn label(resource: &Value, others: &HashMap<String, Value>) -> String {
    for key in [
        "code",
        "vaccineCode",
        "medicationCodeableConcept",
        "type",
        "category",
    ] {
        let concept = match &resource[key] {
            Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        if let Some(text) = concept_text(&concept) {
            return text;
        }
    }
    if let Some(reference) = resource["medicationReference"]["reference"].as_str() {
        if let Some(text) = others.get(reference).and_then(|m| concept_text(&m["code"])) {
            return text;
        }
        if let Some(display) = resource["medicationReference"]["display"].as_str() {
            return display.to_string();
        }
    }
    if let Some(title) = resource["title"].as_str() {
        return title.to_string();
    }
    if let Some(div) = resource["text"]["div"].as_str() {
        let plain = strip_tags(div);
        if !plain.is_empty() {
            return plain;
        }
    }
    key_of(resource).unwrap_or_default()
}

/// The text of an XHTML fragment: tags dropped, whitespace collapsed (entities are
/// kept as written, still escaped when the text is written back).
fn strip_tags(xhtml: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in xhtml.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One line of a section's narrative.
fn entry_line(resource: &Value, others: &HashMap<String, Value>) -> String {
    let mut line = label(resource, others);
    if let Some(value) = value_text(resource) {
        line.push_str(": ");
        line.push_str(&value);
    }
    // A clinical status is a code of a required value set: its code says it.
    let status = codes(&resource["clinicalStatus"])
        .map(|(_, code)| code.to_string())
        .next()
        .or_else(|| resource["status"].as_str().map(str::to_string));
    let mut details: Vec<String> = Vec::new();
    if let Some(status) = status {
        details.push(status);
    }
    if let Some(date) = date_of(resource) {
        details.push(date.to_string());
    }
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join(", ")));
    }
    escape(&line)
}

fn section_json(def: &SectionDef, entries: &[&Value], others: &HashMap<String, Value>) -> Value {
    let mut section = Map::new();
    section.insert("title".into(), json!(def.title));
    section.insert(
        "code".into(),
        json!({"coding": [{"system": LOINC, "code": def.code, "display": def.display}]}),
    );
    let html = if entries.is_empty() {
        format!(
            "<p>No information: this patient's records hold nothing for {}.</p>",
            escape(&def.title.to_lowercase())
        )
    } else {
        let items: String = entries
            .iter()
            .map(|r| format!("<li>{}</li>", entry_line(r, others)))
            .collect();
        format!("<ul>{items}</ul>")
    };
    section.insert(
        "text".into(),
        json!({"status": "generated", "div": div(&html)}),
    );
    if entries.is_empty() {
        section.insert(
            "emptyReason".into(),
            json!({"coding": [{"system": EMPTY_REASON, "code": "unavailable",
                               "display": "Unavailable"}],
                   "text": "No information"}),
        );
    } else {
        let refs: Vec<Value> = entries
            .iter()
            .filter_map(|r| Some(json!({"reference": key_of(r)?})))
            .collect();
        section.insert("entry".into(), Value::Array(refs));
    }
    Value::Object(section)
}

fn div(inner: &str) -> String {
    format!("<div xmlns=\"{XHTML}\">{inner}</div>")
}

/// Text escaped for XHTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The Patient's name for the narrative: `name[0].text`, else given and family names.
fn patient_name(patient: &Value) -> String {
    let name = &patient["name"][0];
    if let Some(text) = name["text"].as_str() {
        return text.to_string();
    }
    let mut parts: Vec<&str> = name["given"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(family) = name["family"].as_str() {
        parts.push(family);
    }
    if parts.is_empty() {
        "an unnamed patient".to_string()
    } else {
        parts.join(" ")
    }
}

mod checklist;
mod signature;

pub use checklist::check;
pub use signature::{SignatureError, canonical, sign, signer, verify};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_status_and_category() {
        let title = |r: Value| section_of(&r).map(|i| SECTIONS[i].title);
        assert_eq!(
            title(json!({"resourceType": "Condition",
                "clinicalStatus": {"coding": [{"code": "resolved"}]}})),
            Some("Past History of Illness")
        );
        assert_eq!(
            title(json!({"resourceType": "Condition"})),
            Some("Problems")
        );
        assert_eq!(
            title(json!({"resourceType": "MedicationRequest", "status": "stopped"})),
            None
        );
        assert_eq!(
            title(json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}})),
            Some("Vital Signs")
        );
        assert_eq!(
            title(json!({"resourceType": "Observation", "status": "entered-in-error"})),
            None
        );
    }

    #[test]
    fn narrative_is_escaped_and_keeps_number_text() {
        let obs: Value = serde_json::from_str(
            r#"{"resourceType": "Observation", "status": "final",
                "code": {"text": "A <b>&"},
                "valueQuantity": {"value": 1.50, "unit": "mg"}}"#,
        )
        .expect("literal");
        let line = entry_line(&obs, &HashMap::new());
        assert_eq!(line, "A &lt;b&gt;&amp;: 1.50 mg (final)");
    }

    #[test]
    fn numbers_outside_the_double_range_cannot_be_signed() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut bundle: Value =
            serde_json::from_str(r#"{"resourceType": "Bundle", "x": 1e400}"#).expect("literal");
        assert!(matches!(
            sign(&mut bundle, &key, 0),
            Err(SignatureError::Canonical(_))
        ));
        assert!(bundle.get("signature").is_none());
    }

    #[test]
    fn signature_verifies_and_breaks_on_change() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut bundle: Value = serde_json::from_str(
            r#"{"resourceType": "Bundle", "type": "document",
                "entry": [{"resource": {"resourceType": "Observation",
                    "valueQuantity": {"value": 163.70}}}]}"#,
        )
        .expect("literal");
        sign(&mut bundle, &key, 0).expect("sign");
        verify(&bundle, &key.verifying_key()).expect("verifies");
        assert_eq!(signer(&bundle).expect("signer"), key.verifying_key());
        // Re-serialized with other whitespace and member order: still verifies.
        let pretty = serde_json::to_string_pretty(&bundle).expect("json");
        let again: Value = serde_json::from_str(&pretty).expect("json");
        verify(&again, &key.verifying_key()).expect("verifies after reformatting");
        // Another key.
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(matches!(
            verify(&bundle, &other.verifying_key()),
            Err(SignatureError::Mismatch)
        ));
        // A changed value.
        let mut changed = bundle.clone();
        changed["entry"][0]["resource"]["valueQuantity"]["value"] = json!(164);
        assert!(matches!(
            verify(&changed, &key.verifying_key()),
            Err(SignatureError::Mismatch)
        ));
        // No signature.
        let mut unsigned = bundle.clone();
        if let Some(map) = unsigned.as_object_mut() {
            map.remove("signature");
        }
        assert!(matches!(
            verify(&unsigned, &key.verifying_key()),
            Err(SignatureError::Missing)
        ));
    }
}
