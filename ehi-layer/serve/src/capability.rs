//! The CapabilityStatement of `GET /metadata`, generated from the `ehi-search` table
//! ([`ehi_search::resource_types`], [`ehi_search::supported_parameters`]) so that the
//! statement lists exactly the types and search parameters the server answers.

use serde_json::{Value, json};

use ehi_vault::time::{instant, now_ms};

/// The interactions every resource type supports.
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// The result parameters the server understands besides the table's.
pub const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_offset",
    "_sort",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
];

/// The CapabilityStatement of a server at `base`.
pub fn capability_statement(base: &str) -> Value {
    let resources: Vec<Value> = ehi_search::resource_types()
        .map(|resource_type| {
            let params: Vec<Value> = ehi_search::supported_parameters(resource_type)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    json!({
                        "name": p.code,
                        "definition": p.definition_url,
                        "type": p.kind.as_str(),
                    })
                })
                .collect();
            let mut resource = json!({
                "type": resource_type,
                "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": params,
            });
            if resource_type == "Patient" {
                resource["operation"] = json!([
                    {"name": "everything",
                     "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                    {"name": "export",
                     "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
                    {"name": "summary",
                     "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"}
                ]);
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now_ms()),
        "kind": "instance",
        "software": {"name": "ehi serve", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "A patient's vault in the invariant network", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"}]}],
                "description": "Bearer tokens minted by `ehi token` (patient, or SMART v2 scopes)."
            },
            "resource": resources,
            "operation": [{"name": "export",
                           "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]
        }]
    })
}
