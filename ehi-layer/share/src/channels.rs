//! The patient's side of grant channels (design in [`crate::contribution`]): opening a
//! channel per grant, reviewing contributions (`ehi inbox`, `accept`, `reject`) and
//! merging the apps' own audit chains into the vault's log ("last use" per grant).

use serde_json::json;

use crate::contribution::{self, MessageBody};
use crate::letter;
use ehi_vault::fhir::Input;
use ehi_vault::format::{AppAuditCursor, ContributionRecord, GrantRecord};
use ehi_vault::vault::prelude::*;

/// A contribution waiting for the patient's decision.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContributionInfo {
    /// The id to accept or reject it with (32 hex digits).
    pub id: String,
    /// The grant it came through.
    pub grant: String,
    /// The app's name.
    pub app_name: String,
    /// `Type/id` of each resource.
    pub resources: Vec<String>,
    /// The app's note.
    pub note: String,
    /// When the slots server received it, ms since the Unix epoch.
    pub received_ms: u64,
    /// `None` when it can be accepted; else why the device refuses it.
    pub refused: Option<String>,
}

/// What merging the apps' audit chains did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct MergeReport {
    /// App entries verified and merged.
    pub merged: usize,
    /// Grants whose chain does not verify, with the reason (nothing of them merged
    /// past the break).
    pub broken: Vec<(String, String)>,
}

/// One message of a channel, opened.
struct ChannelItem {
    address: Id,
    received_ms: u64,
    opened: Result<contribution::Opened>,
}

/// Opens the grant channel of grant `id` (registers its slot at the header sealed to
/// the app). Idempotent. Every grant gets one: apps report their reads through it,
/// and contribute grants send contributions.
pub async fn publish_channel(vault: &Vault, id: &str) -> Result<()> {
    let record = {
        let state = vault.state.lock().await;
        find_grant(&state.root.grants, id)?.clone()
    };
    publish_channel_of(vault, &record).await
}

/// Opens the channel of every grant that lacks one.
pub async fn publish_channels(vault: &Vault) -> Result<()> {
    let grants = {
        let mut state = vault.state.lock().await;
        vault.refresh_state(&mut state).await?;
        state.root.grants.clone()
    };
    for grant in &grants {
        publish_channel_of(vault, grant).await?;
    }
    Ok(())
}

async fn publish_channel_of(vault: &Vault, grant: &GrantRecord) -> Result<()> {
    let slot = contribution::channel_slot(&vault.slot, &grant.id);
    let exists = vault
        .net
        .slots()
        .get(&slot)
        .await
        .map_err(|e| EhiError::network("reading a grant channel", e))?
        .is_some();
    if exists {
        return Ok(());
    }
    let seed = contribution::channel_seed(&grant.slot_seed);
    let header = contribution::seal_header(
        &vault.signing,
        &grant.app_hpke,
        &slot,
        grant.id,
        ehi_vault::keystore::hpke_public_of(&seed),
    )?;
    let blob = Blob {
        address: Id::of_content(&header),
        bytes: bytes::Bytes::from(header),
    };
    vault.net.put(&blob).await?;
    vault.net.pin(&[blob.address]).await?;
    vault
        .net
        .slots()
        .register(&invariant_spec::slots::RegisterRequest::unsigned(
            slot,
            blob.address,
        ))
        .await
        .map_err(|e| EhiError::network("registering a grant channel", e))?;
    Ok(())
}

/// Every message of every grant's channel not yet processed, opened.
async fn channel_items(vault: &Vault) -> Result<Vec<(GrantRecord, Vec<ChannelItem>)>> {
    let (grants, done) = {
        let mut state = vault.state.lock().await;
        vault.refresh_state(&mut state).await?;
        let done: Vec<[u8; 32]> = state
            .root
            .ext
            .contributions
            .iter()
            .map(|c| c.address)
            .collect();
        (state.root.grants.clone(), done)
    };
    let mut out = Vec::new();
    for grant in grants {
        let slot = contribution::channel_slot(&vault.slot, &grant.id);
        let Some(posted) = letter::posted(&vault.net, slot, "a grant channel").await? else {
            out.push((grant, Vec::new()));
            continue;
        };
        let seed = contribution::channel_seed(&grant.slot_seed);
        let mut items = Vec::new();
        for (address, received_ms) in posted {
            if done.contains(address.as_bytes()) {
                continue;
            }
            let what = format!(
                "message {} of grant {}",
                short(&address),
                hex::encode(grant.id)
            );
            let opened = match vault.net.get(&address, &what).await {
                Ok(blob) => contribution::open_message(
                    &seed,
                    &slot,
                    &grant.app_signing,
                    &grant.id,
                    &blob,
                    &what,
                ),
                Err(e) => Err(e),
            };
            items.push(ChannelItem {
                address,
                received_ms,
                opened,
            });
        }
        out.push((grant, items));
    }
    Ok(out)
}

/// Contributions waiting in the grant channels (`ehi inbox`), oldest first per
/// grant, each checked on this device ([`ContributionInfo::refused`] says why one
/// cannot be accepted). Messages that do not open or are not signed by the grant's
/// app are listed as refused too.
pub async fn contributions(vault: &Vault) -> Result<Vec<ContributionInfo>> {
    let overrides = {
        let state = vault.state.lock().await;
        state.root.overrides.clone()
    };
    let mut out = Vec::new();
    for (grant, items) in channel_items(vault).await? {
        for item in items {
            let mut info = ContributionInfo {
                id: short(&item.address),
                grant: hex::encode(grant.id),
                app_name: grant.app_name.clone(),
                resources: Vec::new(),
                note: String::new(),
                received_ms: item.received_ms,
                refused: None,
            };
            match item.opened {
                Ok(opened) => match opened.message.body {
                    MessageBody::Audit(_) => continue,
                    MessageBody::Contribution {
                        resources, note, ..
                    } => {
                        info.note = note;
                        match contribution::check_resources(&resources, &grant.scopes, &overrides) {
                            Ok((_, refs)) => info.resources = refs,
                            Err(reason) => info.refused = Some(reason),
                        }
                        if !grant.contribute {
                            info.refused = Some(format!(
                                "grant {} is read-only: contributions through it are refused",
                                hex::encode(grant.id)
                            ));
                        }
                    }
                },
                Err(e) => info.refused = Some(e.to_string()),
            }
            out.push(info);
        }
    }
    Ok(out)
}

/// Accepts contribution `id`: imports its resources and a FHIR R4 `Provenance`
/// (the app as author, the patient as verifier, the app's signature) targeting
/// them, records it in the root and logs it. Refused contributions cannot be
/// accepted (the error names why).
pub async fn accept_contribution(vault: &Vault, id: &str) -> Result<ContributionInfo> {
    let (grant, item) = find_contribution(vault, id).await?;
    let opened = item.opened?;
    if !grant.contribute {
        return Err(EhiError::NotGranted(format!(
            "contribution {id} came through grant {}, which is read-only: refused",
            hex::encode(grant.id)
        )));
    }
    let MessageBody::Contribution {
        resources,
        note,
        created_ms,
    } = opened.message.body
    else {
        return Err(EhiError::NotFound(format!("contribution {id}")));
    };
    let overrides = {
        let state = vault.state.lock().await;
        state.root.overrides.clone()
    };
    let (resources, refs) = contribution::check_resources(&resources, &grant.scopes, &overrides)
        .map_err(|reason| EhiError::InvalidArgument(format!("contribution {id}: {reason}")))?;
    let short_id = short(&item.address);
    let provenance_id = format!("contribution-{short_id}");
    let now = now_ms();
    let patient = vault.signing.verifying_key().to_bytes();
    let provenance = json!({
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": refs.iter().map(|r| json!({"reference": r})).collect::<Vec<_>>(),
        "occurredDateTime": instant(created_ms),
        "recorded": instant(now),
        "policy": [format!("urn:ehi-layer:grant:{}", hex::encode(grant.id))],
        "reason": [{"text": note}],
        "activity": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "code": "CREATE", "display": "create"}]},
        "agent": [
            {"type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                "code": "author", "display": "Author"}]},
             "who": {"identifier": {"system": "urn:ehi-layer:ed25519",
                                    "value": hex::encode(grant.app_signing)},
                     "display": grant.app_name}},
            {"type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                "code": "verifier", "display": "Verifier"}]},
             "who": {"identifier": {"system": "urn:ehi-layer:ed25519",
                                    "value": hex::encode(patient)},
                     "display": "the patient (accepted on their device)"}}
        ],
        "signature": [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013",
                      "code": "1.2.840.10065.1.12.1.1", "display": "Author's Signature"}],
            "when": instant(created_ms),
            "who": {"identifier": {"system": "urn:ehi-layer:ed25519",
                                   "value": hex::encode(grant.app_signing)}},
            "sigFormat": "application/x-ehi-ed25519",
            "data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD,
                                           &opened.signature),
        }],
    });
    let mut entries: Vec<Value> = resources
        .into_iter()
        .map(|r| json!({"resource": r}))
        .collect();
    entries.push(json!({"resource": provenance}));
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": entries});
    let bytes = serde_json::to_vec(&bundle)
        .map_err(|e| EhiError::Crypto(format!("encoding the contribution: {e}")))?;
    vault
        .import(vec![Input::from_bytes(
            format!("contribution {short_id}"),
            bytes,
        )])
        .await?;
    let mut entities = refs.clone();
    entities.push(format!("Provenance/{provenance_id}"));
    entities.push(format!("grant/{}", hex::encode(grant.id)));
    let audit = AuditRecord::new(
        AuditAction::Contribution,
        format!(
            "accepted {} resource(s) contributed by {}",
            refs.len(),
            grant.app_name
        ),
    )
    .with_entities(entities);
    let record = ContributionRecord {
        address: *item.address.as_bytes(),
        grant: grant.id,
        accepted: true,
        provenance_id: Some(provenance_id),
        decided_ms: now,
    };
    vault
        .commit_extension(move |root| record_contribution(root, &record), &audit)
        .await?;
    Ok(ContributionInfo {
        id: short_id,
        grant: hex::encode(grant.id),
        app_name: grant.app_name,
        resources: refs,
        note,
        received_ms: item.received_ms,
        refused: None,
    })
}

/// Rejects contribution `id` (valid or refused): nothing is imported; the decision
/// is recorded in the root and logged.
pub async fn reject_contribution(vault: &Vault, id: &str) -> Result<()> {
    let (grant, item) = find_contribution(vault, id).await?;
    let audit = AuditRecord::new(
        AuditAction::Contribution,
        format!("rejected a contribution of {}", grant.app_name),
    )
    .with_entities(vec![
        format!("contribution/{}", short(&item.address)),
        format!("grant/{}", hex::encode(grant.id)),
    ]);
    let mut audit = audit;
    audit.success = false;
    let record = ContributionRecord {
        address: *item.address.as_bytes(),
        grant: grant.id,
        accepted: false,
        provenance_id: None,
        decided_ms: now_ms(),
    };
    vault
        .commit_extension(move |root| record_contribution(root, &record), &audit)
        .await
}

async fn find_contribution(vault: &Vault, id: &str) -> Result<(GrantRecord, ChannelItem)> {
    let wanted = id.trim().to_ascii_lowercase();
    if wanted.len() < 8 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EhiError::InvalidArgument(format!(
            "contribution id {id:?}: give the hex id `ehi inbox` shows (at least 8 digits)"
        )));
    }
    let mut found = Vec::new();
    for (grant, items) in channel_items(vault).await? {
        for item in items {
            let is_audit = matches!(
                &item.opened,
                Ok(o) if matches!(o.message.body, MessageBody::Audit(_))
            );
            if !is_audit && hex::encode(item.address.as_bytes()).starts_with(&wanted) {
                found.push((grant.clone(), item));
            }
        }
    }
    match found.len() {
        1 => found
            .pop()
            .ok_or_else(|| EhiError::NotFound(format!("contribution {id}"))),
        0 => Err(EhiError::NotFound(format!(
            "contribution {id} (not pending: already accepted or rejected, or unknown)"
        ))),
        _ => Err(EhiError::InvalidArgument(format!(
            "contribution id {id} is ambiguous; give more digits"
        ))),
    }
}

/// Merges the apps' own audit chains: for each grant, the new entries in its
/// channel are verified as the continuation of what was merged before (seq, hash
/// chain, the grant's app key, signature) and logged in the vault's audit log as
/// one `app-read` entry per grant; the grant's "last use" moves to when the newest
/// one reached the slots server. A chain that breaks is reported and not merged
/// past the break.
pub async fn merge_app_audit(vault: &Vault) -> Result<MergeReport> {
    let mut report = MergeReport::default();
    let cursors = {
        let state = vault.state.lock().await;
        state.root.ext.app_audit.clone()
    };
    for (grant, items) in channel_items(vault).await? {
        let cursor = cursors.iter().find(|c| c.grant == grant.id);
        let after = cursor.map(|c| (c.last_seq, c.last_hash));
        let mut entries = Vec::new();
        let mut last_use = 0u64;
        for item in items {
            let Ok(opened) = item.opened else { continue };
            if let MessageBody::Audit(entry) = opened.message.body {
                if after.is_some_and(|(seq, _)| entry.seq <= seq) {
                    continue;
                }
                last_use = last_use.max(item.received_ms);
                entries.push(entry);
            }
        }
        if entries.is_empty() {
            continue;
        }
        let verified =
            match ehi_vault::audit::verify_continuation(&entries, after, &[grant.app_signing]) {
                Ok(n) => n,
                Err(b) => {
                    report.broken.push((hex::encode(grant.id), b.to_string()));
                    b.index
                }
            };
        if verified == 0 {
            continue;
        }
        let last = &entries[verified - 1];
        let mut entities: Vec<String> = Vec::new();
        for entry in &entries[..verified] {
            let what: Vec<String> = entry
                .event()
                .ok()
                .and_then(|e| e.get("entity").cloned())
                .and_then(|e| e.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|x| {
                    x.pointer("/what/display")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect();
            entities.push(format!(
                "app entry {} ({}): {}",
                entry.seq,
                hex::encode(entry.hash()),
                what.join(", ")
            ));
        }
        entities.push(format!("grant/{}", hex::encode(grant.id)));
        let audit = AuditRecord::new(
            AuditAction::AppRead,
            format!(
                "{} reported {} use(s), verified against its key",
                grant.app_name, verified
            ),
        )
        .with_entities(entities);
        let cursor = AppAuditCursor {
            grant: grant.id,
            last_seq: last.seq,
            last_hash: last.hash(),
            last_use_ms: last_use,
            merged: cursor.map_or(0, |c| c.merged) + verified as u64,
        };
        vault
            .commit_extension(
                move |root| {
                    let previous = root.ext.app_audit.iter().find(|c| c.grant == cursor.grant);
                    if previous.is_some_and(|p| p.last_seq >= cursor.last_seq) {
                        return Err(EhiError::Contention { attempts: 1 });
                    }
                    root.ext.app_audit.retain(|c| c.grant != cursor.grant);
                    root.ext.app_audit.push(cursor.clone());
                    Ok(())
                },
                &audit,
            )
            .await?;
        report.merged += verified;
    }
    Ok(report)
}

/// "Last use" of grant `id` as merged from its app's audit chain.
pub(crate) fn last_use(root: &VaultRoot, id: &[u8; 16]) -> Option<u64> {
    root.ext
        .app_audit
        .iter()
        .find(|c| c.grant == *id)
        .map(|c| c.last_use_ms)
}

fn record_contribution(root: &mut VaultRoot, record: &ContributionRecord) -> Result<()> {
    if root
        .ext
        .contributions
        .iter()
        .any(|c| c.address == record.address)
    {
        return Err(EhiError::InvalidArgument(format!(
            "contribution {} was decided on another device meanwhile",
            short(&Id::from_bytes(record.address))
        )));
    }
    root.ext.contributions.push(record.clone());
    Ok(())
}

fn short(address: &Id) -> String {
    crate::consent::request_id(address)
}
