//! The app's side of a grant: [`AppSession`] opens what a grant gives, with the library
//! alone, from the network — no server is asked for permission.
//!
//! Opening: read the grant slot from the ticket (tombstone → revoked), fetch the sealed
//! grant, open it with the app's HPKE key and check the patient's signature (see
//! [`ehi_vault::grant`]), refuse it if expired, then for each granted scope read the scope
//! slot and decrypt the manifest it points at with the scope keys the grant carries. A
//! manifest sealed under an epoch the grant does not hold (the scope was rotated by a
//! revocation) gives [`EhiError::Revoked`].
//!
//! Reads, searches and exports are answered from those manifests (their search indexes
//! and resource tables) only: the app holds no key of any other scope, so enforcement is
//! cryptographic. Every call checks the expiry again.

use std::collections::BTreeMap;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use invariant_spec::Id;
use serde_json::{Value, json};

use ehi_vault::app::AppKeystore;
use ehi_vault::error::{EhiError, Result};
use ehi_vault::format::{self, ScopeManifest};
use ehi_vault::grant::{self, GrantPayload, GrantTicket, GrantedScope};
use ehi_vault::keys::{CONTEXT_MANIFEST, CONTEXT_RESOURCE, SecretKey};
use ehi_vault::network::Network;
use ehi_vault::scope::{self, Scope};
use ehi_vault::seal::Kind;
use ehi_vault::search::Index;
use ehi_vault::slotmove::tombstone_address;
use ehi_vault::snapshot::Snapshot;
use ehi_vault::time::{instant, now_ms};
use ehi_vault::vault::{SearchHits, fetch_object, fetch_resource};

/// Concurrent blob reads of a session.
const CONCURRENCY: usize = 32;

/// One granted scope as the app sees it.
#[derive(Debug)]
struct Granted {
    keys: GrantedScope,
    manifest: ScopeManifest,
    index: Option<Index>,
}

/// An app's view of a patient's vault through one grant.
pub struct AppSession {
    net: Network,
    ticket: GrantTicket,
    payload: GrantPayload,
    scopes: BTreeMap<Scope, Granted>,
}

impl std::fmt::Debug for AppSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSession")
            .field("grant", &self.ticket.grant)
            .field("scopes", &self.scopes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AppSession {
    /// Opens the grant of `ticket` with the app's keys (see the module docs).
    pub async fn open(net: Network, app: &AppKeystore, ticket: &GrantTicket) -> Result<AppSession> {
        let slot = net
            .slots()
            .get(&ticket.grant_slot)
            .await
            .map_err(|e| EhiError::network("reading the grant slot", e))?
            .ok_or_else(|| EhiError::NotFound(format!("grant {}", ticket.grant)))?;
        if slot.address == tombstone_address() {
            return Err(EhiError::Revoked {
                grant: ticket.grant.clone(),
                reason: "the patient revoked it".into(),
            });
        }
        let blob = net
            .get(&slot.address, &format!("grant {}", ticket.grant))
            .await?;
        let payload = grant::open_grant(app, ticket, &blob)?;
        payload.check_expiry(now_ms())?;
        let mut session = AppSession {
            net,
            ticket: ticket.clone(),
            payload,
            scopes: BTreeMap::new(),
        };
        session.refresh().await?;
        Ok(session)
    }

    /// Re-reads every granted scope's manifest through its slot with the keys this
    /// session holds (to see the patient's new data). After a revocation this fails
    /// with [`EhiError::Revoked`]: the manifests moved to a key epoch the grant lacks.
    pub async fn refresh(&mut self) -> Result<()> {
        self.payload.check_expiry(now_ms())?;
        let mut scopes = BTreeMap::new();
        for granted in &self.payload.scopes {
            let manifest = self.open_manifest(granted).await?;
            scopes.insert(
                granted.scope,
                Granted {
                    keys: granted.clone(),
                    manifest,
                    index: None,
                },
            );
        }
        self.scopes = scopes;
        Ok(())
    }

    async fn open_manifest(&self, granted: &GrantedScope) -> Result<ScopeManifest> {
        let scope = granted.scope;
        let slot = Id::from_bytes(granted.slot_id);
        let state = self
            .net
            .slots()
            .get(&slot)
            .await
            .map_err(|e| EhiError::network(format!("reading the slot of scope {scope}"), e))?
            .ok_or_else(|| EhiError::NotFound(format!("the slot of scope {scope}")))?;
        if state.address == tombstone_address() {
            return Err(EhiError::Revoked {
                grant: self.ticket.grant.clone(),
                reason: "the vault was removed".into(),
            });
        }
        let what = format!("the manifest of scope {scope}");
        let keys = granted.keys.clone();
        let held: Vec<u32> = keys.iter().map(|k| k.epoch).collect();
        let bytes = self.net.get(&state.address, &what).await?;
        if let Some(epoch) = ehi_vault::seal::epoch_of(&bytes)
            && !held.contains(&epoch)
        {
            return Err(EhiError::Revoked {
                grant: self.ticket.grant.clone(),
                reason: format!(
                    "scope {scope} moved to key epoch {epoch}, which this grant does not hold"
                ),
            });
        }
        let (payload, _) = fetch_object(
            &self.net,
            CONCURRENCY,
            state.address,
            Kind::Manifest,
            scope.name(),
            &what,
            move |epoch| {
                keys.iter()
                    .find(|k| k.epoch == epoch)
                    .map(|k| k.key.derive(CONTEXT_MANIFEST))
            },
        )
        .await?;
        format::decode_manifest(&payload, scope)
    }

    /// The grant id.
    pub fn grant_id(&self) -> &str {
        &self.ticket.grant
    }

    /// The scopes the grant covers.
    pub fn scopes(&self) -> Vec<Scope> {
        self.payload.scopes.iter().map(|s| s.scope).collect()
    }

    /// The grant's purpose of use.
    pub fn purpose(&self) -> &str {
        &self.payload.purpose
    }

    /// When the grant expires, ms since the Unix epoch.
    pub fn expires_ms(&self) -> u64 {
        self.payload.expires_ms
    }

    /// Whether the grant allows contributions.
    pub fn can_contribute(&self) -> bool {
        self.payload.contribute
    }

    fn check(&self) -> Result<()> {
        self.payload.check_expiry(now_ms())
    }

    /// Refuses an expired grant (for the grant channel, [`crate::contribution`]).
    pub(crate) fn check_expiry(&self) -> Result<()> {
        self.check()
    }

    /// The network of this session.
    pub(crate) fn network(&self) -> &Network {
        &self.net
    }

    /// The ticket this session was opened with.
    pub(crate) fn ticket(&self) -> &GrantTicket {
        &self.ticket
    }

    /// The grant id, as bytes.
    pub(crate) fn grant_bytes(&self) -> [u8; 16] {
        self.payload.grant_id
    }

    fn resource_key(&self, scope: Scope, epoch: u32) -> Result<SecretKey> {
        self.scopes
            .get(&scope)
            .and_then(|g| g.keys.keys.iter().find(|k| k.epoch == epoch))
            .map(|k| k.key.derive(CONTEXT_RESOURCE))
            .ok_or_else(|| EhiError::Revoked {
                grant: self.ticket.grant.clone(),
                reason: format!("no key for epoch {epoch} of scope {scope}"),
            })
    }

    /// The read-only view of the granted scopes' manifests.
    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot::new(
            self.scopes
                .iter()
                .map(|(scope, granted)| (*scope, &granted.manifest)),
        )
    }

    fn not_granted(&self, resource_type: &str) -> EhiError {
        EhiError::NotGranted(format!(
            "{resource_type} is in scope {}, which grant {} does not cover",
            scope::default_scope(resource_type),
            self.ticket.grant
        ))
    }

    /// `Type/id` of every current resource the grant covers, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        self.check()?;
        Ok(self.snapshot().list())
    }

    /// The current version of `resource_type/id`, if a granted scope holds it.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Value> {
        self.check()?;
        let label = format!("{resource_type}/{id}");
        let Some((scope, latest)) = self.snapshot().current(resource_type, id)? else {
            if self
                .scopes
                .contains_key(&scope::default_scope(resource_type))
            {
                return Err(EhiError::NotFound(label));
            }
            return Err(self.not_granted(resource_type));
        };
        let key = self.resource_key(scope, latest.epoch)?;
        self.fetch(scope, &key, &latest.blocks, &label).await
    }

    async fn fetch(
        &self,
        scope: Scope,
        key: &SecretKey,
        blocks: &[[u8; 32]],
        label: &str,
    ) -> Result<Value> {
        fetch_resource(&self.net, CONCURRENCY, key, scope, blocks, label).await
    }

    /// FHIR search over `resource_type` in the granted scopes (the same parameters as
    /// [`ehi_vault::Vault::search`]). A type whose scope is not granted is refused.
    pub async fn search(&mut self, resource_type: &str, query: &str) -> Result<SearchHits> {
        self.check()?;
        if !ehi_vault::fhir::valid_type(resource_type) {
            return Err(EhiError::InvalidArgument(format!(
                "{resource_type:?} is not a resource type"
            )));
        }
        let scopes = self.snapshot().holding(resource_type);
        if scopes.is_empty() {
            if self
                .scopes
                .contains_key(&scope::default_scope(resource_type))
            {
                return Ok(SearchHits {
                    total: 0,
                    resources: Vec::new(),
                });
            }
            return Err(self.not_granted(resource_type));
        }
        let mut total = 0;
        let mut hits_by_scope = Vec::new();
        for scope in scopes {
            let Some(granted) = self.scopes.get_mut(&scope) else {
                continue;
            };
            if granted.index.is_none() {
                granted.index =
                    Some(Index::decode(&granted.manifest.index).map_err(|e| {
                        EhiError::Search(format!("the index of scope {scope}: {e}"))
                    })?);
            }
            let Some(index) = granted.index.as_ref() else {
                continue;
            };
            let hits = index
                .search(resource_type, query)
                .map_err(EhiError::Search)?;
            total += hits.total;
            hits_by_scope.push((scope, hits.ids));
        }
        let snapshot = self.snapshot();
        let mut items = Vec::new();
        for (scope, ids) in hits_by_scope {
            for id in ids {
                if let Some(latest) = snapshot.live_in(scope, resource_type, &id) {
                    items.push((scope, id, latest.epoch, latest.blocks.clone()));
                }
            }
        }
        let mut resources = Vec::with_capacity(items.len());
        for (scope, id, epoch, blocks) in items {
            let key = self.resource_key(scope, epoch)?;
            resources.push(
                self.fetch(scope, &key, &blocks, &format!("{resource_type}/{id}"))
                    .await?,
            );
        }
        Ok(SearchHits { total, resources })
    }

    /// Everything the grant covers, current versions, as a FHIR `collection` Bundle
    /// (sorted by type and id). The resources are fetched several at a time.
    pub async fn export_bundle(&self) -> Result<Value> {
        self.check()?;
        let references = self.list()?;
        let entries: Vec<Value> = stream::iter(references.iter().filter_map(|r| r.split_once('/')))
            .map(|(resource_type, id)| self.read(resource_type, id))
            .buffered(CONCURRENCY)
            .map_ok(|resource| json!({ "resource": resource }))
            .try_collect()
            .await?;
        Ok(json!({
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": instant(now_ms()),
            "total": entries.len(),
            "entry": entries,
        }))
    }

    /// Tries to decrypt the manifest a slot points at with every key this grant holds
    /// (any scope, any epoch). For tests and diagnostics: it shows that a grant cannot
    /// open a scope it does not cover. Returns the number of resources on success.
    pub async fn try_open_slot(&self, slot: Id) -> Result<usize> {
        for granted in &self.payload.scopes {
            for scope in Scope::ALL {
                let mut other = granted.clone();
                other.slot_id = *slot.as_bytes();
                other.scope = scope;
                if let Ok(manifest) = self.open_manifest(&other).await {
                    return Ok(manifest.resources.values().map(BTreeMap::len).sum());
                }
            }
        }
        Err(EhiError::NotGranted(format!(
            "no key of grant {} opens the manifest at slot {slot}",
            self.ticket.grant
        )))
    }
}
