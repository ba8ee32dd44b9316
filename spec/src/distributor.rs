//! The distributor protocol (`/distributor/`): keeps pinned blocks on N storage servers.
//!
//! Request bodies of every route are lists of 64-hex ids, in any of these forms (a
//! server accepts all and reads them as a stream):
//! a JSON array (`["ab..", "cd.."]`), or ids separated by white space and/or commas,
//! each optionally in double quotes. [`DistributorClient`] sends a JSON array.
//!
//! - `PUT /distributor/pin`, `PUT /distributor/unpin`: add or remove one pin per listed
//!   id (pins are reference-counted; duplicates in one body count twice). 200 with an
//!   empty body. Pins are counted per caller (the token's subject; anonymous in open
//!   mode): unpinning more pins than the caller holds is refused with 409 and nothing
//!   is applied.
//! - `PUT /distributor/register/storage`, `PUT /distributor/unregister/storage`: add or
//!   remove one registration per listed storage server id (reference-counted like
//!   pins; 409 below zero).
//! - `POST /distributor/blocks` → JSON array of [`BlockPlacement`], one per listed id in
//!   request order: the storage servers the block is placed on (the N active servers
//!   nearest to it by XOR distance, nearest first); empty for a block that is not pinned.
//! - `GET /distributor/status` → [`DistributorStatus`] (with `pins_by_subject` for a
//!   `distributor:admin` caller).
//! - `GET /distributor/gc` → [`GcStatus`]: garbage collection's backlog and counters.
//! - `POST /distributor/gc[?dry_run=true]` (`distributor:admin`): runs a sweep now;
//!   the answer is newline-delimited JSON, one [`GcEvent`] per line: progress lines,
//!   then one report (or one error).
//!
//! Malformed bodies (bad hex, wrong length, truncated JSON array) get 400 and nothing in
//! them is applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::http::{Endpoint, LineReader};
use crate::{ClientError, ClientResult, Id};

/// One answer item of `POST /distributor/blocks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPlacement {
    /// The block asked about.
    pub block: Id,
    /// Storage servers the block is placed on, nearest first; empty when not pinned.
    pub storages: Vec<Id>,
}

/// Answer of `GET /distributor/status`. Readers default absent fields to zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributorStatus {
    /// Distinct blocks with at least one pin.
    #[serde(default)]
    pub pinned: u64,
    /// Pinned blocks with fewer than `replicas` copies on active storage servers: not
    /// (yet) held by every server of their placement, blocks that cannot be placed (no
    /// active storage server, no live copy found), and every pinned block while fewer
    /// than `replicas` storage servers are active.
    #[serde(default)]
    pub under_replicated: u64,
    /// Storage servers missing for `replicas` copies: `replicas` minus the active
    /// storage servers, 0 when enough are active. Above 0, no block can have N copies
    /// on live servers until more storage servers answer.
    #[serde(default)]
    pub replica_shortfall: u64,
    /// Block copies between storage servers running now.
    #[serde(default)]
    pub copies_in_flight: u64,
    /// Storage servers answering health checks.
    #[serde(default)]
    pub storages_active: u64,
    /// Storage servers distributed onto when active: explicit registrations plus,
    /// unless turned off, those the broker lists.
    #[serde(default)]
    pub storages_known: u64,
    /// Distinct explicitly registered storage servers.
    #[serde(default)]
    pub storages_registered: u64,
    /// Copies each pinned block should have (N).
    #[serde(default)]
    pub replicas: u64,
    /// Copies completed since the server started.
    #[serde(default)]
    pub copies_completed: u64,
    /// Copy attempts that failed since the server started.
    #[serde(default)]
    pub copies_failed: u64,
    /// Full placement passes completed since the server started.
    #[serde(default)]
    pub passes: u64,
    /// Blocks with no pin waiting for collection (grace period or next sweep).
    #[serde(default)]
    pub gc_pending_blocks: u64,
    /// Known bytes of those blocks (per copy; sizes the distributor never saw count 0).
    #[serde(default)]
    pub gc_pending_bytes: u64,
    /// Deletions storage servers still owe (they were unreachable during a sweep).
    #[serde(default)]
    pub gc_behind: u64,
    /// Blocks collected in all.
    #[serde(default)]
    pub gc_deleted_blocks: u64,
    /// Bytes the storage servers reported freed by collection, over all servers.
    #[serde(default)]
    pub gc_deleted_bytes: u64,
    /// Sweeps finished.
    #[serde(default)]
    pub gc_sweeps: u64,
    /// What each subject pins (subject → blocks and pins; `""` is the anonymous subject
    /// of open mode and of pins older than per-subject counts). Sent only to a caller
    /// whose token holds `distributor:admin`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pins_by_subject: Option<BTreeMap<String, SubjectPins>>,
    /// The backup destination's progress, when the distributor copies every pinned
    /// block to one (`--backup-storage`); absent otherwise. An extension of this
    /// implementation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
}

/// How far the backup storage server is behind the pins ([`DistributorStatus::backup`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The backup storage server's url.
    pub url: String,
    /// Its id, once it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Pinned blocks it does not hold yet.
    #[serde(default)]
    pub blocks_behind: u64,
    /// Known bytes of those blocks (sizes no storage server reported count 0).
    #[serde(default)]
    pub bytes_behind: u64,
    /// Blocks copied to it since the distributor started.
    #[serde(default)]
    pub blocks_copied: u64,
    /// Bytes copied to it since the distributor started.
    #[serde(default)]
    pub bytes_copied: u64,
    /// The copy rate limit, bytes per hour; absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_hour: Option<u64>,
    /// Walks over every pinned block finished since the distributor started.
    #[serde(default)]
    pub passes: u64,
    /// The last failure (the backup server unreachable, a block with no reachable
    /// copy), cleared by the next copy that lands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Answer of `GET /distributor/gc`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcStatus {
    /// Blocks with no pin waiting for collection (grace period or next sweep).
    #[serde(default)]
    pub pending_blocks: u64,
    /// Known bytes of those blocks, per copy.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Deletions storage servers still owe; done when they answer again.
    #[serde(default)]
    pub behind: u64,
    /// Blocks collected in all.
    #[serde(default)]
    pub deleted_blocks: u64,
    /// Bytes the storage servers reported freed, over all servers.
    #[serde(default)]
    pub deleted_bytes: u64,
    /// Sweeps finished.
    #[serde(default)]
    pub sweeps: u64,
    /// When the last sweep finished, ms since the Unix epoch.
    #[serde(default)]
    pub last_sweep: Option<u64>,
    /// The report of the last sweep since the server started.
    #[serde(default)]
    pub last_report: Option<SweepReport>,
    /// Seconds a block stays uncollected after its last unpin.
    #[serde(default)]
    pub grace_seconds: u64,
    /// Seconds after which a block never pinned is collected; `None`: never.
    #[serde(default)]
    pub unpinned_after_seconds: Option<u64>,
    /// Seconds between automatic sweeps; `None`: only on request.
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    /// A sweep is running now.
    #[serde(default)]
    pub running: bool,
}

/// What one sweep did (or, for a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Nothing was deleted: the report counts what would have been.
    #[serde(default)]
    pub dry_run: bool,
    /// Blocks collected (each counted once however many servers held it).
    #[serde(default)]
    pub blocks: u64,
    /// Bytes the storage servers reported freed (dry run: known sizes, per copy).
    #[serde(default)]
    pub bytes: u64,
    /// Candidates found pinned again at confirmation, and kept.
    #[serde(default)]
    pub kept: u64,
    /// Never-pinned blocks first seen in storage listings during this sweep.
    #[serde(default)]
    pub discovered: u64,
    /// Storage servers deleted from.
    #[serde(default)]
    pub storages: u64,
    /// Deletions owed by unreachable servers after this sweep.
    #[serde(default)]
    pub behind: u64,
    /// Owed deletions that returning servers carried out in this sweep.
    #[serde(default)]
    pub caught_up: u64,
    /// How long the sweep took, ms.
    #[serde(default)]
    pub millis: u64,
}

/// Progress of a running sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcProgress {
    /// Blocks collected so far (dry run: found collectable).
    #[serde(default)]
    pub blocks: u64,
    /// Released blocks when the sweep started (collectable or still in their grace).
    #[serde(default)]
    pub pending: u64,
}

/// One line of the answer of `POST /distributor/gc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcEvent {
    /// The sweep advanced.
    Progress(GcProgress),
    /// The sweep finished (last line).
    Report(SweepReport),
    /// The sweep failed (last line).
    Error(String),
}

/// One subject's pins, in [`DistributorStatus::pins_by_subject`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectPins {
    /// Distinct blocks the subject pins.
    #[serde(default)]
    pub blocks: u64,
    /// The subject's pins in all (a block pinned twice counts twice).
    #[serde(default)]
    pub pins: u64,
}

/// Typed client for one distributor.
#[derive(Clone, Debug)]
pub struct DistributorClient {
    endpoint: Endpoint,
}

impl DistributorClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3007`).
    pub fn new(base_url: &str) -> ClientResult<DistributorClient> {
        Ok(DistributorClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> DistributorClient {
        DistributorClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    /// Adds one pin to each of `blocks`.
    pub async fn pin(&self, blocks: &[Id]) -> ClientResult<()> {
        self.put_ids("/distributor/pin", blocks).await
    }

    /// Removes one pin from each of `blocks` (a 409 status error when one is not pinned;
    /// then nothing was removed).
    pub async fn unpin(&self, blocks: &[Id]) -> ClientResult<()> {
        self.put_ids("/distributor/unpin", blocks).await
    }

    /// Adds one registration to each storage server in `storages`.
    pub async fn register_storage(&self, storages: &[Id]) -> ClientResult<()> {
        self.put_ids("/distributor/register/storage", storages)
            .await
    }

    /// Removes one registration from each storage server in `storages` (409 below zero).
    pub async fn unregister_storage(&self, storages: &[Id]) -> ClientResult<()> {
        self.put_ids("/distributor/unregister/storage", storages)
            .await
    }

    /// The placement of each of `blocks`, in order.
    pub async fn blocks(&self, blocks: &[Id]) -> ClientResult<Vec<BlockPlacement>> {
        let url = self.endpoint.url("/distributor/blocks");
        let request = self.endpoint.http().post(&url).body(ids_json(blocks));
        let placements: Vec<BlockPlacement> = self
            .endpoint
            .call_json(
                &url,
                request,
                "blocks answer is not a JSON array of placements",
            )
            .await?;
        if placements.len() != blocks.len() {
            return Err(ClientError::Protocol {
                url,
                reason: format!(
                    "asked about {} blocks, got {} placements",
                    blocks.len(),
                    placements.len()
                ),
            });
        }
        Ok(placements)
    }

    /// Counters and gauges of the distributor.
    pub async fn status(&self) -> ClientResult<DistributorStatus> {
        self.endpoint
            .get_json("/distributor/status", "status answer")
            .await
    }

    /// Garbage collection's backlog and counters (`GET /distributor/gc`).
    pub async fn gc_status(&self) -> ClientResult<GcStatus> {
        self.endpoint.get_json("/distributor/gc", "gc status").await
    }

    /// Runs a sweep now (`POST /distributor/gc`; needs `distributor:admin`), calling
    /// `progress` for each progress line, and returns the final report.
    pub async fn gc_run(
        &self,
        dry_run: bool,
        mut progress: impl FnMut(&GcProgress),
    ) -> ClientResult<SweepReport> {
        /// Longest line accepted from the server.
        const MAX_LINE: usize = 64 * 1024;
        let url = self
            .endpoint
            .url(&format!("/distributor/gc?dry_run={dry_run}"));
        let response = self
            .endpoint
            .call(&url, self.endpoint.http().post(&url))
            .await?;
        let protocol = |reason: String| ClientError::Protocol {
            url: url.clone(),
            reason,
        };
        let mut lines = LineReader::new(&url, response, MAX_LINE);
        while let Some(line) = lines.next_line().await? {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let event: GcEvent = serde_json::from_slice(line)
                .map_err(|e| protocol(format!("not a gc event line: {e}")))?;
            match event {
                GcEvent::Progress(p) => progress(&p),
                GcEvent::Report(report) => return Ok(report),
                GcEvent::Error(reason) => {
                    return Err(protocol(format!("the sweep failed: {reason}")));
                }
            }
        }
        Err(protocol(
            "the answer ended before the sweep's report".into(),
        ))
    }

    async fn put_ids(&self, path: &str, ids: &[Id]) -> ClientResult<()> {
        let url = self.endpoint.url(path);
        let request = self.endpoint.http().put(&url).body(ids_json(ids));
        self.endpoint.call(&url, request).await?;
        Ok(())
    }
}

/// `ids` as a JSON array of hex strings.
fn ids_json(ids: &[Id]) -> Vec<u8> {
    // 64 hex + 2 quotes + 1 comma per id, plus brackets.
    let mut out = String::with_capacity(ids.len() * (Id::HEX_LEN + 3) + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(&id.to_string());
        out.push('"');
    }
    out.push(']');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_body_is_a_json_array_of_hex() {
        let a = Id::of_content(b"a");
        let b = Id::of_content(b"b");
        let parsed: Vec<Id> = serde_json::from_slice(&ids_json(&[a, b])).expect("json");
        assert_eq!(parsed, vec![a, b]);
        assert_eq!(ids_json(&[]), b"[]");
    }

    #[test]
    fn status_reader_defaults_missing_fields() {
        let status: DistributorStatus =
            serde_json::from_str(r#"{"pinned":3,"storages_active":2,"extra":true}"#).expect("json");
        assert_eq!(status.pinned, 3);
        assert_eq!(status.storages_active, 2);
        assert_eq!(status.under_replicated, 0);
    }

    #[test]
    fn placement_wire_form() {
        let block = Id::of_content(b"x");
        let storage = Id::of_content(b"s");
        let json = serde_json::to_value(BlockPlacement {
            block,
            storages: vec![storage],
        })
        .expect("json");
        assert_eq!(json["block"], block.to_string());
        assert_eq!(json["storages"][0], storage.to_string());
    }
}
