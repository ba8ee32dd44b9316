//! The audit log from the command line: `ehi audit [verify]`, and how the command
//! line's reads reach it (through the library's [`Reads`], flushed once per command).

use ehi_layer::Vault;
use ehi_layer::audit::AuditAction;
use ehi_layer::reads::Reads;

use super::common::print_json;

/// The patient's reads through this command line, each queued in the audit log.
pub(crate) fn reads(vault: &Vault) -> Reads<'_> {
    Reads::patient(vault, "the ehi command line")
}

/// Appends what the command queued to the audit log; a failure is reported but does
/// not undo what was shown.
pub(crate) async fn flush(vault: &Vault) {
    if let Err(e) = vault.flush_audit().await {
        eprintln!("warning: the audit entries could not be written: {e}");
    }
}

/// `ehi audit verify`.
pub(crate) async fn verify(vault: &Vault) -> anyhow::Result<()> {
    let count = vault.audit_verify().await?;
    eprintln!("audit log verified: {count} entries, every signature and link checks out");
    Ok(())
}

/// `ehi audit [--type …] [--app …] [--since …] [--until …]`: the matching entries as
/// a Bundle of AuditEvents, or one line each (`--table`).
pub(crate) async fn list(
    vault: &Vault,
    kind: Option<String>,
    app: Option<String>,
    since: Option<String>,
    until: Option<String>,
    table: bool,
) -> anyhow::Result<()> {
    let kind = match kind {
        Some(k) => Some(k.parse::<AuditAction>()?.code().to_string()),
        None => None,
    };
    let mut events = Vec::new();
    for entry in vault.audit_entries().await? {
        let event = entry.event()?;
        let recorded = entry.recorded().unwrap_or_default();
        if kind
            .as_ref()
            .is_some_and(|k| entry.action().as_ref() != Some(k))
            || app
                .as_ref()
                .is_some_and(|a| !entry.event.contains(a.as_str()))
            || since
                .as_ref()
                .is_some_and(|s| recorded.as_str() < s.as_str())
            || until
                .as_ref()
                .is_some_and(|u| recorded.as_str() >= u.as_str())
        {
            continue;
        }
        if table {
            println!(
                "{:>5}  {}  {:8}  {}",
                entry.seq,
                recorded,
                entry.action().unwrap_or_default(),
                event["outcomeDesc"].as_str().unwrap_or_default()
            );
        }
        events.push(serde_json::json!({ "resource": event }));
    }
    if !table {
        print_json(&serde_json::json!({
            "resourceType": "Bundle", "type": "collection",
            "total": events.len(), "entry": events
        }))?;
    }
    Ok(())
}
