//! Reading FHIR R4 input into a list of changes: Bundles (transaction, batch,
//! collection, searchset, document, history), single resources, and Bulk Data NDJSON.
//!
//! ## Rules
//! - Every entry must hold a JSON object with a valid `resourceType` (`[A-Z][A-Za-z]*`)
//!   and, when present, a valid `id` (`[A-Za-z0-9-.]{1,64}`) and `meta.lastUpdated` (a
//!   FHIR instant). Anything else stops the import with an error naming the input and
//!   the entry (`entry 12 (fullUrl urn:uuid:…)` or `line 7`).
//! - Every resource must have the FHIR R4 structure ([`crate::validate`]); one that does
//!   not stops the import with its entry, element paths and rules
//!   ([`ImportError::Invalid`]), unless [`ImportOptions::lenient`] stores it with a
//!   warning in the notes.
//! - **Ids are stable**: an entry keeps its `resource.id`; without one it takes the
//!   uuid (or oid) of its `urn:uuid:`/`urn:oid:` fullUrl; only an entry with neither gets
//!   a random UUID. Re-importing the same bundle therefore updates the same resources
//!   instead of duplicating them (a POST is treated as "create or update this id").
//! - **References**: every `reference` naming a `urn:uuid:`/`urn:oid:` fullUrl of the
//!   bundle, or an entry's absolute fullUrl, is rewritten to `Type/id`. A `urn:` reference
//!   with no matching entry, a malformed relative reference, and a conditional reference
//!   (`Type?identifier=system|value`) that does not match exactly one entry of the
//!   bundle are errors. Absolute references to other servers and `#contained` ones are
//!   kept as they are.
//! - A **duplicate fullUrl** is an error, except between entries whose `meta.versionId`
//!   differ (FHIR bdl-7: versions of one resource) and in history bundles.
//! - transaction/batch: POST and PUT store the resource, DELETE `Type/id` records a
//!   deletion, GET/HEAD entries are skipped (noted), PATCH and conditional deletes are
//!   refused. A conditional update (`Type?…`) uses the resource's own id.
//! - searchset: `search.mode = outcome` entries are skipped.
//! - document: every entry (the Composition first) is stored as its own resource; the
//!   Bundle wrapper (identifier, timestamp, signature) is not kept.
//! - history: entries are applied oldest first (a history bundle lists newest first);
//!   DELETE entries record deletions.
//! - NDJSON (a `.ndjson` file, or any input that is one JSON object per line): each
//!   line is a resource; references must already be relative.
//! - Entries naming the same resource more than once become successive versions, in
//!   input order.
//! - **Versions**: the vault numbers versions 1, 2, … and sets `meta.versionId`; a
//!   numeric incoming `meta.versionId` higher than the next number is kept (so an
//!   exported resource re-imports with its number). An incoming `meta.lastUpdated` is
//!   kept (the source's time); without one, the import time is set. Content equal to
//!   the current version (ignoring those two fields), or to the stored version with the
//!   same incoming `meta.versionId`, is not stored again (re-importing an export with
//!   history changes nothing).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::ImportError;

/// One input file (or in-memory document).
#[derive(Clone, Debug)]
pub struct Input {
    /// Name used in error messages (the path).
    pub name: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Input {
    /// Reads a file.
    pub fn from_path(path: &Path) -> Result<Input, ImportError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|error| ImportError::Read {
            source_name: name.clone(),
            error,
        })?;
        Ok(Input { name, bytes })
    }

    /// An in-memory input.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Input {
        Input {
            name: name.into(),
            bytes: bytes.into(),
        }
    }
}

/// What one change does.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// Store this content as a new version.
    Put(Value),
    /// Record a deletion (at this instant and as this version, when the input says).
    Delete {
        /// `response.lastModified` of a history entry.
        at: Option<String>,
        /// The version in `response.etag` (`W/"3"`) of a history entry.
        version: Option<u64>,
    },
}

/// One change to one resource, in input order.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub resource_type: String,
    pub id: String,
    pub op: Op,
}

/// How an import treats input that breaks the rules.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Store resources that break the R4 structure rules ([`crate::validate`]), with a
    /// warning per resource in the report's notes, instead of refusing the import.
    pub lenient: bool,
    /// Accept resources of Patients other than the vault's own patient (a guardian's or
    /// household vault). The decision is recorded in the report's notes.
    pub allow_other_patients: bool,
}

/// The parsed inputs.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
}

/// Parses every input; stops at the first invalid entry.
pub(crate) fn parse_inputs(
    inputs: &[Input],
    options: &ImportOptions,
) -> Result<Parsed, ImportError> {
    let mut parsed = Parsed::default();
    for input in inputs {
        parse_input(input, options, &mut parsed)?;
    }
    Ok(parsed)
}

/// Checks a resource against the R4 structure: an error, or (lenient) a note.
fn check(
    resource: &Value,
    source_name: &str,
    entry: &str,
    options: &ImportOptions,
    notes: &mut Vec<String>,
) -> Result<(), ImportError> {
    let violations = crate::validate::validate(resource);
    if violations.is_empty() {
        return Ok(());
    }
    let error = ImportError::Invalid {
        source_name: source_name.to_string(),
        entry: entry.to_string(),
        resource: format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or("?"),
            resource["id"].as_str().unwrap_or("?")
        ),
        violations,
    };
    if options.lenient {
        notes.push(format!("warning (stored anyway, --lenient): {error}"));
        Ok(())
    } else {
        Err(error)
    }
}

fn parse_input(
    input: &Input,
    options: &ImportOptions,
    out: &mut Parsed,
) -> Result<(), ImportError> {
    let ndjson_name = input.name.ends_with(".ndjson") || input.name.ends_with(".jsonl");
    if !ndjson_name {
        match serde_json::from_slice::<Value>(&input.bytes) {
            Ok(value) => return parse_document(&input.name, value, options, out),
            Err(e) => {
                if !looks_like_ndjson(&input.bytes) {
                    return Err(ImportError::NotJson {
                        source_name: input.name.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    parse_ndjson(input, options, out)
}

fn looks_like_ndjson(bytes: &[u8]) -> bool {
    let mut lines = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    match (lines.next(), lines.next()) {
        (Some(first), Some(_)) => serde_json::from_slice::<Value>(first).is_ok(),
        _ => false,
    }
}

fn parse_ndjson(
    input: &Input,
    options: &ImportOptions,
    out: &mut Parsed,
) -> Result<(), ImportError> {
    let text = std::str::from_utf8(&input.bytes).map_err(|e| ImportError::NotJson {
        source_name: input.name.clone(),
        reason: format!("not UTF-8: {e}"),
    })?;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let label = format!("line {}", n + 1);
        let err = |reason: String| ImportError::Entry {
            source_name: input.name.clone(),
            entry: label.clone(),
            reason,
        };
        let mut resource: Value =
            serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        let (resource_type, id) = identify(&mut resource, None).map_err(&err)?;
        check(&resource, &input.name, &label, options, &mut out.notes)?;
        rewrite_references(&mut resource, &HashMap::new(), &[]).map_err(&err)?;
        out.changes.push(Change {
            resource_type,
            id,
            op: Op::Put(resource),
        });
    }
    Ok(())
}

/// A JSON document: a Bundle or a single resource.
fn parse_document(
    name: &str,
    mut value: Value,
    options: &ImportOptions,
    out: &mut Parsed,
) -> Result<(), ImportError> {
    let is_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && value.get("type").is_some()
        && value.get("entry").is_none_or(Value::is_array);
    if !is_bundle {
        let err = |reason: String| ImportError::Entry {
            source_name: name.to_string(),
            entry: "the resource".into(),
            reason,
        };
        let (resource_type, id) = identify(&mut value, None).map_err(&err)?;
        check(&value, name, "the resource", options, &mut out.notes)?;
        rewrite_references(&mut value, &HashMap::new(), &[]).map_err(&err)?;
        out.changes.push(Change {
            resource_type,
            id,
            op: Op::Put(value),
        });
        return Ok(());
    }
    parse_bundle(name, value, options, out)
}

/// A prepared entry before reference rewriting.
struct Prepared {
    label: String,
    resource_type: String,
    id: String,
    resource: Option<Value>,
    deleted_at: Option<String>,
    deleted_version: Option<u64>,
}

fn parse_bundle(
    name: &str,
    mut bundle: Value,
    options: &ImportOptions,
    out: &mut Parsed,
) -> Result<(), ImportError> {
    let whole = |reason: String| ImportError::Entry {
        source_name: name.to_string(),
        entry: "the Bundle".into(),
        reason,
    };
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| whole("Bundle.type is not a string".into()))?
        .to_string();
    let with_request = match kind.as_str() {
        "transaction" | "batch" | "history" => true,
        "collection" | "searchset" | "document" => false,
        other => {
            return Err(whole(format!(
                "Bundle type {other:?} is not imported (use transaction, batch, collection, \
                 searchset, document or history)"
            )));
        }
    };
    let entries = match bundle.get_mut("entry").map(Value::take) {
        Some(Value::Array(entries)) => entries,
        _ => Vec::new(),
    };

    let mut prepared: Vec<Prepared> = Vec::with_capacity(entries.len());
    // fullUrl → (entry index, meta.versionId)
    let mut full_urls: HashMap<String, (usize, Option<String>)> = HashMap::new();
    let mut targets: HashMap<String, String> = HashMap::new();

    for (i, mut entry) in entries.into_iter().enumerate() {
        let full_url = entry
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_string);
        let label = match &full_url {
            Some(url) => format!("entry {i} (fullUrl {url})"),
            None => format!("entry {i}"),
        };
        let err = |reason: String| ImportError::Entry {
            source_name: name.to_string(),
            entry: label.clone(),
            reason,
        };
        if !entry.is_object() {
            return Err(err("an entry must be a JSON object".into()));
        }
        if kind == "searchset"
            && entry.pointer("/search/mode").and_then(Value::as_str) == Some("outcome")
        {
            out.notes
                .push(format!("{name}, {label}: search outcome skipped"));
            continue;
        }
        let mut resource = entry.get_mut("resource").map(Value::take);
        let mut method = None;
        let mut url_target: Option<(String, Option<String>)> = None;
        if with_request {
            let request = entry
                .get("request")
                .ok_or_else(|| err(format!("a {kind} entry needs a request")))?;
            let m = request
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| err("request.method is missing".into()))?
                .to_ascii_uppercase();
            let url = request
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| err("request.url is missing".into()))?;
            match m.as_str() {
                "GET" | "HEAD" => {
                    out.notes
                        .push(format!("{name}, {label}: {m} {url} skipped (a read)"));
                    continue;
                }
                "PATCH" => return Err(err("PATCH is not supported".into())),
                "POST" | "PUT" | "DELETE" => {}
                other => return Err(err(format!("unknown request method {other:?}"))),
            }
            url_target = Some(parse_request_url(url).map_err(&err)?);
            if m == "DELETE" && url_target.as_ref().is_some_and(|(_, id)| id.is_none()) {
                return Err(err(
                    "conditional or type-wide DELETE is not supported".into()
                ));
            }
            method = Some(m);
        }

        if method.as_deref() == Some("DELETE") {
            let Some((resource_type, Some(id))) = url_target else {
                return Err(err("DELETE needs a Type/id url".into()));
            };
            let at = entry
                .pointer("/response/lastModified")
                .and_then(Value::as_str)
                .filter(|s| valid_instant(s))
                .map(str::to_string);
            let version = entry
                .pointer("/response/etag")
                .and_then(Value::as_str)
                .and_then(|etag| {
                    etag.trim_start_matches("W/")
                        .trim_matches('"')
                        .parse::<u64>()
                        .ok()
                });
            prepared.push(Prepared {
                label,
                resource_type,
                id,
                resource: None,
                deleted_at: at,
                deleted_version: version,
            });
            continue;
        }

        let Some(resource) = resource.as_mut() else {
            return Err(err("the entry has no resource".into()));
        };
        let from_full_url = full_url.as_deref().and_then(id_from_urn);
        let (resource_type, id) = identify(resource, from_full_url).map_err(&err)?;
        check(resource, name, &label, options, &mut out.notes)?;
        if let Some((url_type, url_id)) = &url_target {
            if *url_type != resource_type {
                return Err(err(format!(
                    "request.url names {url_type} but the resource is a {resource_type}"
                )));
            }
            if method.as_deref() == Some("PUT")
                && let Some(url_id) = url_id
                && *url_id != id
            {
                return Err(err(format!(
                    "request.url names id {url_id} but the resource has id {id}"
                )));
            }
        }
        if let Some(url) = &full_url {
            let version = resource
                .pointer("/meta/versionId")
                .and_then(Value::as_str)
                .map(str::to_string);
            if kind != "history" {
                if let Some((other, other_version)) = full_urls.get(url)
                    && (version.is_none() || *other_version == version)
                {
                    return Err(err(format!("duplicate fullUrl {url} (also entry {other})")));
                }
                full_urls.insert(url.clone(), (i, version));
            }
            targets.insert(url.clone(), format!("{resource_type}/{id}"));
        }
        prepared.push(Prepared {
            label,
            resource_type,
            id,
            resource: Some(resource.take()),
            deleted_at: None,
            deleted_version: None,
        });
    }

    // Identifiers for conditional references: (type, system|value) → Type/id.
    let identifiers = collect_identifiers(&prepared);
    let mut changes = Vec::with_capacity(prepared.len());
    for p in prepared {
        let op = match p.resource {
            Some(mut resource) => {
                rewrite_references(&mut resource, &targets, &identifiers).map_err(|reason| {
                    ImportError::Entry {
                        source_name: name.to_string(),
                        entry: p.label.clone(),
                        reason,
                    }
                })?;
                Op::Put(resource)
            }
            None => Op::Delete {
                at: p.deleted_at,
                version: p.deleted_version,
            },
        };
        changes.push(Change {
            resource_type: p.resource_type,
            id: p.id,
            op,
        });
    }
    if kind == "history" {
        changes.reverse();
    }
    out.changes.extend(changes);
    Ok(())
}

/// `Type`, `Type/id`, `Type/id/_history/v` or `Type?query` (relative or absolute) →
/// (type, id if any).
fn parse_request_url(url: &str) -> Result<(String, Option<String>), String> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let conditional = url.contains('?');
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // Find the last segment that is a resource type, from the right.
    let history = segments.iter().rposition(|s| *s == "_history");
    let end = history.unwrap_or(segments.len());
    let (resource_type, id) = match &segments[..end] {
        [.., t, id] if valid_type(t) && valid_id(id) && !conditional => {
            (t.to_string(), Some(id.to_string()))
        }
        [.., t] if valid_type(t) => (t.to_string(), None),
        _ => return Err(format!("request.url {url:?} does not name a resource type")),
    };
    Ok((resource_type, id))
}

/// Checks `resourceType` and `id` (filling `id` from `fallback` or a random UUID), and
/// `meta.lastUpdated`. Returns (type, id).
fn identify(resource: &mut Value, fallback: Option<String>) -> Result<(String, String), String> {
    let Some(object) = resource.as_object_mut() else {
        return Err("the resource is not a JSON object".into());
    };
    let resource_type = match object.get("resourceType") {
        Some(Value::String(t)) if valid_type(t) => t.clone(),
        Some(Value::String(t)) => return Err(format!("resourceType {t:?} is not a type name")),
        Some(_) => return Err("resourceType is not a string".into()),
        None => return Err("the resource has no resourceType".into()),
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if valid_id(id) => id.clone(),
        Some(Value::String(id)) => return Err(format!("id {id:?} is not a valid FHIR id")),
        Some(_) => return Err("id is not a string".into()),
        None => {
            let id = match fallback {
                Some(id) => id,
                None => random_uuid(),
            };
            object.insert("id".into(), Value::String(id.clone()));
            id
        }
    };
    match object.get("meta") {
        None => {}
        Some(Value::Object(meta)) => {
            if let Some(updated) = meta.get("lastUpdated") {
                match updated.as_str() {
                    Some(s) if valid_instant(s) => {}
                    _ => return Err(format!("meta.lastUpdated {updated} is not an instant")),
                }
            }
        }
        Some(_) => return Err("meta is not an object".into()),
    }
    Ok((resource_type, id))
}

/// The id a `urn:uuid:`/`urn:oid:` fullUrl gives (when it is a valid FHIR id).
fn id_from_urn(full_url: &str) -> Option<String> {
    let rest = full_url
        .strip_prefix("urn:uuid:")
        .or_else(|| full_url.strip_prefix("urn:oid:"))?;
    valid_id(rest).then(|| rest.to_ascii_lowercase())
}

fn collect_identifiers(prepared: &[Prepared]) -> Vec<(String, String, String, String)> {
    // (type, system, value, Type/id)
    let mut out = Vec::new();
    for p in prepared {
        let Some(identifiers) = p
            .resource
            .as_ref()
            .and_then(|r| r.get("identifier"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for identifier in identifiers {
            let system = identifier.get("system").and_then(Value::as_str);
            let value = identifier.get("value").and_then(Value::as_str);
            if let Some(value) = value {
                out.push((
                    p.resource_type.clone(),
                    system.unwrap_or("").to_string(),
                    value.to_string(),
                    format!("{}/{}", p.resource_type, p.id),
                ));
            }
        }
    }
    out
}

/// Rewrites every `reference` in `value` (see the module docs).
fn rewrite_references(
    value: &mut Value,
    targets: &HashMap<String, String>,
    identifiers: &[(String, String, String, String)],
) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("reference")
                && let Some(new) = resolve_reference(reference, targets, identifiers)?
            {
                *reference = new;
            }
            for (key, child) in map.iter_mut() {
                if key != "reference" {
                    rewrite_references(child, targets, identifiers)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|item| rewrite_references(item, targets, identifiers)),
        _ => Ok(()),
    }
}

fn resolve_reference(
    reference: &str,
    targets: &HashMap<String, String>,
    identifiers: &[(String, String, String, String)],
) -> Result<Option<String>, String> {
    if let Some(target) = targets.get(reference) {
        return Ok(Some(target.clone()));
    }
    if reference.starts_with("urn:") {
        return Err(format!(
            "bad reference {reference:?}: no entry of this input has that fullUrl"
        ));
    }
    if reference.starts_with('#') || reference.contains("://") {
        return Ok(None);
    }
    if let Some((resource_type, query)) = reference.split_once('?') {
        if !valid_type(resource_type) {
            return Err(format!("bad reference {reference:?}"));
        }
        let mut found = None;
        for pair in query.split('&') {
            let Some(("identifier", wanted)) = pair.split_once('=') else {
                continue;
            };
            let wanted = percent_decode(wanted);
            let (system, value) = match wanted.split_once('|') {
                Some((s, v)) => (Some(s.to_string()), v.to_string()),
                None => (None, wanted.clone()),
            };
            let matches: Vec<&String> = identifiers
                .iter()
                .filter(|(t, s, v, _)| {
                    t == resource_type && *v == value && system.as_ref().is_none_or(|sys| sys == s)
                })
                .map(|(_, _, _, target)| target)
                .collect();
            let mut distinct = matches.clone();
            distinct.sort();
            distinct.dedup();
            if distinct.len() == 1 {
                found = Some(distinct[0].clone());
            }
        }
        return match found {
            Some(target) => Ok(Some(target)),
            None => Err(format!(
                "bad reference {reference:?}: a conditional reference must match exactly one \
                 entry of this input by identifier"
            )),
        };
    }
    let segments: Vec<&str> = reference.split('/').collect();
    let ok = match segments.as_slice() {
        [t, id] => valid_type(t) && valid_id(id),
        [t, id, "_history", v] => valid_type(t) && valid_id(id) && valid_id(v),
        _ => false,
    };
    if ok {
        Ok(None)
    } else {
        Err(format!(
            "bad reference {reference:?}: expected Type/id, an absolute url, #id or a fullUrl \
             of this input"
        ))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `[A-Z][A-Za-z]{0,63}`.
pub fn valid_type(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && t.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic())
}

/// FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A FHIR instant: `YYYY-MM-DDThh:mm:ss(.s+)?(Z|(+|-)hh:mm)`.
pub(crate) fn valid_instant(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z'] => true,
        [sign, h1, h2, b':', m1, m2] if *sign == b'+' || *sign == b'-' => {
            [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
        }
        _ => false,
    }
}

fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The ids of the Patients a resource is or references (sorted, distinct).
pub fn patient_refs(resource_type: &str, id: &str, resource: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if resource_type == "Patient" {
        out.push(id.to_string());
    }
    collect_patient_refs(resource, &mut out);
    out.sort();
    out.dedup();
    out
}

fn collect_patient_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference")
                && let Some(rest) = reference.strip_prefix("Patient/")
            {
                let id = rest.split('/').next().unwrap_or(rest);
                if valid_id(id) {
                    out.push(id.to_string());
                }
            }
            for (key, child) in map {
                if key != "reference" {
                    collect_patient_refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_patient_refs(i, out)),
        _ => {}
    }
}

/// BLAKE3 of the canonical form of `resource` (object keys sorted), leaving out
/// `meta.versionId` and `meta.lastUpdated` (and `meta` when nothing else is in it).
pub(crate) fn content_hash(resource: &Value) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("invariant ehi-layer v1 content hash");
    match resource {
        Value::Object(map) => {
            let meta = map.get("meta").and_then(Value::as_object).map(|meta| {
                meta.iter()
                    .filter(|(k, _)| *k != "versionId" && *k != "lastUpdated")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Map<String, Value>>()
            });
            let mut entries: Vec<(&String, Value)> = Vec::with_capacity(map.len());
            for (k, v) in map {
                if k == "meta"
                    && let Some(meta) = &meta
                {
                    if !meta.is_empty() {
                        entries.push((k, Value::Object(meta.clone())));
                    }
                    continue;
                }
                entries.push((k, v.clone()));
            }
            entries.sort_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"o");
            hasher.update(&(entries.len() as u64).to_le_bytes());
            for (k, v) in entries {
                hash_str(&mut hasher, k);
                hash_value(&mut hasher, &v);
            }
        }
        other => hash_value(&mut hasher, other),
    }
    *hasher.finalize().as_bytes()
}

fn hash_str(hasher: &mut blake3::Hasher, s: &str) {
    hasher.update(&(s.len() as u64).to_le_bytes());
    hasher.update(s.as_bytes());
}

fn hash_value(hasher: &mut blake3::Hasher, value: &Value) {
    match value {
        Value::Null => {
            hasher.update(b"n");
        }
        Value::Bool(b) => {
            hasher.update(if *b { b"t" } else { b"f" });
        }
        Value::Number(n) => {
            hasher.update(b"d");
            hash_str(hasher, &n.to_string());
        }
        Value::String(s) => {
            hasher.update(b"s");
            hash_str(hasher, s);
        }
        Value::Array(items) => {
            hasher.update(b"a");
            hasher.update(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| hash_value(hasher, i));
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"o");
            hasher.update(&(keys.len() as u64).to_le_bytes());
            for k in keys {
                hash_str(hasher, k);
                if let Some(v) = map.get(k) {
                    hash_value(hasher, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
