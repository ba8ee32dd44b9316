//! `invariant gc status|run`: the distributor's garbage collection.
//!
//! `status` prints the backlog (released blocks waiting for their grace period or the
//! next sweep, their known bytes, deletions unreachable servers owe) and the last
//! sweep; `run` asks the distributor to sweep now (operator token:
//! `distributor:admin`) with a progress bar on a terminal, `--dry-run` counts what a
//! sweep would collect and deletes nothing.

use indicatif::{ProgressBar, ProgressStyle};
use invariant_spec::distributor::{GcStatus, SweepReport};
use invariant_spec::{BrokerClient, DistributorClient};

use crate::network;

/// What `invariant gc` does.
#[derive(clap::Subcommand, Debug)]
pub enum GcCommand {
    /// Blocks pending collection, bytes reclaimable, and the last sweep.
    Status,
    /// Sweep now: delete every block unpinned for longer than the grace period from
    /// every storage server.
    Run {
        /// Count what a sweep would collect; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `command` against the broker's first distributor.
pub async fn run(broker: &BrokerClient, command: GcCommand) -> anyhow::Result<()> {
    let distributor = DistributorClient::from_endpoint(network::first(broker, "distribute").await?);
    match command {
        GcCommand::Status => {
            print!("{}", status_text(&distributor.gc_status().await?));
            Ok(())
        }
        GcCommand::Run { dry_run } => {
            let bar = ProgressBar::new(0);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} blocks {per_sec}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(if dry_run { "counting" } else { "collecting" });
            let report = distributor
                .gc_run(dry_run, |progress| {
                    bar.set_length(progress.pending.max(progress.blocks));
                    bar.set_position(progress.blocks);
                })
                .await;
            bar.finish_and_clear();
            println!("{}", report_text(&report?));
            Ok(())
        }
    }
}

fn status_text(status: &GcStatus) -> String {
    let mut out = format!(
        "pending: {} blocks, {} (known sizes, per copy)\n",
        status.pending_blocks,
        crate::human_bytes(status.pending_bytes)
    );
    out.push_str(&format!(
        "grace: {}; automatic sweeps: {}; never-pinned blocks: {}\n",
        duration(status.grace_seconds),
        status
            .interval_seconds
            .map(|s| format!("every {}", duration(s)))
            .unwrap_or_else(|| "off".into()),
        status
            .unpinned_after_seconds
            .map(|s| format!("collected after {}", duration(s)))
            .unwrap_or_else(|| "kept".into()),
    ));
    if status.behind > 0 {
        out.push_str(&format!(
            "owed: {} deletions by storage servers that were unreachable (done when they answer)\n",
            status.behind
        ));
    }
    out.push_str(&format!(
        "collected so far: {} blocks, {} freed, {} sweeps\n",
        status.deleted_blocks,
        crate::human_bytes(status.deleted_bytes),
        status.sweeps
    ));
    match status.last_sweep {
        Some(ms) => {
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"));
            out.push_str(&format!("last sweep: {at}"));
            if let Some(report) = &status.last_report {
                out.push_str(&format!(" ({})", report_text(report)));
            }
            out.push('\n');
        }
        None => out.push_str("last sweep: never\n"),
    }
    if status.running {
        out.push_str("a sweep is running now\n");
    }
    out
}

fn report_text(report: &SweepReport) -> String {
    let mut text = if report.dry_run {
        format!(
            "dry run: {} blocks ({} known) would be collected",
            report.blocks,
            crate::human_bytes(report.bytes)
        )
    } else {
        format!(
            "collected {} blocks, {} freed on {} storage servers in {:.1} s",
            report.blocks,
            crate::human_bytes(report.bytes),
            report.storages,
            report.millis as f64 / 1000.0
        )
    };
    if report.kept > 0 {
        text.push_str(&format!("; {} kept (pinned again)", report.kept));
    }
    if report.discovered > 0 {
        text.push_str(&format!(
            "; {} never-pinned blocks newly seen",
            report.discovered
        ));
    }
    if report.caught_up > 0 {
        text.push_str(&format!("; {} owed deletions done", report.caught_up));
    }
    if report.behind > 0 {
        text.push_str(&format!(
            "; {} deletions owed by unreachable servers",
            report.behind
        ));
    }
    text
}

/// `24 h`, `90 s`.
fn duration(seconds: u64) -> String {
    if seconds >= 3600 && seconds % 3600 == 0 {
        format!("{} h", seconds / 3600)
    } else if seconds >= 60 && seconds % 60 == 0 {
        format!("{} min", seconds / 60)
    } else {
        format!("{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_names_the_backlog_and_the_rules() {
        let status = GcStatus {
            pending_blocks: 12,
            pending_bytes: 2048,
            behind: 3,
            grace_seconds: 86_400,
            interval_seconds: Some(3600),
            ..GcStatus::default()
        };
        let text = status_text(&status);
        assert!(text.contains("pending: 12 blocks, 2.0 KiB"), "{text}");
        assert!(
            text.contains("grace: 24 h; automatic sweeps: every 1 h"),
            "{text}"
        );
        assert!(text.contains("never-pinned blocks: kept"), "{text}");
        assert!(text.contains("owed: 3 deletions"), "{text}");
        assert!(text.contains("last sweep: never"), "{text}");
    }

    #[test]
    fn report_text_says_what_a_dry_run_would_do() {
        let report = SweepReport {
            dry_run: true,
            blocks: 5,
            bytes: 10,
            ..SweepReport::default()
        };
        assert_eq!(
            report_text(&report),
            "dry run: 5 blocks (10 B known) would be collected"
        );
    }
}
