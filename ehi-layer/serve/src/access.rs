//! Who is asking and what they may see: the bearer token of a request checked into a
//! [`Caller`], and its [`Confinement`] (grant scopes, patient context) applied to
//! references, ids and resources (see the module docs of [`super`], "Confinement").

use axum::http::{HeaderMap, header};
use serde_json::Value;

use super::{Access, AppState, ServeError};
use ehi_vault::time::now_ms;
use ehi_vault::vault::Vault;

pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Caller, ServeError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ServeError::Unauthorized("a bearer token is required".into()))?
        .to_str()
        .map_err(|_| ServeError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ServeError::Unauthorized("expected Authorization: Bearer <token>".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ServeError::Unauthorized(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    let now = now_ms();
    let (claims, access) = state.key.verify(token.trim(), now / 1000)?;
    let requestor = state.auth.check(&claims, now)?;
    let scopes = claims
        .grant
        .as_deref()
        .and_then(|g| state.auth.grant(g))
        .map(|g| g.info.scopes);
    Ok(Caller {
        access,
        jti: claims.jti,
        requestor,
        confine: Confinement {
            scopes,
            patient: claims.launch_patient,
        },
    })
}

/// The caller of a request.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(super) access: Access,
    pub(super) jti: String,
    /// Who is asking, for the audit log (`None`: the patient).
    pub(super) requestor: Option<ehi_vault::audit::Requestor>,
    /// Which resources it may see at all.
    pub(super) confine: Confinement,
}

/// The resources a token may see beyond its type scopes (see the module docs,
/// "Confinement"): those kept in its grant's scopes, and, with a patient context,
/// those in that patient's compartment or in no patient's compartment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Confinement {
    /// The scopes of the token's grant (`None`: not a grant token).
    scopes: Option<Vec<ehi_vault::scope::Scope>>,
    /// The token's patient context.
    patient: Option<String>,
}

impl Confinement {
    /// Whether nothing is confined (the patient's token, bare-scope tokens).
    pub(super) fn is_open(&self) -> bool {
        self.scopes.is_none() && self.patient.is_none()
    }

    /// Whether a resource kept at `placement` may be seen.
    pub(super) fn allows(&self, placement: &ehi_vault::vault::Placement) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(&placement.scope))
            && self.allows_patients(&placement.patients)
    }

    /// Whether a resource in the compartments of `patients` may be seen.
    pub(super) fn allows_patients(&self, patients: &[String]) -> bool {
        self.patient
            .as_ref()
            .is_none_or(|p| patients.is_empty() || patients.iter().any(|x| x == p))
    }
}

/// The 404 of a resource the caller may not see (the same whether it exists or not).
pub(super) fn not_visible(t: &str, id: &str) -> ServeError {
    ServeError::NotFound(format!("{t}/{id}: no such resource for this token"))
}

/// `refs` without those the caller may not see (in order). With confinement, a
/// reference without a current version is dropped too.
pub(crate) async fn visible_refs(
    state: &AppState,
    caller: &Caller,
    refs: Vec<(String, String)>,
) -> Vec<(String, String)> {
    if caller.confine.is_open() {
        return refs;
    }
    let placements = state.vault.placements(&refs).await;
    refs.into_iter()
        .zip(placements)
        .filter(|(_, p)| p.as_ref().is_some_and(|p| caller.confine.allows(p)))
        .map(|(r, _)| r)
        .collect()
}

/// The ids of type `t` among `ids` that the caller may see (in order).
pub(super) async fn visible_ids(
    state: &AppState,
    caller: &Caller,
    t: &str,
    ids: &[String],
) -> Vec<String> {
    if caller.confine.is_open() {
        return ids.to_vec();
    }
    let refs = ids.iter().map(|id| (t.to_string(), id.clone())).collect();
    visible_refs(state, caller, refs)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// `resources` without those the caller may not see (in order).
pub(crate) async fn visible_resources(
    state: &AppState,
    caller: &Caller,
    resources: Vec<Value>,
) -> Vec<Value> {
    if caller.confine.is_open() {
        return resources;
    }
    let refs: Vec<(String, String)> = resources
        .iter()
        .map(|r| {
            (
                r["resourceType"].as_str().unwrap_or("").to_string(),
                r["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let placements = state.vault.placements(&refs).await;
    resources
        .into_iter()
        .zip(placements)
        .filter(|(_, p)| p.as_ref().is_some_and(|p| caller.confine.allows(p)))
        .map(|(r, _)| r)
        .collect()
}

/// A 404 unless the caller may see `t/id` (a confined caller sees nothing without a
/// current version).
pub(crate) async fn check_visible(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
) -> Result<(), ServeError> {
    if caller.confine.is_open() {
        return Ok(());
    }
    let placement = state
        .vault
        .placements(&[(t.to_string(), id.to_string())])
        .await
        .pop()
        .flatten();
    match placement {
        Some(p) if caller.confine.allows(&p) => Ok(()),
        _ => Err(not_visible(t, id)),
    }
}

/// The patient context of grant tokens: the vault's Patient (the first by id when a
/// household vault keeps several). `/token` answers it as `patient`.
pub async fn context_patient(vault: &Vault) -> Option<String> {
    vault
        .list()
        .await
        .into_iter()
        .find_map(|r| r.strip_prefix("Patient/").map(str::to_string))
}
