//! The patient's own reads, audited in one place: [`Reads`] wraps the vault's read
//! views (a resource, a version, a history, a compartment, a patient summary, an
//! export) and queues one
//! audit entry per call, succeeded or failed, naming the front end that read
//! ([`Vault::audit_queue`]); [`Vault::flush_audit`] appends the queue in one commit.
//! A front end therefore never writes audit entries of its own for what the patient
//! reads, and a read never waits for a commit. (The FHIR facade, which answers apps as
//! well as the patient, queues one entry per HTTP request through the same queue.)

use std::path::Path;

use serde_json::Value;

use crate::audit::{AuditAction, AuditRecord, PendingAudit};
use crate::error::Result;
use crate::export::{self, ExportSummary};
use crate::ips;
use crate::time::now_ms;
use crate::vault::{HistoryEntry, Vault};

/// Reads by the patient through one front end, each queued in the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Reads<'v> {
    vault: &'v Vault,
    /// Who read, for the entries' description (e.g. "the ehi command line").
    front_end: &'v str,
}

impl<'v> Reads<'v> {
    /// Reads of the patient's own through `front_end`.
    pub fn patient(vault: &'v Vault, front_end: &'v str) -> Reads<'v> {
        Reads { vault, front_end }
    }

    /// Queues an entry for a read done elsewhere (a search answered by the facade in
    /// process, say): `action` on `entities`, `success` as it went.
    pub fn record(&self, action: AuditAction, entities: Vec<String>, success: bool) {
        let mut record =
            AuditRecord::new(action, format!("by the patient with {}", self.front_end))
                .with_entities(entities);
        record.success = success;
        self.vault.audit_queue().push(PendingAudit {
            record,
            requestor: None,
            ms: now_ms(),
        });
    }

    fn recorded<T>(&self, action: AuditAction, entity: String, result: Result<T>) -> Result<T> {
        self.record(action, vec![entity], result.is_ok());
        result
    }

    /// [`Vault::read`], audited.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Value> {
        let result = self.vault.read(resource_type, id).await;
        self.recorded(AuditAction::Read, format!("{resource_type}/{id}"), result)
    }

    /// [`Vault::read_version`], audited.
    pub async fn read_version(&self, resource_type: &str, id: &str, version: u64) -> Result<Value> {
        let result = self.vault.read_version(resource_type, id, version).await;
        let entity = format!("{resource_type}/{id}/_history/{version}");
        self.recorded(AuditAction::Read, entity, result)
    }

    /// [`Vault::history`], audited.
    pub async fn history(&self, resource_type: &str, id: &str) -> Result<Vec<HistoryEntry>> {
        let result = self.vault.history(resource_type, id).await;
        let entity = format!("{resource_type}/{id}/_history");
        self.recorded(AuditAction::Read, entity, result)
    }

    /// [`Vault::patient_compartment`], audited.
    pub async fn patient_compartment(&self, patient_id: &str) -> Result<Vec<Value>> {
        let result = self.vault.patient_compartment(patient_id).await;
        let entity = format!("Patient/{patient_id}/$everything");
        self.recorded(AuditAction::Read, entity, result)
    }

    /// [`ips::summary`] (the signed International Patient Summary, fullUrls under
    /// `base`), audited as a read of `Patient/<id>/$summary`.
    pub async fn patient_summary(&self, patient_id: &str, base: &str) -> Result<Value> {
        let result = ips::summary(self.vault, patient_id, base).await;
        let entity = format!("Patient/{patient_id}/$summary");
        self.recorded(AuditAction::Read, entity, result)
    }

    /// [`export::to_dir`], audited (the entry names how many entries were written).
    pub async fn export_to_dir(&self, dir: &Path, with_history: bool) -> Result<ExportSummary> {
        let result = export::to_dir(self.vault, dir, with_history).await;
        let entity = match &result {
            Ok(summary) => format!("{} entries", summary.bundle_entries),
            Err(_) => format!("export to {}", dir.display()),
        };
        self.recorded(AuditAction::Export, entity, result)
    }
}
