//! `GET|POST Patient/[id]/$summary` and `Patient/$summary?identifier=`: the signed
//! International Patient Summary of the vault's patient, built by
//! [`ehi_vault::ips::summary`] (the same code `ehi summary` runs) with the entries'
//! fullUrls under this server's base. The summary is signed with the patient's key, so
//! only the patient's own token may ask for it (403 for an app's token: an app reads
//! what its grant allows through search and `$everything`). The request is audited
//! like any other (one entry per request, see `route.rs`).

use axum::http::StatusCode;
use axum::response::Response;

use super::respond::{check_id, fhir_response};
use super::{AppState, Caller, Pairs, ServeError};

/// Answers `$summary` for `Patient/id`, or for the Patient whose identifier is the
/// `identifier` parameter (`system|value` or `value`) when `id` is `None`.
pub(super) async fn patient_summary(
    state: &AppState,
    caller: &Caller,
    id: Option<&str>,
    pairs: &Pairs,
) -> Result<Response, ServeError> {
    if caller.requestor.is_some() {
        return Err(ServeError::Forbidden(
            "the signed patient summary ($summary) is answered to the patient's own token \
             only"
                .into(),
        ));
    }
    for (name, _) in pairs {
        if !matches!(name.as_str(), "identifier" | "_format" | "profile") {
            return Err(ServeError::BadRequest(format!(
                "$summary takes no parameter {name:?} (identifier, profile, _format)"
            )));
        }
    }
    let id = match id {
        Some(id) => id.to_string(),
        None => by_identifier(state, pairs).await?,
    };
    check_id(&id)?;
    let bundle = ehi_vault::ips::summary(&state.vault, &id, &state.base).await?;
    Ok(fhir_response(StatusCode::OK, &bundle))
}

/// The id of the one Patient with the `identifier` parameter.
async fn by_identifier(state: &AppState, pairs: &Pairs) -> Result<String, ServeError> {
    let identifier = pairs
        .iter()
        .find(|(name, _)| name == "identifier")
        .map(|(_, value)| value.as_str())
        .ok_or_else(|| {
            ServeError::BadRequest(
                "Patient/$summary needs identifier=[system|]value (or use Patient/[id]/$summary)"
                    .into(),
            )
        })?;
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("identifier", identifier)
        .finish();
    let hits = state.vault.search("Patient", &query).await?;
    let ids: Vec<&str> = hits
        .resources
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    match ids.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(ServeError::NotFound(format!(
            "no Patient with identifier {identifier}"
        ))),
        more => Err(ServeError::BadRequest(format!(
            "{} Patients have identifier {identifier}; ask Patient/[id]/$summary",
            more.len()
        ))),
    }
}
