//! FHIR Bulk Data Access (v2) export over the vault: `GET [base]/$export`,
//! `GET [base]/Patient/$export` and `GET [base]/Patient/[id]/$export` with
//! `Prefer: respond-async` answer 202 with a `Content-Location` status url; polling it
//! answers 202 with `X-Progress` while the job runs, then 200 with the manifest
//! `{transactionTime, request, requiresAccessToken, output: [{type, url, count}], error}`;
//! the NDJSON files are served by this server (`requiresAccessToken: true`) from
//! memory. `DELETE` on the status url drops the job. Jobs belong to the token that
//! started them and vanish when the server stops (nothing is written to disk).
//!
//! A confined token (a grant's, or one with a patient context) exports only what it may
//! see (see the module docs of [`super`], "Confinement").
//!
//! Supported kick-off parameters: `_outputFormat` (`application/fhir+ndjson`,
//! `application/ndjson`, `ndjson`), `_type`, `_since` and `_typeFilter`. Only the types
//! the token may read are exported; naming another type in `_type` or `_typeFilter` is
//! a 403.
//!
//! `_typeFilter` (repeatable, each a comma-separated list of `Type?query` with the
//! query URL-encoded, as the Bulk Data IG v2 defines it): the resources of a type with
//! filters are exported only when they match at least one of its filters (the queries
//! run through the vault's search, so they accept the parameters search accepts, and
//! an invalid one is a 400 at kick-off); types without a filter are exported whole.
//! A filter on a type outside `_type` is a 400.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ServeError, outcome};
use super::token::Perm;
use super::{AppState, Caller, Pairs, fhir_response, known_type};
use ehi_vault::error::EhiError;
use ehi_vault::time::{instant, now_ms};

/// What is exported.
#[derive(Clone, Debug)]
pub enum Level {
    /// Everything.
    System,
    /// The compartments of every Patient.
    Patients,
    /// The compartment of one Patient.
    Patient(String),
}

#[derive(Debug)]
enum JobState {
    Running {
        done: usize,
        total: usize,
        /// What `done` and `total` count: `resources` or `patients`.
        unit: &'static str,
    },
    Done {
        files: BTreeMap<String, (usize, String)>,
    },
    Failed(String),
}

#[derive(Debug)]
struct Job {
    owner: String,
    request: String,
    transaction_time: String,
    state: JobState,
}

/// The export jobs of a server (in memory).
#[derive(Debug, Default)]
pub struct Jobs(Mutex<HashMap<String, Job>>);

impl Jobs {
    /// Drops every job and its files (the vault was removed).
    pub(crate) fn clear(&self) {
        self.with(HashMap::clear);
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Job>) -> R) -> R {
        let mut guard = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

/// Kick-off.
pub(crate) async fn kickoff(
    state: &Arc<AppState>,
    caller: &Caller,
    headers: &HeaderMap,
    pairs: &Pairs,
    level: Level,
    request: String,
) -> Result<Response, ServeError> {
    let prefer = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "respond-async"));
    if !prefer {
        return Err(ServeError::BadRequest(
            "a bulk export needs the header Prefer: respond-async".into(),
        ));
    }
    if let Level::Patient(id) = &level {
        if !ehi_vault::fhir::valid_id(id) {
            return Err(ServeError::NotFound(format!("{id:?} is not a valid id")));
        }
        super::check_visible(state, caller, "Patient", id).await?;
        // 404 or 410 now rather than a failed job later.
        state.vault.read("Patient", id).await?;
    }
    let mut types: Option<Vec<String>> = None;
    let mut since: Option<i64> = None;
    let mut filters: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "_outputFormat" => {
                if !matches!(
                    v.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) {
                    return Err(ServeError::BadRequest(format!(
                        "_outputFormat={v}: only application/fhir+ndjson is produced"
                    )));
                }
            }
            "_type" => {
                let list = types.get_or_insert_with(Vec::new);
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let t = known_type(t).map_err(|e| ServeError::BadRequest(e.to_string()))?;
                    caller.access.require(t, Perm::Read)?;
                    list.push(t.to_string());
                }
            }
            "_since" => {
                let range = ehi_search::date::parse(v)
                    .map_err(|e| ServeError::BadRequest(format!("_since={v}: {e}")))?;
                since = Some(range.lo);
            }
            "_typeFilter" => {
                for filter in split_type_filter(v) {
                    let (t, query) = filter.split_once('?').ok_or_else(|| {
                        ServeError::BadRequest(format!("_typeFilter={filter}: expected Type?query"))
                    })?;
                    let t = known_type(t).map_err(|e| {
                        ServeError::BadRequest(format!("_typeFilter={filter}: {e}"))
                    })?;
                    caller.access.require(t, Perm::Read)?;
                    caller.access.require(t, Perm::Search)?;
                    filters.push((t.to_string(), query.to_string()));
                }
            }
            "_format" => {}
            other => {
                return Err(ServeError::BadRequest(format!(
                    "{other} is not a supported bulk export parameter"
                )));
            }
        }
    }
    for (t, query) in &filters {
        if types.as_ref().is_some_and(|ts| !ts.contains(t)) {
            return Err(ServeError::BadRequest(format!(
                "_typeFilter on {t}, which is not in _type"
            )));
        }
        // Check the query now (400) rather than fail the job later.
        state
            .vault
            .search_ids(t, query)
            .await
            .map_err(|e| match e {
                // The query itself: the client's fault.
                EhiError::InvalidArgument(_) | EhiError::Search(_) => {
                    ServeError::BadRequest(format!("_typeFilter={t}?{query}: {e}"))
                }
                // Loading the index (network, storage): not the client's.
                other => ServeError::Vault(other),
            })?;
    }
    let job_id = hex::encode(
        ehi_vault::keys::random_bytes::<16>()
            .map_err(|e| ServeError::Vault(EhiError::Keystore(e)))?,
    );
    state.jobs.with(|jobs| {
        jobs.insert(
            job_id.clone(),
            Job {
                owner: caller.jti.clone(),
                request,
                transaction_time: instant(now_ms()),
                state: JobState::Running {
                    done: 0,
                    total: 0,
                    unit: progress_unit(&level),
                },
            },
        )
    });
    let task_state = state.clone();
    let task_caller = caller.clone();
    let task_job = job_id.clone();
    tokio::spawn(async move {
        let result = run(
            &task_state,
            &task_caller,
            &task_job,
            level,
            types,
            since,
            &filters,
        )
        .await;
        task_state.jobs.with(|jobs| {
            if let Some(job) = jobs.get_mut(&task_job) {
                job.state = match result {
                    Ok(files) => JobState::Done { files },
                    Err(e) => JobState::Failed(e.to_string()),
                };
            }
        });
    });
    let location = format!("{}/$export-status/{job_id}", state.base);
    let mut response = fhir_response(
        StatusCode::ACCEPTED,
        &json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information",
                "code": "informational", "diagnostics": "export started"}]}),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

async fn run(
    state: &AppState,
    caller: &Caller,
    job_id: &str,
    level: Level,
    types: Option<Vec<String>>,
    since: Option<i64>,
    filters: &[(String, String)],
) -> Result<BTreeMap<String, (usize, String)>, ServeError> {
    // Type → ids matching at least one of its filters.
    let mut filtered: HashMap<String, HashSet<String>> = HashMap::new();
    for (t, query) in filters {
        let (_, ids) = state.vault.search_ids(t, query).await?;
        filtered.entry(t.clone()).or_default().extend(ids);
    }
    let passes = |t: &str, id: &str| filtered.get(t).is_none_or(|ids| ids.contains(id));
    let wanted = |t: &str| -> bool {
        caller.access.allows(t, Perm::Read)
            && types.as_ref().is_none_or(|ts| ts.iter().any(|x| x == t))
    };
    let resources: Vec<Value> = match level {
        Level::System => {
            let refs: Vec<(String, String)> = super::current_refs(&state.vault)
                .await
                .into_iter()
                .filter(|(t, id)| wanted(t) && passes(t, id))
                .collect();
            let refs = super::visible_refs(state, caller, refs).await;
            let total = refs.len();
            let mut out = Vec::with_capacity(total);
            for chunk in refs.chunks(256) {
                out.extend(super::fetch_refs(state, chunk.to_vec()).await?);
                progress(
                    state,
                    job_id,
                    out.len(),
                    total,
                    progress_unit(&Level::System),
                );
            }
            out
        }
        Level::Patients | Level::Patient(_) => {
            let patients: Vec<String> = match level {
                Level::Patient(id) => {
                    state.vault.read("Patient", &id).await?;
                    vec![id]
                }
                _ => state
                    .vault
                    .list()
                    .await
                    .into_iter()
                    .filter_map(|r| r.strip_prefix("Patient/").map(str::to_string))
                    .filter(|p| caller.confine.allows_patients(std::slice::from_ref(p)))
                    .collect(),
            };
            let mut out = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (i, p) in patients.iter().enumerate() {
                let compartment = state.vault.patient_compartment(p).await?;
                for r in super::visible_resources(state, caller, compartment).await {
                    let key = format!("{}/{}", r["resourceType"], r["id"]);
                    if r["resourceType"].as_str().is_some_and(&wanted) && seen.insert(key) {
                        out.push(r);
                    }
                }
                progress(
                    state,
                    job_id,
                    i + 1,
                    patients.len(),
                    progress_unit(&Level::Patients),
                );
            }
            out
        }
    };
    let mut files: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for r in resources {
        let Some(t) = r["resourceType"].as_str() else {
            continue;
        };
        if let Some(since) = since {
            let updated = r
                .pointer("/meta/lastUpdated")
                .and_then(Value::as_str)
                .and_then(|u| ehi_search::date::parse(u).ok());
            if updated.is_some_and(|u| u.lo < since) {
                continue;
            }
        }
        if !wanted(t) || !passes(t, r["id"].as_str().unwrap_or("")) {
            continue;
        }
        let line = serde_json::to_string(&r).map_err(|e| ServeError::Token(e.to_string()))?;
        let file = files.entry(t.to_string()).or_default();
        file.0 += 1;
        file.1.push_str(&line);
        file.1.push('\n');
    }
    Ok(files)
}

/// The `Type?query` items of one `_typeFilter` value: split at commas, except commas
/// inside a query (an OR list such as `code=a,b`), recognised because the text after
/// them does not start with `Type?`.
fn split_type_filter(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in value.split(',') {
        let starts_filter = piece
            .split_once('?')
            .is_some_and(|(t, _)| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphabetic()));
        match out.last_mut() {
            Some(last) if !starts_filter => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out.retain(|f| !f.trim().is_empty());
    out
}

fn progress(state: &AppState, job_id: &str, done: usize, total: usize, unit: &'static str) {
    state.jobs.with(|jobs| {
        if let Some(job) = jobs.get_mut(job_id) {
            job.state = JobState::Running { done, total, unit };
        }
    });
}

/// What a job at `level` counts in its progress: system-level jobs go through the
/// resources, patient-level jobs through the patients' compartments.
fn progress_unit(level: &Level) -> &'static str {
    match level {
        Level::System => "resources",
        Level::Patients | Level::Patient(_) => "patients",
    }
}

/// The `X-Progress` value of a running job: `3/10 patients`, `512/2048 resources`.
fn progress_text(done: usize, total: usize, unit: &str) -> String {
    format!("{done}/{total} {unit}")
}

fn not_found(job: &str) -> ServeError {
    ServeError::NotFound(format!("no export job {job:?}"))
}

/// Polling.
pub(crate) fn status(state: &AppState, caller: &Caller, job: &str) -> Result<Response, ServeError> {
    state.jobs.with(|jobs| {
        let j = jobs
            .get(job)
            .filter(|j| j.owner == caller.jti)
            .ok_or_else(|| not_found(job))?;
        match &j.state {
            JobState::Running { done, total, unit } => {
                let mut response = StatusCode::ACCEPTED.into_response();
                if let Ok(v) = HeaderValue::from_str(&progress_text(*done, *total, unit)) {
                    response.headers_mut().insert("x-progress", v);
                }
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Ok(response)
            }
            JobState::Failed(message) => Ok(fhir_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &outcome("exception", message),
            )),
            JobState::Done { files } => {
                let output: Vec<Value> = files
                    .iter()
                    .map(|(t, (count, _))| {
                        json!({"type": t, "count": count,
                               "url": format!("{}/$export-file/{job}/{t}.ndjson", state.base)})
                    })
                    .collect();
                let manifest = json!({
                    "transactionTime": j.transaction_time,
                    "request": j.request,
                    "requiresAccessToken": true,
                    "output": output,
                    "error": [],
                });
                Ok(axum::Json(manifest).into_response())
            }
        }
    })
}

/// `DELETE` on the status url.
pub(crate) fn cancel(state: &AppState, caller: &Caller, job: &str) -> Result<Response, ServeError> {
    state.jobs.with(|jobs| {
        if jobs.get(job).is_some_and(|j| j.owner == caller.jti) {
            jobs.remove(job);
            Ok(StatusCode::ACCEPTED.into_response())
        } else {
            Err(not_found(job))
        }
    })
}

/// One NDJSON file.
pub(crate) fn file(
    state: &AppState,
    caller: &Caller,
    job: &str,
    name: &str,
) -> Result<Response, ServeError> {
    state.jobs.with(|jobs| {
        let j = jobs
            .get(job)
            .filter(|j| j.owner == caller.jti)
            .ok_or_else(|| not_found(job))?;
        let JobState::Done { files } = &j.state else {
            return Err(ServeError::NotFound(format!(
                "export job {job} is not done"
            )));
        };
        let t = name.strip_suffix(".ndjson").unwrap_or(name);
        let (_, body) = files
            .get(t)
            .ok_or_else(|| ServeError::NotFound(format!("no file {name} in job {job}")))?;
        Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+ndjson"),
            )],
            body.clone(),
        )
            .into_response())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_names_what_the_job_counts() {
        assert_eq!(
            progress_text(3, 10, progress_unit(&Level::Patients)),
            "3/10 patients"
        );
        assert_eq!(
            progress_text(1, 1, progress_unit(&Level::Patient("p1".into()))),
            "1/1 patients"
        );
        assert_eq!(
            progress_text(512, 2048, progress_unit(&Level::System)),
            "512/2048 resources"
        );
    }
}
