//! Read interactions: read, vread, instance history and type history.

use axum::http::StatusCode;
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::access::{check_visible, not_visible, visible_ids};
use super::cache::{FETCH_CONCURRENCY, cached_read};
use super::params::{Page, Summary, parse_elements, shape_resource};
use super::respond::{check_id, fhir_response, resource_response};
use super::{AppState, Caller, Pairs, Perm, ServeError};
use ehi_vault::error::EhiError;
use ehi_vault::time::{instant, now_ms};
use ehi_vault::vault::HistoryEntry;

pub(super) async fn read(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
    pairs: &Pairs,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    check_id(id)?;
    let mut summary = Summary::False;
    let mut elements: Option<Vec<String>> = None;
    for (k, v) in pairs {
        match k.as_str() {
            "_summary" => summary = Summary::parse(v)?,
            "_elements" => elements = Some(parse_elements(v)),
            _ => {}
        }
    }
    if summary == Summary::Count {
        return Err(ServeError::BadRequest(
            "_summary=count applies to searches".into(),
        ));
    }
    check_visible(state, caller, t, id).await?;
    let resource = cached_read(&state.vault, &state.cache, t, id).await?;
    let resource = shape_resource(resource, summary, elements.as_deref());
    Ok(resource_response(StatusCode::OK, &resource, None))
}

pub(super) async fn vread(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
    v: &str,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    check_id(id)?;
    let version: u64 = v
        .parse()
        .map_err(|_| ServeError::NotFound(format!("{t}/{id}/_history/{v}: no such version")))?;
    check_visible(state, caller, t, id).await?;
    let resource = state.vault.read_version(t, id, version).await?;
    if !caller
        .confine
        .allows_patients(&ehi_vault::fhir::patient_refs(t, id, &resource))
    {
        return Err(not_visible(t, id));
    }
    Ok(resource_response(StatusCode::OK, &resource, None))
}

fn history_entry(base: &str, t: &str, id: &str, h: &HistoryEntry) -> Value {
    let (method, url) = if h.deleted {
        ("DELETE", format!("{t}/{id}"))
    } else if h.version == 1 {
        ("POST", t.to_string())
    } else {
        ("PUT", format!("{t}/{id}"))
    };
    let mut entry = json!({
        "fullUrl": format!("{base}/{t}/{id}"),
        "request": {"method": method, "url": url},
        "response": {"status": if h.deleted { "204" } else if h.version == 1 { "201" } else { "200" },
                     "etag": format!("W/\"{}\"", h.version),
                     "lastModified": h.last_updated},
    });
    if let Some(r) = &h.resource {
        entry["resource"] = r.clone();
    }
    entry
}

pub(super) async fn history(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    check_id(id)?;
    check_visible(state, caller, t, id).await?;
    let versions = state.vault.history(t, id).await?;
    let entries: Vec<Value> = versions
        .iter()
        .filter(|h| {
            h.resource.as_ref().is_none_or(|r| {
                caller
                    .confine
                    .allows_patients(&ehi_vault::fhir::patient_refs(t, id, r))
            })
        })
        .map(|h| history_entry(&state.base, t, id, h))
        .collect();
    Ok(fhir_response(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle", "type": "history", "timestamp": instant(now_ms()),
            "total": entries.len(),
            "link": [{"relation": "self", "url": format!("{}/{t}/{id}/_history", state.base)}],
            "entry": entries,
        }),
    ))
}

pub(super) async fn type_history(
    state: &AppState,
    caller: &Caller,
    t: &str,
    pairs: &Pairs,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    let page = Page::from_pairs(pairs)?;
    let prefix = format!("{t}/");
    let ids: Vec<String> = state
        .vault
        .list()
        .await
        .into_iter()
        .filter_map(|r| r.strip_prefix(&prefix).map(str::to_string))
        .collect();
    let ids = visible_ids(state, caller, t, &ids).await;
    let futures: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let vault = state.vault.clone();
            let t = t.to_string();
            async move { vault.history(&t, &id).await.map(|h| (id, h)) }
        })
        .collect();
    let histories: Vec<Result<(String, Vec<HistoryEntry>), EhiError>> =
        futures_util::stream::iter(futures)
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
    let mut all: Vec<(String, HistoryEntry)> = Vec::new();
    for h in histories {
        match h {
            Ok((id, versions)) => all.extend(
                versions
                    .into_iter()
                    .filter(|v| {
                        v.resource.as_ref().is_none_or(|r| {
                            caller
                                .confine
                                .allows_patients(&ehi_vault::fhir::patient_refs(t, &id, r))
                        })
                    })
                    .map(|v| (id.clone(), v)),
            ),
            Err(EhiError::NotFound(_) | EhiError::Gone(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    all.sort_by(|a, b| {
        b.1.last_updated
            .cmp(&a.1.last_updated)
            .then_with(|| a.0.cmp(&b.0))
            .then_with(|| b.1.version.cmp(&a.1.version))
    });
    let total = all.len();
    let entries: Vec<Value> = page
        .slice(&all)
        .iter()
        .map(|(id, h)| history_entry(&state.base, t, id, h))
        .collect();
    let links = page.links(&format!("{}/{t}/_history", state.base), pairs, total);
    Ok(fhir_response(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle", "type": "history", "timestamp": instant(now_ms()),
            "total": total, "link": links, "entry": entries,
        }),
    ))
}
