//! Every request the facade answers is written to the vault's audit log
//! ([`ehi_vault::audit`]): who (the patient, or the app of the token's grant — named, with
//! the grant id — or "unauthenticated client"), what (the interaction, type and id or
//! the search query, as `METHOD path?query`), when (the request's arrival time) and the
//! outcome (success below 400, failure otherwise, with the HTTP status).
//!
//! Entries go to the **vault's queue** ([`ehi_vault::vault::Vault::audit_queue`], the
//! queue the patient's own reads use too) and are appended in batches
//! ([`ehi_vault::vault::Vault::flush_audit`]: one commit per [`MAX_PER_COMMIT`]
//! entries), so a request never waits for a network commit: the queue is flushed every
//! [`super::ServeOptions::audit_flush_every`] (1 s by default), as soon as it holds
//! [`super::ServeOptions::audit_batch`] entries (100), on [`super::Server::flush_audit`],
//! and when the server stops. A failed flush keeps the entries for the next one (at most
//! [`MAX_PENDING`]; beyond that the oldest are dropped with a warning). What is lost if
//! the process is killed: the entries of the last interval not yet flushed.

use ehi_vault::audit::{AuditAction, AuditRecord, PendingAudit, Requestor};
pub use ehi_vault::vault::{MAX_PENDING, MAX_PER_COMMIT};

/// The entry for one request.
pub(crate) fn entry(
    method: &str,
    target: &str,
    requestor: Option<Requestor>,
    status: u16,
    ms: u64,
    interaction: Interaction,
) -> PendingAudit {
    let action = match interaction {
        Interaction::Search => AuditAction::Search,
        Interaction::Write => AuditAction::Import,
        Interaction::Export => AuditAction::Export,
        Interaction::Read => AuditAction::Read,
    };
    let mut record = AuditRecord::new(action, format!("ehi serve: {method} {target} → {status}"))
        .with_entities(vec![target.to_string()]);
    record.success = status < 400;
    PendingAudit {
        record,
        requestor,
        ms,
    }
}

/// The kind of a request, for the AuditEvent's subtype and action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interaction {
    /// read, vread, history, metadata, status polls, files
    Read,
    /// search, `$everything`, `$summary`
    Search,
    /// create, update, delete
    Write,
    /// `$export` kick-off
    Export,
}

impl Interaction {
    /// Classifies a request by method and path segments.
    pub(crate) fn of(method: &str, segs: &[&str]) -> Interaction {
        match (method, segs) {
            (_, ["$export"] | [_, "$export"] | [_, _, "$export"]) => Interaction::Export,
            ("GET", ["metadata" | "authorize"]) | (_, ["token"] | [".well-known", ..]) => {
                Interaction::Read
            }
            ("GET", [_]) | ("POST", [_, "_search"]) | ("GET", [_, _, "$everything"]) => {
                Interaction::Search
            }
            ("GET" | "POST", [_, "$summary"] | [_, _, "$summary"]) => Interaction::Search,
            ("POST" | "PUT" | "DELETE", _) => Interaction::Write,
            _ => Interaction::Read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_method_and_path() {
        assert_eq!(Interaction::of("GET", &["Patient"]), Interaction::Search);
        assert_eq!(
            Interaction::of("GET", &["Patient", "p1"]),
            Interaction::Read
        );
        assert_eq!(
            Interaction::of("POST", &["Observation", "_search"]),
            Interaction::Search
        );
        assert_eq!(
            Interaction::of("GET", &["Patient", "p1", "$everything"]),
            Interaction::Search
        );
        assert_eq!(
            Interaction::of("POST", &["Patient", "p1", "$summary"]),
            Interaction::Search
        );
        assert_eq!(Interaction::of("GET", &["$export"]), Interaction::Export);
        assert_eq!(
            Interaction::of("PUT", &["Patient", "p1"]),
            Interaction::Write
        );
        assert_eq!(Interaction::of("POST", &["token"]), Interaction::Read);
    }

    #[test]
    fn an_entry_records_the_status_as_its_outcome() {
        let ok = entry("GET", "/Patient/p1", None, 200, 7, Interaction::Read);
        assert!(ok.record.success);
        assert_eq!(ok.record.action, AuditAction::Read);
        assert_eq!(ok.record.entities, vec!["/Patient/p1".to_string()]);
        let refused = entry("GET", "/Patient/p1", None, 403, 7, Interaction::Read);
        assert!(!refused.record.success);
    }
}
