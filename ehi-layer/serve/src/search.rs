//! Search (`GET [type]?…`, `POST [type]/_search`): the parameters it takes, the
//! handling preference for unknown ones, the searchset Bundle, and `_include` /
//! `_revinclude`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::access::{visible_ids, visible_refs};
use super::cache::{cached_search, fetch_all, fetch_refs};
use super::params::{Page, Summary, entry, parse_elements, shape_resource};
use super::respond::{fhir_response, known_type};
use super::{AppState, Caller, Pairs, Perm, ServeError};
use ehi_vault::fhir::valid_id;
use ehi_vault::time::{instant, now_ms};

/// Result parameters handled here, not by the index.
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_offset",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
    "_total",
];

/// FHIR's handling preference (`Prefer: handling=strict|lenient`, strict by default):
/// whether unknown or unsupported search parameters are refused (400) or ignored and
/// reported in an OperationOutcome entry of the Bundle.
fn lenient(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
}

/// Whether `key` (`code`, `code:text`, `subject.name`, `_sort`) names a parameter the
/// search of `t` knows.
fn known_search_parameter(t: &str, key: &str) -> bool {
    let name = key.split([':', '.']).next().unwrap_or(key);
    name == "_sort" || ehi_search::parameter(t, name).is_some()
}

/// `_total`: whether the Bundle carries `total` (`none` leaves it out; `estimate` and
/// `accurate` both give the exact count).
fn parse_total(value: &str) -> Result<bool, ServeError> {
    match value {
        "none" => Ok(false),
        "estimate" | "accurate" => Ok(true),
        other => Err(ServeError::BadRequest(format!(
            "_total={other} is not supported (none, estimate, accurate are)"
        ))),
    }
}

pub(super) async fn search(
    state: &AppState,
    caller: &Caller,
    t: &str,
    pairs: Pairs,
    headers: &HeaderMap,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Search)?;
    let page = Page::from_pairs(&pairs)?;
    let lenient = lenient(headers);
    let mut summary = Summary::False;
    let mut elements: Option<Vec<String>> = None;
    let mut includes = Vec::new();
    let mut revincludes = Vec::new();
    let mut with_total = true;
    let mut ignored: Vec<String> = Vec::new();
    let mut index_pairs: Vec<(&str, &str)> = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "_summary" => summary = Summary::parse(v)?,
            "_elements" => elements = Some(parse_elements(v)),
            "_include" => includes.push(Include::parse(t, v, false)?),
            "_revinclude" => revincludes.push(Include::parse(t, v, true)?),
            "_total" => with_total = parse_total(v)?,
            k if RESULT_PARAMS.contains(&k) => {}
            k if known_search_parameter(t, k) => index_pairs.push((k, v)),
            k if lenient => ignored.push(k.to_string()),
            k => {
                return Err(ServeError::BadRequest(format!(
                    "unknown search parameter {k:?} for {t} (send `Prefer: handling=lenient` \
                     to have unknown parameters ignored)"
                )));
            }
        }
    }
    // Unknown parameters ignored under `handling=lenient`, reported as FHIR asks.
    let outcome_entry = (!ignored.is_empty()).then(|| {
        let issues: Vec<Value> = ignored
            .iter()
            .map(|k| {
                json!({"severity": "warning", "code": "not-supported",
                       "diagnostics": format!("search parameter {k:?} is not supported for {t}: ignored (Prefer: handling=lenient)")})
            })
            .collect();
        json!({"resource": {"resourceType": "OperationOutcome", "issue": issues},
               "search": {"mode": "outcome"}})
    });
    let query = encode_query(&index_pairs);
    let mut found = cached_search(&state.vault, &state.cache, t, &query).await?;
    if !caller.confine.is_open() {
        let ids = visible_ids(state, caller, t, &found.1).await;
        found = Arc::new((ids.len(), ids));
    }
    let (total, ids) = (found.0, &found.1);
    let base_url = format!("{}/{t}", state.base);
    let finish = |mut bundle: Value| {
        if !with_total && let Some(obj) = bundle.as_object_mut() {
            obj.remove("total");
        }
        if let Some(outcome) = &outcome_entry {
            match bundle.get_mut("entry").and_then(Value::as_array_mut) {
                Some(entries) => entries.push(outcome.clone()),
                None => bundle["entry"] = json!([outcome]),
            }
        }
        fhir_response(StatusCode::OK, &bundle)
    };
    if summary == Summary::Count {
        return Ok(finish(
            json!({"resourceType": "Bundle", "type": "searchset", "timestamp": instant(now_ms()),
                    "total": total, "link": [{"relation": "self", "url": page.links(&base_url, &pairs, total)[0]["url"]}]}),
        ));
    }
    caller.access.require(t, Perm::Read)?;
    let matches = fetch_all(state, t, page.slice(ids)).await?;
    let mut seen: HashSet<String> = matches
        .iter()
        .filter_map(|r| r["id"].as_str().map(|id| format!("{t}/{id}")))
        .collect();
    let mut included = Vec::new();
    for inc in &includes {
        included.extend(inc.forward(state, caller, &matches, &mut seen).await?);
    }
    for inc in &revincludes {
        included.extend(inc.reverse(state, caller, t, &matches, &mut seen).await?);
    }
    let shape = |r: Value| shape_resource(r, summary, elements.as_deref());
    let mut entries: Vec<Value> = matches
        .into_iter()
        .map(|r| entry(&state.base, shape(r), "match"))
        .collect();
    entries.extend(
        included
            .into_iter()
            .map(|r| entry(&state.base, shape(r), "include")),
    );
    Ok(finish(json!({
        "resourceType": "Bundle", "type": "searchset", "timestamp": instant(now_ms()),
        "total": total, "link": page.links(&base_url, &pairs, total), "entry": entries,
    })))
}

/// A form-urlencoded query string.
fn encode_query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// One `_include` (`Source:param[:Target]`) or `_revinclude`.
#[derive(Debug)]
struct Include {
    source: String,
    param: &'static ehi_search::ParamDef,
    target: Option<String>,
}

impl Include {
    fn parse(searched: &str, value: &str, reverse: bool) -> Result<Include, ServeError> {
        let what = if reverse { "_revinclude" } else { "_include" };
        let bad = |why: &str| ServeError::BadRequest(format!("{what}={value}: {why}"));
        let mut parts = value.split(':');
        let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
            return Err(bad("expected Type:parameter[:Target]"));
        };
        let target = parts.next().map(str::to_string);
        if parts.next().is_some() || value.contains('*') {
            return Err(bad("expected Type:parameter[:Target] (no wildcards)"));
        }
        if !reverse && source != searched {
            return Err(bad(&format!("the source type must be {searched}")));
        }
        if let Some(target) = &target {
            known_type(target).map_err(|_| bad("unknown target type"))?;
        }
        if reverse && target.as_deref().is_some_and(|t| t != searched) {
            return Err(bad(&format!("the target type must be {searched}")));
        }
        let param = ehi_search::parameter(source, param)
            .filter(|p| p.kind == ehi_search::ParamKind::Reference)
            .ok_or_else(|| bad("not a reference search parameter of that type"))?;
        Ok(Include {
            source: source.to_string(),
            param,
            target,
        })
    }

    /// The resources referenced by `matches` (that the caller may read).
    async fn forward(
        &self,
        state: &AppState,
        caller: &Caller,
        matches: &[Value],
        seen: &mut HashSet<String>,
    ) -> Result<Vec<Value>, ServeError> {
        let expression =
            ehi_search::fhirpath::Expression::parse(self.param.expression, &self.source)
                .map_err(|e| ServeError::BadRequest(format!("_include: {e}")))?;
        let mut wanted: Vec<(String, String)> = Vec::new();
        for resource in matches {
            for node in expression.evaluate(resource) {
                let Some(reference) = node.value.get("reference").and_then(Value::as_str) else {
                    continue;
                };
                let Some((t, id)) = relative_reference(reference) else {
                    continue;
                };
                if self.target.as_deref().is_some_and(|target| target != t)
                    || !caller.access.allows(t, Perm::Read)
                    || known_type(t).is_err()
                    || !valid_id(id)
                {
                    continue;
                }
                if seen.insert(format!("{t}/{id}")) {
                    wanted.push((t.to_string(), id.to_string()));
                }
            }
        }
        let wanted = visible_refs(state, caller, wanted).await;
        fetch_refs(state, wanted).await
    }

    /// The resources of the source type referencing any of `matches`.
    async fn reverse(
        &self,
        state: &AppState,
        caller: &Caller,
        t: &str,
        matches: &[Value],
        seen: &mut HashSet<String>,
    ) -> Result<Vec<Value>, ServeError> {
        if matches.is_empty()
            || !caller.access.allows(&self.source, Perm::Search)
            || !caller.access.allows(&self.source, Perm::Read)
        {
            return Ok(Vec::new());
        }
        let targets: Vec<String> = matches
            .iter()
            .filter_map(|r| r["id"].as_str().map(|id| format!("{t}/{id}")))
            .collect();
        let query = encode_query(&[(self.param.code, &targets.join(","))]);
        let (_, ids) = state.vault.search_ids(&self.source, &query).await?;
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| seen.insert(format!("{}/{id}", self.source)))
            .collect();
        let ids = visible_ids(state, caller, &self.source, &ids).await;
        fetch_all(state, &self.source, &ids).await
    }
}

/// `Type/id` of a relative (or absolute `…/Type/id[/_history/n]`) reference.
pub(super) fn relative_reference(reference: &str) -> Option<(&str, &str)> {
    let reference = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = reference.rsplit('/');
    let id = parts.next()?;
    let t = parts.next()?;
    Some((t, id))
}
