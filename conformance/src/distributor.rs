//! Distributor checks (`spec/distributor.md`): reference-counted pins and storage
//! registrations, the accepted id-list body forms, placements, status and garbage
//! collection status.

use std::time::Duration;

use bytes::Bytes;
use invariant_spec::Id;
use reqwest::Method;
use serde_json::Value;

use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Resp, Verdict, Warnings, ensure, fail, id_list,
    lowercase_id, random_bytes, random_id, rejected_answer,
};
use crate::profile::Profile;

const DOC: &str = "distributor.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "distributor-pin",
        doc: DOC,
        anchor: "distributor-pins",
        title: "PUT /distributor/pin and unpin answer 200 and count references",
        profile: Profile::Core,
        run: pin,
    },
    CheckDef {
        id: "distributor-body-forms",
        doc: DOC,
        anchor: "distributor-bodies",
        title: "id lists are accepted as a JSON array, separated by white space or commas",
        profile: Profile::Core,
        run: body_forms,
    },
    CheckDef {
        id: "distributor-unpin-below-zero",
        doc: DOC,
        anchor: "distributor-pins",
        title: "unpinning or unregistering below zero is 409 and applies nothing",
        profile: Profile::Full,
        run: unpin_below_zero,
    },
    CheckDef {
        id: "distributor-id-case",
        doc: "common.md",
        anchor: "common-id-case",
        title: "ids in id lists are accepted in upper case",
        profile: Profile::Full,
        run: id_case,
    },
    CheckDef {
        id: "distributor-body-malformed",
        doc: DOC,
        anchor: "distributor-bodies",
        title: "a malformed id list is 400 and nothing in it is applied",
        profile: Profile::Full,
        run: body_malformed,
    },
    CheckDef {
        id: "distributor-storage",
        doc: DOC,
        anchor: "distributor-storage",
        title: "PUT /distributor/register/storage and unregister count references",
        profile: Profile::Core,
        run: storage,
    },
    CheckDef {
        id: "distributor-blocks-pinned",
        doc: DOC,
        anchor: "distributor-blocks",
        title: "POST /distributor/blocks answers a pinned block's placement",
        profile: Profile::Core,
        run: blocks_pinned,
    },
    CheckDef {
        id: "distributor-blocks",
        doc: DOC,
        anchor: "distributor-blocks",
        title: "POST /distributor/blocks answers one placement per id, in order",
        profile: Profile::Full,
        run: blocks,
    },
    CheckDef {
        id: "distributor-placement",
        doc: DOC,
        anchor: "distributor-placement",
        title: "a pinned block is placed on the N registered storage servers nearest to it",
        profile: Profile::Core,
        run: placement,
    },
    CheckDef {
        id: "distributor-repair",
        doc: DOC,
        anchor: "distributor-placement",
        title: "a pinned block is copied onto every server of its placement",
        profile: Profile::Core,
        run: repair,
    },
    CheckDef {
        id: "distributor-status",
        doc: DOC,
        anchor: "distributor-status",
        title: "GET /distributor/status answers a JSON object",
        profile: Profile::Full,
        run: status,
    },
    CheckDef {
        id: "distributor-gc-status",
        doc: DOC,
        anchor: "distributor-gc",
        title: "GET /distributor/gc answers the collection backlog and rules as JSON",
        profile: Profile::Full,
        run: gc_status,
    },
];

pub(crate) fn json_list(ids: &[Id]) -> String {
    let quoted: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(","))
}

async fn put(c: &Ctx, route: &str, body: String) -> Result<Resp, Fail> {
    c.send(Method::PUT, &format!("/distributor/{route}"), body)
        .await
}

async fn put_ok(c: &Ctx, route: &str, ids: &[Id]) -> Result<(), Fail> {
    put(c, route, json_list(ids))
        .await?
        .expect(200, &format!("PUT /distributor/{route}"))
}

/// Fails unless removing one reference from each of `ids` is refused with 409.
async fn below_zero(c: &Ctx, route: &str, ids: &[Id], why: &str) -> Result<(), Fail> {
    let resp = put(c, route, json_list(ids)).await?;
    resp.expect(409, why)
}

fn pin(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (a, b) = (random_id(), random_id());
        put_ok(c, "pin", &[a, a, b]).await?;
        // a has 2 pins, b has 1: every pin can be removed once.
        put_ok(c, "unpin", &[a, b]).await?;
        put_ok(c, "unpin", &[a]).await?;
        put(c, "pin", "[]".into())
            .await?
            .expect(200, "pinning an empty list")?;
        Ok(Outcome::Pass)
    })
}

fn unpin_below_zero(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (a, b) = (random_id(), random_id());
        put_ok(c, "pin", &[a, a, b]).await?;
        // a has 2 pins, b has 1: asking for b twice must change nothing.
        below_zero(c, "unpin", &[a, b, b], "unpinning b below zero").await?;
        put_ok(c, "unpin", &[a, b]).await?;
        put_ok(c, "unpin", &[a]).await?;
        below_zero(c, "unpin", &[a], "unpinning a block with no pins").await?;
        below_zero(c, "unpin", &[random_id()], "unpinning a block never pinned").await?;
        // Each body form adds one pin per id: as many unpins succeed, one more is refused.
        let ids: Vec<Id> = (0..4).map(|_| random_id()).collect();
        for (_, body) in body_forms_of(&ids) {
            put(c, "pin", body).await?.expect(200, "pin")?;
        }
        for _ in body_forms_of(&ids) {
            put_ok(c, "unpin", &ids).await?;
        }
        below_zero(c, "unpin", &ids[..1], "one unpin more than pins").await?;
        let s = random_id();
        put_ok(c, "register/storage", &[s, s]).await?;
        put_ok(c, "unregister/storage", &[s]).await?;
        put_ok(c, "unregister/storage", &[s]).await?;
        below_zero(
            c,
            "unregister/storage",
            &[s],
            "unregistering a storage server below zero",
        )
        .await?;
        Ok(Outcome::Pass)
    })
}

/// The id-list body forms of the reference (white space, commas, quoted values), each
/// listing `ids` once.
fn body_forms_of(ids: &[Id]) -> Vec<(&'static str, String)> {
    let plain: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let quoted: Vec<String> = plain.iter().map(|i| format!("\"{i}\"")).collect();
    vec![
        ("white space", plain.join("\n")),
        ("commas", plain.join(", ")),
        ("quoted values", quoted.join(" ")),
    ]
}

fn id_case(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let ids: Vec<Id> = (0..2).map(|_| random_id()).collect();
        let upper: Vec<String> = ids
            .iter()
            .map(|i| i.to_string().to_ascii_uppercase())
            .collect();
        put(c, "pin", upper.join(" "))
            .await?
            .expect(200, "pin with upper-case ids")?;
        put_ok(c, "unpin", &ids).await?;
        Ok(Outcome::Pass)
    })
}

fn body_forms(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let ids: Vec<Id> = (0..4).map(|_| random_id()).collect();
        let forms = body_forms_of(&ids);
        for (what, body) in &forms {
            put(c, "pin", body.clone())
                .await?
                .expect(200, &format!("pin with ids separated by {what}"))?;
        }
        // Each form added one pin to each id: as many unpins succeed.
        for _ in &forms {
            put_ok(c, "unpin", &ids).await?;
        }
        Ok(Outcome::Pass)
    })
}

fn body_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let good = random_id();
        let bodies = [
            ("a bad id", format!("[\"{good}\", \"xyz\"]")),
            ("a short id", format!("{good} abcd")),
            ("a truncated array", format!("[\"{good}\"")),
            ("a non-hex id", format!("{good} {}", "g".repeat(64))),
        ];
        for (what, body) in bodies {
            let resp = put(c, "pin", body).await?;
            warnings.merge(rejected_answer(&resp, &format!("pin with {what}"))?);
        }
        below_zero(
            c,
            "unpin",
            &[good],
            "unpinning an id from refused bodies (nothing may have been applied)",
        )
        .await?;
        warnings.outcome()
    })
}

fn storage(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let s = random_id();
        put_ok(c, "register/storage", &[s, s]).await?;
        put_ok(c, "unregister/storage", &[s]).await?;
        put_ok(c, "unregister/storage", &[s]).await?;
        Ok(Outcome::Pass)
    })
}

fn blocks_pinned(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (pinned, loose) = (random_id(), random_id());
        put_ok(c, "pin", &[pinned]).await?;
        let asked = [loose, pinned];
        let resp = c
            .send(Method::POST, "/distributor/blocks", json_list(&asked))
            .await?;
        resp.expect(200, "POST /distributor/blocks")?;
        let answer: Vec<Value> = resp.json()?;
        let mut seen_pinned = false;
        for item in &answer {
            let Some(text) = item.get("block").and_then(Value::as_str) else {
                fail!("a placement has no block: {item}");
            };
            let block = lowercase_id(text, "block")?;
            ensure!(
                asked.contains(&block),
                "a placement for a block not asked about: {item}"
            );
            seen_pinned |= block == pinned;
            let Some(storages) = item.get("storages").and_then(Value::as_array) else {
                fail!("a placement has no storages array: {item}");
            };
            for storage in storages {
                lowercase_id(storage.as_str().unwrap_or(""), "a storage id")?;
            }
        }
        put_ok(c, "unpin", &[pinned]).await?;
        ensure!(
            seen_pinned,
            "the pinned block {pinned} has no placement in the answer: {answer:?}"
        );
        Ok(Outcome::Pass)
    })
}

fn blocks(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (pinned, loose) = (random_id(), random_id());
        put_ok(c, "pin", &[pinned]).await?;
        let asked = [loose, pinned, loose];
        let resp = c
            .send(Method::POST, "/distributor/blocks", json_list(&asked))
            .await?;
        resp.expect(200, "POST /distributor/blocks")?;
        let answer: Vec<Value> = resp.json()?;
        ensure!(
            answer.len() == asked.len(),
            "asked about {} blocks, got {} placements",
            asked.len(),
            answer.len()
        );
        for (item, block) in answer.iter().zip(asked) {
            let Some(text) = item.get("block").and_then(Value::as_str) else {
                fail!("a placement has no block: {item}");
            };
            ensure!(
                lowercase_id(text, "block")? == block,
                "one placement per asked id, in request order: {item} for {block}"
            );
            let Some(storages) = item.get("storages").and_then(Value::as_array) else {
                fail!("a placement has no storages array: {item}");
            };
            for storage in storages {
                lowercase_id(storage.as_str().unwrap_or(""), "a storage id")?;
            }
            if block == loose {
                ensure!(
                    storages.is_empty(),
                    "an unpinned block has storages: {item}"
                );
            }
        }
        let empty = c.send(Method::POST, "/distributor/blocks", "").await?;
        empty.expect(200, "POST /distributor/blocks with no ids")?;
        let none: Vec<Value> = empty.json()?;
        ensure!(none.is_empty(), "no ids asked, got {none:?}");
        put_ok(c, "unpin", &[pinned]).await?;
        Ok(Outcome::Pass)
    })
}

fn status(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = c.get("/distributor/status").await?;
        if resp.status == 404 {
            return Ok(Outcome::Warn(
                "no /distributor/status (an optional extension of this project)".into(),
            ));
        }
        resp.expect(200, "GET /distributor/status")?;
        let body: Value = resp.json()?;
        ensure!(body.is_object(), "status must be a JSON object: {body}");
        for field in ["pinned", "storages_active", "replicas"] {
            if let Some(v) = body.get(field) {
                ensure!(v.is_u64(), "{field} must be a count: {body}");
            }
        }
        Ok(Outcome::Pass)
    })
}

fn gc_status(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = c.get("/distributor/gc").await?;
        if resp.status == 404 {
            return Ok(Outcome::Warn(
                "no /distributor/gc (an optional extension of this project)".into(),
            ));
        }
        resp.expect(200, "GET /distributor/gc")?;
        let body: Value = resp.json()?;
        ensure!(body.is_object(), "gc status must be a JSON object: {body}");
        for field in [
            "pending_blocks",
            "pending_bytes",
            "behind",
            "deleted_blocks",
            "deleted_bytes",
            "sweeps",
            "grace_seconds",
        ] {
            let value = body.get(field);
            ensure!(
                value.is_some_and(Value::is_u64),
                "{field} must be a count: {body}"
            );
        }
        for field in ["last_sweep", "unpinned_after_seconds", "interval_seconds"] {
            if let Some(v) = body.get(field) {
                ensure!(
                    v.is_null() || v.is_u64(),
                    "{field} must be null or a count: {body}"
                );
            }
        }
        Ok(Outcome::Pass)
    })
}

/// The storages of one block's placement.
async fn placement_of(c: &Ctx, block: &Id) -> Result<Vec<Id>, Fail> {
    let resp = c
        .send(Method::POST, "/distributor/blocks", json_list(&[*block]))
        .await?;
    resp.expect(200, "POST /distributor/blocks")?;
    let answer: Vec<Value> = resp.json()?;
    let Some(storages) = answer
        .first()
        .and_then(|item| item.get("storages"))
        .and_then(Value::as_array)
    else {
        fail!("no placement in {answer:?}");
    };
    storages
        .iter()
        .map(|s| lowercase_id(s.as_str().unwrap_or(""), "a storage id"))
        .collect()
}

/// Four suite storage peers registered with the distributor, one holding `data`;
/// `None` (skip) when the distributor cannot resolve the suite's peers.
async fn storage_peers(c: &Ctx, data: &Bytes) -> Result<Option<(Vec<Id>, Id)>, Fail> {
    if !c.helper.brokered() {
        return Ok(None);
    }
    let block = Id::of_content(data);
    let mut peers = vec![
        c.helper
            .add_peer("storage", vec![(block, data.clone())])
            .await?,
    ];
    for _ in 0..3 {
        peers.push(c.helper.add_peer("storage", Vec::new()).await?);
    }
    put_ok(c, "register/storage", &peers).await?;
    Ok(Some((peers, block)))
}

const NO_BROKER: &str = "the distributor resolves storage servers through a broker the suite \
                         does not know (give --suite-broker or --broker)";

/// The instant after which a bounded wait gives up.
fn deadline(c: &Ctx) -> tokio::time::Instant {
    tokio::time::Instant::now() + c.timeout * 2
}

fn placement(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = Bytes::from(random_bytes(2000));
        let Some((peers, block)) = storage_peers(c, &data).await? else {
            return Ok(Outcome::Skip(NO_BROKER.into()));
        };
        // The distributor also places on the storage servers its broker lists
        // (`distributor-storage`): they are candidates too.
        let listed = c.helper.broker_storages().await?;
        put_ok(c, "pin", &[block]).await?;
        let until = deadline(c);
        let (settled, last) = loop {
            let last = placement_of(c, &block).await?;
            if last.len() >= 3 || last.len() >= peers.len() {
                break (true, last);
            }
            if tokio::time::Instant::now() >= until {
                break (false, last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        put_ok(c, "unpin", &[block]).await?;
        put_ok(c, "unregister/storage", &peers).await?;
        ensure!(
            settled,
            "the placement never reached 3 of the {} active storage servers: {}",
            peers.len(),
            id_list(&last)
        );
        placement_verdict(&block, &last, &peers, &listed)
    })
}

/// Whether `placement` is the N servers nearest to `block`, nearest first, among the
/// registered `peers` (all reachable) and the broker's `listed` storage servers (whose
/// liveness the suite cannot know, so they may be missing from it).
fn placement_verdict(block: &Id, placement: &[Id], peers: &[Id], listed: &[Id]) -> Verdict {
    let n = placement.len();
    for server in placement {
        ensure!(
            peers.contains(server) || listed.contains(server),
            "the placement names {server}, neither registered nor listed by the broker: {}",
            id_list(placement)
        );
    }
    let distance = |id: &Id| block.distance(id);
    ensure!(
        placement
            .windows(2)
            .all(|w| distance(&w[0]) < distance(&w[1])),
        "the placement must list its servers nearest first: {}",
        id_list(placement)
    );
    if let Some(farthest) = placement.last() {
        let skipped: Vec<&Id> = peers
            .iter()
            .filter(|p| !placement.contains(p) && distance(p) < distance(farthest))
            .collect();
        ensure!(
            skipped.is_empty(),
            "the placement {} skips registered servers nearer to the block: {}",
            id_list(placement),
            id_list(skipped)
        );
    }
    if n != 3 {
        return Ok(Outcome::Warn(format!(
            "placement on {n} servers (the default N is 3)"
        )));
    }
    Ok(Outcome::Pass)
}

fn repair(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = Bytes::from(random_bytes(3000));
        let Some((peers, block)) = storage_peers(c, &data).await? else {
            return Ok(Outcome::Skip(NO_BROKER.into()));
        };
        put_ok(c, "pin", &[block]).await?;
        let until = deadline(c);
        let (copied, targets) = loop {
            // Only the suite's peers can be inspected; the broker may list others.
            let targets: Vec<Id> = placement_of(c, &block)
                .await?
                .into_iter()
                .filter(|t| peers.contains(t))
                .collect();
            if !targets.is_empty() && targets.iter().all(|t| c.helper.holds(t, &block)) {
                break (true, targets);
            }
            if tokio::time::Instant::now() >= until {
                break (false, targets);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        put_ok(c, "unpin", &[block]).await?;
        put_ok(c, "unregister/storage", &peers).await?;
        let missing: Vec<&Id> = targets
            .iter()
            .filter(|t| !c.helper.holds(t, &block))
            .collect();
        ensure!(
            copied,
            "after {} s, placement {} still lacks the block on {}",
            (c.timeout * 2).as_secs(),
            id_list(&targets),
            id_list(missing)
        );
        Ok(Outcome::Pass)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids at known distances from `block`: `near(block, k)` differs in the last byte.
    fn near(block: &Id, k: u8) -> Id {
        let mut bytes = *block.as_bytes();
        bytes[31] ^= k;
        Id::from_bytes(bytes)
    }

    #[test]
    fn a_placement_may_use_the_brokers_other_storage_servers() {
        let block = Id::of_content(b"block");
        let peers = [
            near(&block, 2),
            near(&block, 8),
            near(&block, 16),
            near(&block, 32),
        ];
        let listed = [near(&block, 1), near(&block, 4)];
        // Nearest first over registered and listed servers.
        let placement = [listed[0], peers[0], listed[1]];
        assert_eq!(
            placement_verdict(&block, &placement, &peers, &listed),
            Ok(Outcome::Pass)
        );
        // A listed server may be down: skipping it is allowed, skipping a peer is not.
        let without_listed = [peers[0], listed[1], peers[1]];
        assert!(placement_verdict(&block, &without_listed, &peers, &listed).is_ok());
        let skips_a_peer = [listed[0], listed[1], peers[1]];
        assert!(placement_verdict(&block, &skips_a_peer, &peers, &listed).is_err());
        let unordered = [peers[0], listed[0], listed[1]];
        assert!(placement_verdict(&block, &unordered, &peers, &listed).is_err());
        let stranger = [near(&block, 3), peers[0], peers[1]];
        assert!(placement_verdict(&block, &stranger, &peers, &listed).is_err());
    }
}
