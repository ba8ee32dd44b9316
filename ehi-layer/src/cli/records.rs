//! The patient's records: `ehi import`, `ehi search`, `ehi show`, `ehi history`,
//! `ehi patient`, `ehi summary` and `ehi export`; every read is written to the audit
//! log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use ehi_layer::audit::AuditAction;
use ehi_layer::vault::Stage;
use ehi_layer::{Input, Keystore, Progress, Vault, ips, present};
use indicatif::{ProgressBar, ProgressStyle};

use super::audit::reads;
use super::common::{parse_reference, print_json};

pub(crate) async fn import(
    vault: &Vault,
    files: &[PathBuf],
    options: &ehi_layer::ImportOptions,
) -> anyhow::Result<()> {
    let mut inputs = Vec::with_capacity(files.len());
    for file in files {
        inputs.push(Input::from_path(file)?);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::default_bar()
            .template("{spinner} {msg:12} [{bar:30}] {pos}/{len} {per_sec} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let handle = bar.clone();
    let progress: ehi_layer::ProgressFn = Arc::new(move |p: Progress| match p.stage {
        Stage::Parsing => handle.set_message("reading"),
        Stage::Storing => {
            handle.set_message("storing");
            handle.set_length(p.total);
            handle.set_position(p.done);
        }
        Stage::Committing => handle.set_message("committing"),
        _ => {}
    });
    let result = vault.import_with(inputs, options, Some(progress)).await;
    bar.finish_and_clear();
    let report = result?;
    eprintln!(
        "imported: {} created, {} updated, {} deleted, {} unchanged (generation {}, {} attempt(s))",
        report.created,
        report.updated,
        report.deleted,
        report.unchanged,
        report.generation,
        report.attempts
    );
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if !report.other_patients.is_empty() {
        eprintln!(
            "note: records of {} kept in this vault as allowed (recorded in the audit log)",
            report.other_patients.join(", ")
        );
    }
    Ok(())
}

/// `ehi search`: the search `ehi serve` runs, answered in process, as the patient;
/// every page is fetched (one Bundle) unless the query names `_count`.
async fn search(
    vault: Arc<Vault>,
    keystore: &Keystore,
    resource_type: &str,
    query: &str,
    lenient: bool,
) -> anyhow::Result<serde_json::Value> {
    use ehi_layer::serve::{self, TokenKey};
    let key = TokenKey::from_keystore(keystore);
    let prefer = lenient.then_some("handling=lenient");
    let base = format!("ehi://{}/", vault.slot());
    let one_page = query.split('&').any(|p| p.starts_with("_count="));
    let mut path = format!("{resource_type}?{query}");
    let mut bundle: Option<serde_json::Value> = None;
    loop {
        let (status, page) =
            serve::answer_locally(vault.clone(), key.clone(), &path, prefer).await?;
        if !status.is_success() {
            let why = page["issue"][0]["diagnostics"]
                .as_str()
                .map_or_else(|| page.to_string(), str::to_string);
            bail!("{why}");
        }
        let next = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .and_then(|url| url.strip_prefix(&base))
            .map(str::to_string);
        match bundle.as_mut() {
            None => bundle = Some(page),
            Some(all) => {
                let more = page["entry"].as_array().cloned().unwrap_or_default();
                if let Some(entries) = all["entry"].as_array_mut() {
                    // One OperationOutcome is enough: later pages repeat it.
                    entries.extend(
                        more.into_iter()
                            .filter(|e| e["search"]["mode"] != "outcome"),
                    );
                }
            }
        }
        match next {
            Some(next) if !one_page => path = next,
            _ => break,
        }
    }
    let mut bundle = bundle.unwrap_or_default();
    if !one_page && let Some(obj) = bundle.as_object_mut() {
        // Every page is in this one Bundle: paging links would mislead.
        obj.remove("link");
    }
    Ok(bundle)
}

/// `ehi search`: the matching Bundle as FHIR JSON, or its resources as a table
/// (`--table`) with the count on stderr.
pub(crate) async fn print_search(
    vault: Arc<Vault>,
    keystore: &Keystore,
    resource_type: &str,
    params: &[String],
    lenient: bool,
    table: bool,
) -> anyhow::Result<()> {
    let query = params.join("&");
    let result = search(vault.clone(), keystore, resource_type, &query, lenient).await;
    let entity = format!("{resource_type}?{query}");
    reads(&vault).record(AuditAction::Search, vec![entity], result.is_ok());
    let bundle = result?;
    if table {
        let resources: Vec<serde_json::Value> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] != "outcome")
            .map(|e| e["resource"].clone())
            .collect();
        print!("{}", present::table(&resources));
        match bundle["total"].as_u64() {
            Some(total) => eprintln!("{total} match(es)"),
            None => eprintln!("{} resource(s)", resources.len()),
        }
    } else {
        print_json(&bundle)?;
    }
    Ok(())
}

/// `ehi show Type/id[/_history/n]`.
pub(crate) async fn show(vault: &Vault, reference: &str, table: bool) -> anyhow::Result<()> {
    let (resource_type, id, version) = parse_reference(reference)?;
    let resource = match version {
        Some(v) => reads(vault).read_version(&resource_type, &id, v).await?,
        None => reads(vault).read(&resource_type, &id).await?,
    };
    if table {
        print!("{}", present::table(&[resource]));
    } else {
        print_json(&resource)?;
    }
    Ok(())
}

/// `ehi history Type/id`.
pub(crate) async fn history(vault: &Vault, reference: &str, table: bool) -> anyhow::Result<()> {
    let (resource_type, id, _) = parse_reference(reference)?;
    let history = reads(vault).history(&resource_type, &id).await?;
    if table {
        print!("{}", present::history_table(&resource_type, &id, &history));
    } else {
        print_json(&present::history_bundle(&resource_type, &id, &history))?;
    }
    Ok(())
}

/// `ehi patient <id>`: the Patient's compartment as a collection Bundle (or a table).
pub(crate) async fn patient(vault: &Vault, id: &str, table: bool) -> anyhow::Result<()> {
    let resources = reads(vault).patient_compartment(id).await?;
    if table {
        print!("{}", present::table(&resources));
    } else {
        let entries: Vec<serde_json::Value> = resources
            .into_iter()
            .map(|r| serde_json::json!({ "resource": r }))
            .collect();
        print_json(&serde_json::json!({
            "resourceType": "Bundle", "type": "collection", "entry": entries
        }))?;
    }
    Ok(())
}

/// `ehi summary [--patient id] [--out file]`: the signed International Patient
/// Summary (fullUrls under `ehi://<vault slot>`, as `ehi search` answers).
pub(crate) async fn summary(
    vault: &Vault,
    patient: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let id = match patient {
        Some(id) => id.to_string(),
        None => ips::the_patient(vault).await?,
    };
    let base = format!("ehi://{}", vault.slot());
    let bundle = reads(vault).patient_summary(&id, &base).await?;
    for problem in ips::check(&bundle) {
        eprintln!("warning: {problem}");
    }
    match out {
        None => print_json(&bundle)?,
        Some(path) => {
            let mut text = serde_json::to_string_pretty(&bundle)?;
            text.push('\n');
            std::fs::write(path, text)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            let sections = bundle["entry"][0]["resource"]["section"]
                .as_array()
                .map_or(0, Vec::len);
            let entries = bundle["entry"].as_array().map_or(0, Vec::len);
            eprintln!(
                "wrote {} (Patient/{id}: {sections} sections, {entries} entries, signed \
                 with the patient's key)",
                path.display()
            );
        }
    }
    Ok(())
}

/// `ehi summary --verify <file>`: checks the summary's signature with this vault's key.
pub(crate) fn verify_summary(vault: &Vault, file: &Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let bundle: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
    ips::verify(&bundle, &vault.signing.verifying_key())
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    eprintln!(
        "{}: the signature is valid, made with this vault's patient key",
        file.display()
    );
    Ok(())
}

/// `ehi export <dir>` (the folder was checked before the vault was opened).
pub(crate) async fn export(vault: &Vault, dir: &Path, history: bool) -> anyhow::Result<()> {
    let summary = reads(vault).export_to_dir(dir, history).await?;
    eprintln!(
        "wrote {} ({} entries) and {} NDJSON file(s) under {}",
        summary.bundle.display(),
        summary.bundle_entries,
        summary.ndjson.len(),
        dir.join("ndjson").display()
    );
    Ok(())
}
