//! Presentation for the `ehi` command line: FHIR Bundles for search and history
//! answers, and the compact `--table` form (one line per resource: `Type/id`, version,
//! `meta.lastUpdated`, a date and a short description).

use serde_json::{Value, json};

use crate::time::{instant, now_ms};
use crate::vault::{HistoryEntry, SearchHits, Status};

/// A `searchset` Bundle of search hits.
pub fn searchset(hits: &SearchHits) -> Value {
    let entries: Vec<Value> = hits
        .resources
        .iter()
        .map(|r| json!({"resource": r, "search": {"mode": "match"}}))
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": instant(now_ms()),
        "total": hits.total,
        "entry": entries,
    })
}

/// A `history` Bundle of one resource's versions (newest first).
pub fn history_bundle(resource_type: &str, id: &str, history: &[HistoryEntry]) -> Value {
    let entries: Vec<Value> = history
        .iter()
        .map(|h| {
            let (method, url) = if h.deleted {
                ("DELETE", format!("{resource_type}/{id}"))
            } else if h.version == 1 {
                ("POST", resource_type.to_string())
            } else {
                ("PUT", format!("{resource_type}/{id}"))
            };
            let mut entry = json!({
                "request": {"method": method, "url": url},
                "response": {"status": if h.deleted { "204 No Content" } else { "200 OK" },
                             "etag": format!("W/\"{}\"", h.version),
                             "lastModified": h.last_updated},
            });
            if let Some(r) = &h.resource {
                entry["resource"] = r.clone();
            }
            entry
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": instant(now_ms()),
        "total": entries.len(),
        "entry": entries,
    })
}

/// One table line per resource.
pub fn table(resources: &[Value]) -> String {
    let rows: Vec<[String; 5]> = resources
        .iter()
        .map(|r| {
            [
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap_or("?"),
                    r["id"].as_str().unwrap_or("?")
                ),
                r.pointer("/meta/versionId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                r.pointer("/meta/lastUpdated")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                date_of(r),
                describe(r),
            ]
        })
        .collect();
    render(
        &["RESOURCE", "VER", "LAST UPDATED", "DATE", "DESCRIPTION"],
        &rows,
    )
}

/// One table line per version.
pub fn history_table(resource_type: &str, id: &str, history: &[HistoryEntry]) -> String {
    let rows: Vec<[String; 5]> = history
        .iter()
        .map(|h| {
            [
                format!("{resource_type}/{id}"),
                h.version.to_string(),
                h.last_updated.clone(),
                h.resource.as_ref().map(date_of).unwrap_or_default(),
                match &h.resource {
                    Some(r) => describe(r),
                    None => "(deleted)".into(),
                },
            ]
        })
        .collect();
    render(
        &["RESOURCE", "VER", "LAST UPDATED", "DATE", "DESCRIPTION"],
        &rows,
    )
}

/// The status as a table.
pub fn status_table(status: &Status) -> String {
    let mut out = format!(
        "vault slot   {}\nroot         {}\ngeneration   {}\nupdated      {}\nblocks       {}\nstorage      {} server(s), distributor: {}\n\n",
        status.slot,
        status.root,
        status.generation,
        instant(status.updated_ms),
        status.blocks,
        status.storage_servers,
        if status.distributor { "yes" } else { "no" },
    );
    let rows: Vec<[String; 5]> = status
        .scopes
        .iter()
        .map(|s| {
            [
                s.scope.to_string(),
                s.resources.to_string(),
                s.versions.to_string(),
                s.epoch.to_string(),
                s.generation.to_string(),
            ]
        })
        .collect();
    out.push_str(&render(
        &["SCOPE", "RESOURCES", "VERSIONS", "EPOCH", "GENERATION"],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<[String; 2]> = status
        .types
        .iter()
        .map(|(t, n)| [t.clone(), n.to_string()])
        .collect();
    out.push_str(&render(&["TYPE", "RESOURCES"], &rows));
    out
}

/// The status as JSON.
pub fn status_json(status: &Status) -> Value {
    json!({
        "slot": status.slot.to_string(),
        "root": status.root.to_string(),
        "generation": status.generation,
        "updated": instant(status.updated_ms),
        "blocks": status.blocks,
        "storageServers": status.storage_servers,
        "distributor": status.distributor,
        "scopes": status.scopes.iter().map(|s| json!({
            "scope": s.scope.name(),
            "slot": s.slot.to_string(),
            "epoch": s.epoch,
            "resources": s.resources,
            "versions": s.versions,
            "generation": s.generation,
            "indexed": s.indexed,
        })).collect::<Vec<_>>(),
        "types": status.types,
    })
}

fn render<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count().min(60));
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let cell: String = cell.chars().take(60).collect();
            if i + 1 == N {
                text.push_str(&cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row.to_vec(), &mut out);
    }
    out
}

/// The main clinical date of a resource, if it has one of the usual elements.
fn date_of(r: &Value) -> String {
    for pointer in [
        "/effectiveDateTime",
        "/effectivePeriod/start",
        "/onsetDateTime",
        "/recordedDate",
        "/occurrenceDateTime",
        "/authoredOn",
        "/performedDateTime",
        "/performedPeriod/start",
        "/period/start",
        "/billablePeriod/start",
        "/created",
        "/date",
        "/issued",
        "/birthDate",
    ] {
        if let Some(d) = r.pointer(pointer).and_then(Value::as_str) {
            return d.to_string();
        }
    }
    String::new()
}

/// A short description: a name, or the display/text/code of the main code.
fn describe(r: &Value) -> String {
    if let Some(name) = r.pointer("/name/0") {
        if let Some(text) = name.get("text").and_then(Value::as_str) {
            return text.to_string();
        }
        let family = name.get("family").and_then(Value::as_str).unwrap_or("");
        let given: Vec<&str> = name
            .get("given")
            .and_then(Value::as_array)
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !family.is_empty() || !given.is_empty() {
            return format!("{} {family}", given.join(" ")).trim().to_string();
        }
    }
    if let Some(name) = r.get("name").and_then(Value::as_str) {
        return name.to_string();
    }
    for key in [
        "code",
        "vaccineCode",
        "medicationCodeableConcept",
        "type",
        "class",
    ] {
        let Some(concept) = r.get(key) else {
            continue;
        };
        if let Some(text) = concept.get("text").and_then(Value::as_str) {
            return text.to_string();
        }
        let coding = concept
            .get("coding")
            .and_then(|c| c.get(0))
            .or_else(|| concept.get(0).and_then(|c| c.pointer("/coding/0")))
            .or(Some(concept));
        if let Some(coding) = coding {
            if let Some(display) = coding.get("display").and_then(Value::as_str) {
                return display.to_string();
            }
            if let Some(code) = coding.get("code").and_then(Value::as_str) {
                return code.to_string();
            }
        }
    }
    r.get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines() {
        let resources = vec![
            json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "2", "lastUpdated": "2024-01-01T00:00:00Z"},
                   "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": "1970-01-01"}),
            json!({"resourceType": "Observation", "id": "o",
                   "code": {"coding": [{"code": "8302-2", "display": "Body Height"}]},
                   "effectiveDateTime": "2020-05-05"}),
        ];
        let text = table(&resources);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("RESOURCE"));
        assert!(
            lines[1].contains("Patient/p")
                && lines[1].contains("Jane Doe")
                && lines[1].contains("1970-01-01")
        );
        assert!(lines[2].contains("Body Height") && lines[2].contains("2020-05-05"));
    }
}
