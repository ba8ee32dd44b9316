//! `_summary=true` and `_summary=text` (FHIR R4 §3.1.1.5.7 "Summary").
//!
//! `_summary=true` keeps only the elements the R4 specification marks as *summary*
//! (Σ). Here that is a small table of **top-level** summary elements for the types
//! most used by patient apps ([`SUMMARY`], taken from the R4 resource definitions);
//! for every other type the approximation is: drop `text`, `contained` and
//! `extension` (never summary) and keep the rest. Complex elements kept are kept whole
//! (their own non-summary children are not pruned). `id`, `meta`, `implicitRules` and
//! `modifierExtension` are always kept (summary in every resource).
//!
//! `_summary=text` keeps `text`, `id`, `meta` and the type's top-level mandatory
//! elements ([`MANDATORY`], min cardinality 1 in R4; none listed: none kept).
//!
//! Either marks the resource `SUBSETTED` (`meta.tag`, code system
//! `http://terminology.hl7.org/CodeSystem/v3-ObservationValue`), as FHIR requires.

use serde_json::{Value, json};

/// Elements every resource keeps in a summary.
const ALWAYS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "modifierExtension",
];

/// Top-level summary elements (R4 Σ flags) of common types. Choice elements (`[x]`)
/// match every type suffix (`effective[x]` keeps `effectiveDateTime` and
/// `effectivePeriod`).
pub const SUMMARY: &[(&str, &[&str])] = &[
    (
        "Patient",
        &[
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceased[x]",
            "address",
            "managingOrganization",
            "link",
        ],
    ),
    (
        "Observation",
        &[
            "identifier",
            "basedOn",
            "partOf",
            "status",
            "category",
            "code",
            "subject",
            "focus",
            "encounter",
            "effective[x]",
            "issued",
            "performer",
            "value[x]",
            "hasMember",
            "derivedFrom",
            "component",
        ],
    ),
    (
        "Condition",
        &[
            "identifier",
            "clinicalStatus",
            "verificationStatus",
            "category",
            "severity",
            "code",
            "bodySite",
            "subject",
            "encounter",
            "onset[x]",
            "abatement[x]",
            "recordedDate",
            "recorder",
            "asserter",
        ],
    ),
    (
        "Encounter",
        &[
            "identifier",
            "status",
            "class",
            "type",
            "serviceType",
            "priority",
            "subject",
            "episodeOfCare",
            "basedOn",
            "participant",
            "appointment",
            "period",
            "reasonCode",
            "reasonReference",
            "diagnosis",
            "account",
            "location",
            "serviceProvider",
            "partOf",
        ],
    ),
    (
        "MedicationRequest",
        &[
            "identifier",
            "status",
            "statusReason",
            "intent",
            "category",
            "priority",
            "doNotPerform",
            "reported[x]",
            "medication[x]",
            "subject",
            "encounter",
            "authoredOn",
            "requester",
            "performer",
            "performerType",
            "recorder",
            "reasonCode",
            "reasonReference",
            "basedOn",
            "groupIdentifier",
            "insurance",
            "dosageInstruction",
        ],
    ),
    (
        "Immunization",
        &[
            "identifier",
            "status",
            "vaccineCode",
            "patient",
            "occurrence[x]",
            "primarySource",
            "location",
            "manufacturer",
            "lotNumber",
            "performer",
            "reasonCode",
            "reasonReference",
            "isSubpotent",
            "protocolApplied",
        ],
    ),
    (
        "AllergyIntolerance",
        &[
            "identifier",
            "clinicalStatus",
            "verificationStatus",
            "type",
            "category",
            "criticality",
            "code",
            "patient",
            "encounter",
            "onset[x]",
            "recordedDate",
            "recorder",
            "asserter",
            "lastOccurrence",
        ],
    ),
    (
        "Procedure",
        &[
            "identifier",
            "instantiatesCanonical",
            "instantiatesUri",
            "basedOn",
            "partOf",
            "status",
            "statusReason",
            "category",
            "code",
            "subject",
            "encounter",
            "performed[x]",
            "recorder",
            "asserter",
            "performer",
            "location",
            "reasonCode",
            "reasonReference",
            "bodySite",
            "outcome",
        ],
    ),
];

/// Top-level mandatory elements (min 1 in R4) of common types, kept by
/// `_summary=text`.
pub const MANDATORY: &[(&str, &[&str])] = &[
    ("Observation", &["status", "code"]),
    ("Condition", &["subject"]),
    ("Encounter", &["status", "class"]),
    (
        "MedicationRequest",
        &["status", "intent", "medication[x]", "subject"],
    ),
    (
        "Immunization",
        &["status", "vaccineCode", "patient", "occurrence[x]"],
    ),
    ("AllergyIntolerance", &["patient"]),
    ("Procedure", &["status", "subject"]),
    ("DiagnosticReport", &["status", "code"]),
    (
        "Claim",
        &[
            "status",
            "type",
            "use",
            "patient",
            "created",
            "provider",
            "priority",
            "insurance",
        ],
    ),
];

fn listed(table: &[(&str, &'static [&'static str])], t: &str) -> Option<&'static [&'static str]> {
    table.iter().find(|(name, _)| *name == t).map(|(_, e)| *e)
}

/// Whether `key` is one of `elements` (`name[x]` matches `name` + a type name).
fn matches(elements: &[&str], key: &str) -> bool {
    elements.iter().any(|e| match e.strip_suffix("[x]") {
        Some(prefix) => key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == *e,
    })
}

/// `_summary=true`: keeps the summary elements (see the module docs). Returns whether
/// anything was removed.
pub fn summary_true(resource: &mut Value) -> bool {
    let Some(obj) = resource.as_object_mut() else {
        return false;
    };
    let t = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let before = obj.len();
    match listed(SUMMARY, &t) {
        Some(elements) => obj.retain(|k, _| ALWAYS.contains(&k.as_str()) || matches(elements, k)),
        None => obj.retain(|k, _| !matches!(k.as_str(), "text" | "contained" | "extension")),
    }
    obj.len() != before
}

/// `_summary=text`: keeps `text`, `id`, `meta` and the mandatory elements. Returns
/// whether anything was removed.
pub fn summary_text(resource: &mut Value) -> bool {
    let Some(obj) = resource.as_object_mut() else {
        return false;
    };
    let t = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mandatory = listed(MANDATORY, &t).unwrap_or(&[]);
    let before = obj.len();
    obj.retain(|k, _| {
        matches!(k.as_str(), "resourceType" | "id" | "meta" | "text") || matches(mandatory, k)
    });
    obj.len() != before
}

/// Adds the `SUBSETTED` tag to `meta.tag` (once).
pub fn mark_subsetted(resource: &mut Value) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    if let Some(tags) = tags.as_array_mut()
        && !tags.iter().any(|t| t["code"] == "SUBSETTED")
    {
        tags.push(json!({
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_keeps_sigma_elements_and_text_keeps_mandatory() {
        let obs = json!({"resourceType": "Observation", "id": "o", "meta": {"versionId": "1"},
            "text": {"status": "generated", "div": "<div/>"}, "status": "final",
            "code": {"text": "hr"}, "effectiveDateTime": "2022-01-01", "note": [{"text": "x"}],
            "valueQuantity": {"value": 1}, "referenceRange": [{"text": "n"}]});
        let mut s = obs.clone();
        assert!(summary_true(&mut s));
        let keys: Vec<&String> = s
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert!(s.get("effectiveDateTime").is_some() && s.get("valueQuantity").is_some());
        assert!(
            s.get("text").is_none() && s.get("note").is_none(),
            "{keys:?}"
        );
        assert!(s.get("referenceRange").is_none());
        let mut t = obs.clone();
        assert!(summary_text(&mut t));
        assert!(t.get("text").is_some() && t.get("status").is_some() && t.get("code").is_some());
        assert!(t.get("valueQuantity").is_none());
        mark_subsetted(&mut t);
        mark_subsetted(&mut t);
        assert_eq!(t["meta"]["tag"].as_array().map(Vec::len), Some(1));
        // Unlisted type: text, contained and extension dropped.
        let mut other = json!({"resourceType": "Basic", "id": "b", "text": {}, "code": {}});
        assert!(summary_true(&mut other));
        assert!(other.get("code").is_some() && other.get("text").is_none());
    }
}
