//! `GET Patient/[id]/$everything`: the patient compartment and the resources it
//! references, paged like search.

use std::collections::HashSet;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::access::{check_visible, visible_refs, visible_resources};
use super::cache::fetch_refs;
use super::params::{Page, entry};
use super::respond::{check_id, fhir_response, known_type};
use super::search::relative_reference;
use super::{AppState, Caller, Pairs, Perm, ServeError};
use ehi_vault::fhir::valid_id;
use ehi_vault::time::{instant, now_ms};

pub(super) async fn everything(
    state: &AppState,
    caller: &Caller,
    id: &str,
    pairs: &Pairs,
) -> Result<Response, ServeError> {
    check_id(id)?;
    let page = Page::from_pairs(pairs)?;
    check_visible(state, caller, "Patient", id).await?;
    // 404/410 for an unknown or deleted patient.
    state.vault.read("Patient", id).await?;
    let compartment = state.vault.patient_compartment(id).await?;
    let mut resources: Vec<Value> = visible_resources(state, caller, compartment)
        .await
        .into_iter()
        .filter(|r| {
            r["resourceType"]
                .as_str()
                .is_some_and(|t| caller.access.allows(t, Perm::Read))
        })
        .collect();
    // The operation also returns what the compartment's resources reference
    // (practitioners, organizations, locations, medications, ...).
    let mut seen: HashSet<String> = resources
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{}/{}",
                r["resourceType"].as_str()?,
                r["id"].as_str()?
            ))
        })
        .collect();
    let mut wanted: Vec<(String, String)> = Vec::new();
    for r in &resources {
        collect_references(r, &mut |reference| {
            if let Some((t, rid)) = relative_reference(reference)
                && caller.access.allows(t, Perm::Read)
                && known_type(t).is_ok()
                && valid_id(rid)
                && seen.insert(format!("{t}/{rid}"))
            {
                wanted.push((t.to_string(), rid.to_string()));
            }
        });
    }
    let wanted = visible_refs(state, caller, wanted).await;
    resources.extend(fetch_refs(state, wanted).await?);
    let total = resources.len();
    let links = page.links(
        &format!("{}/Patient/{id}/$everything", state.base),
        pairs,
        total,
    );
    let entries: Vec<Value> = page
        .slice(&resources)
        .iter()
        .map(|r| entry(&state.base, r.clone(), "match"))
        .collect();
    Ok(fhir_response(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle", "type": "searchset", "timestamp": instant(now_ms()),
            "total": total, "link": links, "entry": entries,
        }),
    ))
}

/// Calls `f` with every `reference` string in `value`.
fn collect_references(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference") {
                f(reference);
            }
            map.values().for_each(|v| collect_references(v, f));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, f)),
        _ => {}
    }
}
