//! Export: everything the patient holds, as one FHIR Bundle and as Bulk Data NDJSON.
//!
//! - **Current state**: a Bundle of type `collection` with the current version of every
//!   resource (deleted resources left out), and one `<Type>.ndjson` file per type.
//! - **With history**: a Bundle of type `history` (FHIR's form for versions: every entry
//!   has `request` and `response`; newest version first per resource; deletions are
//!   entries with `request.method = DELETE` and no resource), and NDJSON files holding
//!   every stored version, oldest first (NDJSON cannot express deletions; use the Bundle
//!   to carry them).
//! - Entries carry no `fullUrl`: a device vault has no base url, and every reference in
//!   the vault is already a relative `Type/id`.
//! - Resources are ordered by type, then id, so two exports of the same vault content
//!   are byte-identical apart from `Bundle.timestamp`. Every resource carries the
//!   vault's `meta.versionId` and `meta.lastUpdated`, which an import keeps
//!   (`lastUpdated`) or reproduces (`versionId`, counted from 1), so importing an export
//!   into an empty vault yields the same content.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{EhiError, Result};
use crate::time::{instant, now_ms};
use crate::vault::Vault;

/// One NDJSON file written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NdjsonFile {
    /// The resource type.
    pub resource_type: String,
    /// The file.
    pub path: PathBuf,
    /// Lines written.
    pub count: usize,
}

/// Everything as one Bundle: `collection` (current versions) or, with history,
/// `history` (every version).
pub async fn bundle(vault: &Vault, with_history: bool) -> Result<Value> {
    let everything = vault.everything(with_history).await?;
    let mut entries = Vec::new();
    for resource in everything {
        if with_history {
            for v in resource.versions.iter().rev() {
                let mut entry = serde_json::Map::new();
                let (method, url, status) = if v.deleted {
                    (
                        "DELETE",
                        format!("{}/{}", resource.resource_type, resource.id),
                        "204 No Content",
                    )
                } else if v.version == 1 {
                    ("POST", resource.resource_type.clone(), "201 Created")
                } else {
                    (
                        "PUT",
                        format!("{}/{}", resource.resource_type, resource.id),
                        "200 OK",
                    )
                };
                if let Some(r) = &v.resource {
                    entry.insert("resource".into(), r.clone());
                }
                entry.insert("request".into(), json!({"method": method, "url": url}));
                entry.insert(
                    "response".into(),
                    json!({
                        "status": status,
                        "etag": format!("W/\"{}\"", v.version),
                        "lastModified": v.last_updated,
                    }),
                );
                entries.push(Value::Object(entry));
            }
        } else if let Some(r) = resource.versions.last().and_then(|v| v.resource.clone()) {
            entries.push(json!({ "resource": r }));
        }
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": if with_history { "history" } else { "collection" },
        "timestamp": instant(now_ms()),
    });
    if with_history {
        bundle["total"] = json!(entries.len());
    }
    bundle["entry"] = Value::Array(entries);
    Ok(bundle)
}

/// Writes one `<Type>.ndjson` per resource type into `dir` (created if needed).
pub async fn ndjson(vault: &Vault, dir: &Path, with_history: bool) -> Result<Vec<NdjsonFile>> {
    let everything = vault.everything(with_history).await?;
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for resource in everything {
        for v in resource.versions {
            if let Some(r) = v.resource {
                by_type
                    .entry(resource.resource_type.clone())
                    .or_default()
                    .push(r);
            }
        }
    }
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || write_ndjson(&dir, by_type)).await?
}

fn write_ndjson(dir: &Path, by_type: BTreeMap<String, Vec<Value>>) -> Result<Vec<NdjsonFile>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EhiError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut out = Vec::new();
    for (resource_type, resources) in by_type {
        let path = dir.join(format!("{resource_type}.ndjson"));
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        let mut writer = std::io::BufWriter::new(file);
        for r in &resources {
            serde_json::to_writer(&mut writer, r).map_err(|e| EhiError::Io {
                path: path.clone(),
                source: e.into(),
            })?;
            writer.write_all(b"\n").map_err(io(&path))?;
        }
        writer.flush().map_err(io(&path))?;
        out.push(NdjsonFile {
            resource_type,
            path,
            count: resources.len(),
        });
    }
    Ok(out)
}

/// Writes `bundle.json` and `ndjson/<Type>.ndjson` under `dir`.
pub async fn to_dir(vault: &Vault, dir: &Path, with_history: bool) -> Result<ExportSummary> {
    let bundle = bundle(vault, with_history).await?;
    let entries = bundle["entry"].as_array().map_or(0, Vec::len);
    let bundle_path = dir.join("bundle.json");
    let path = bundle_path.clone();
    let dir_owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir_owned).map_err(|source| EhiError::Io {
            path: dir_owned.clone(),
            source,
        })?;
        let bytes = serde_json::to_vec_pretty(&bundle).map_err(|e| EhiError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        std::fs::write(&path, bytes).map_err(|source| EhiError::Io { path, source })
    })
    .await??;
    let files = ndjson(vault, &dir.join("ndjson"), with_history).await?;
    Ok(ExportSummary {
        bundle: bundle_path,
        bundle_entries: entries,
        ndjson: files,
    })
}

/// What [`to_dir`] wrote.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    /// The Bundle file.
    pub bundle: PathBuf,
    /// Entries in it.
    pub bundle_entries: usize,
    /// The NDJSON files.
    pub ndjson: Vec<NdjsonFile>,
}
