//! Distributor gauges and counters (through the `metrics` crate, shown by `/metrics`).
//!
//! Gauges (set from [`DistributorStatus`] every second and after each change):
//! - `distributor_pinned_blocks`: distinct pinned blocks.
//! - `distributor_under_replicated_blocks`: pinned blocks with fewer than N copies on
//!   active storage servers.
//! - `distributor_replica_shortfall`: storage servers missing for N copies (N minus the
//!   active ones, at least 0).
//! - `distributor_copies_in_flight`: copies running now.
//! - `distributor_storages_active`: storage servers answering health checks.
//! - `distributor_storages_known`: storage servers distributed onto when active.
//!
//! - `distributor_gc_pending_blocks`, `distributor_gc_pending_bytes`: released blocks
//!   waiting for collection and their known bytes.
//! - `distributor_gc_behind`: deletions unreachable storage servers still owe.
//! - `distributor_backup_behind_blocks`, `distributor_backup_behind_bytes`: pinned
//!   blocks the backup destination lacks and their known bytes (with a backup only).
//!
//! Counters:
//! - `distributor_copies_total{result="ok"|"failed"}`: finished copy attempts.
//! - `distributor_gc_deleted_blocks_total`, `distributor_gc_deleted_bytes_total`,
//!   `distributor_gc_sweeps_total`: collection since the database was created (set
//!   from the stored totals).
//! - `distributor_backup_copied_blocks_total`, `distributor_backup_copied_bytes_total`:
//!   copies to the backup destination since the distributor started.

use invariant_spec::distributor::DistributorStatus;

/// Sets every gauge from `status`.
pub fn publish(status: &DistributorStatus) {
    metrics::gauge!("distributor_pinned_blocks").set(status.pinned as f64);
    metrics::gauge!("distributor_under_replicated_blocks").set(status.under_replicated as f64);
    metrics::gauge!("distributor_replica_shortfall").set(status.replica_shortfall as f64);
    metrics::gauge!("distributor_copies_in_flight").set(status.copies_in_flight as f64);
    metrics::gauge!("distributor_storages_active").set(status.storages_active as f64);
    metrics::gauge!("distributor_storages_known").set(status.storages_known as f64);
    metrics::gauge!("distributor_gc_pending_blocks").set(status.gc_pending_blocks as f64);
    metrics::gauge!("distributor_gc_pending_bytes").set(status.gc_pending_bytes as f64);
    metrics::gauge!("distributor_gc_behind").set(status.gc_behind as f64);
    metrics::counter!("distributor_gc_deleted_blocks_total").absolute(status.gc_deleted_blocks);
    metrics::counter!("distributor_gc_deleted_bytes_total").absolute(status.gc_deleted_bytes);
    metrics::counter!("distributor_gc_sweeps_total").absolute(status.gc_sweeps);
    if let Some(backup) = &status.backup {
        metrics::gauge!("distributor_backup_behind_blocks").set(backup.blocks_behind as f64);
        metrics::gauge!("distributor_backup_behind_bytes").set(backup.bytes_behind as f64);
        metrics::counter!("distributor_backup_copied_blocks_total").absolute(backup.blocks_copied);
        metrics::counter!("distributor_backup_copied_bytes_total").absolute(backup.bytes_copied);
    }
}

/// Counts one finished copy attempt.
pub fn copy_finished(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!("distributor_copies_total", "result" => result).increment(1);
}
