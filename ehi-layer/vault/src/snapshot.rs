//! A read-only view of the scope manifests one reader holds: the patient's vault handle
//! (every scope) or an app's session (the scopes its grant covers). It answers which
//! resources are current, where each version of a resource lives, and which stored
//! version a search hit stands for; fetching and decrypting the chosen blobs is the
//! reader's part. Both readers go through it, so a resource is current, gone or absent
//! by the same rules on either side of a grant.

use crate::error::{EhiError, Result};
use crate::format::{ScopeManifest, VersionEntry};
use crate::scope::Scope;

/// The manifests of one reader, borrowed for one read.
#[derive(Debug)]
pub struct Snapshot<'a> {
    scopes: Vec<(Scope, &'a ScopeManifest)>,
}

impl<'a> Snapshot<'a> {
    /// A view of `scopes`' manifests.
    #[doc(hidden)]
    pub fn new(scopes: impl IntoIterator<Item = (Scope, &'a ScopeManifest)>) -> Self {
        Snapshot {
            scopes: scopes.into_iter().collect(),
        }
    }

    /// Every resource held (current, deleted, with all its versions oldest first) with
    /// the scope holding it, sorted by type and id.
    pub fn resources(&self) -> Vec<(Scope, &'a str, &'a str, &'a [VersionEntry])> {
        let mut out = Vec::new();
        for (scope, manifest) in &self.scopes {
            for (resource_type, ids) in &manifest.resources {
                for (id, versions) in ids {
                    out.push((
                        *scope,
                        resource_type.as_str(),
                        id.as_str(),
                        versions.as_slice(),
                    ));
                }
            }
        }
        out.sort_by(|a, b| (a.1, a.2).cmp(&(b.1, b.2)));
        out
    }

    /// `Type/id` of every current (not deleted) resource, sorted.
    pub fn list(&self) -> Vec<String> {
        self.resources()
            .into_iter()
            .filter(|(_, _, _, versions)| versions.last().is_some_and(|v| !v.deleted))
            .map(|(_, resource_type, id, _)| format!("{resource_type}/{id}"))
            .collect()
    }

    /// Every version of `resource_type/id`, oldest first, with the scope holding them.
    pub(crate) fn versions(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Option<(Scope, &'a Vec<VersionEntry>)> {
        self.scopes.iter().find_map(|(scope, manifest)| {
            manifest
                .resources
                .get(resource_type)
                .and_then(|ids| ids.get(id))
                .map(|versions| (*scope, versions))
        })
    }

    /// The current version of `resource_type/id`: `Ok(None)` when no scope of the view
    /// holds it, [`EhiError::Gone`] when its last version is a deletion.
    #[doc(hidden)]
    pub fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(Scope, &'a VersionEntry)>> {
        let Some((scope, versions)) = self.versions(resource_type, id) else {
            return Ok(None);
        };
        let label = || format!("{resource_type}/{id}");
        let latest = versions.last().ok_or_else(|| EhiError::NotFound(label()))?;
        if latest.deleted {
            return Err(EhiError::Gone(label()));
        }
        Ok(Some((scope, latest)))
    }

    /// The current version of `resource_type/id` in `scope`, unless it is deleted or
    /// absent (how a search hit becomes a version to fetch).
    #[doc(hidden)]
    pub fn live_in(&self, scope: Scope, resource_type: &str, id: &str) -> Option<&'a VersionEntry> {
        let (_, manifest) = self.scopes.iter().find(|(s, _)| *s == scope)?;
        manifest
            .resources
            .get(resource_type)?
            .get(id)?
            .last()
            .filter(|latest| !latest.deleted)
    }

    /// The scopes of the view that hold resources of `resource_type`, in scope order.
    pub fn holding(&self, resource_type: &str) -> Vec<Scope> {
        let mut scopes: Vec<Scope> = self
            .scopes
            .iter()
            .filter(|(_, manifest)| manifest.resources.contains_key(resource_type))
            .map(|(scope, _)| *scope)
            .collect();
        scopes.sort();
        scopes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn version(version: u64, deleted: bool) -> VersionEntry {
        VersionEntry {
            version,
            epoch: 0,
            blocks: if deleted { Vec::new() } else { vec![[1; 32]] },
            last_updated: String::new(),
            imported_ms: 0,
            deleted,
            content_hash: [0; 32],
            patients: Vec::new(),
        }
    }

    fn manifest(scope: Scope, resources: &[(&str, &str, Vec<VersionEntry>)]) -> ScopeManifest {
        let mut m = ScopeManifest {
            format: crate::format::MANIFEST_FORMAT,
            scope,
            epoch: 0,
            generation: 0,
            resources: BTreeMap::new(),
            index_format: 0,
            index: Vec::new(),
        };
        for (t, id, versions) in resources {
            m.resources
                .entry(t.to_string())
                .or_default()
                .insert(id.to_string(), versions.clone());
        }
        m
    }

    #[test]
    fn current_gone_absent_and_listing_follow_the_last_version() {
        let clinical = manifest(
            Scope::Clinical,
            &[
                (
                    "Condition",
                    "c1",
                    vec![version(1, false), version(2, false)],
                ),
                ("Condition", "c2", vec![version(1, false), version(2, true)]),
            ],
        );
        let allergies = manifest(
            Scope::Allergies,
            &[("AllergyIntolerance", "a1", vec![version(1, false)])],
        );
        let view = Snapshot::new([(Scope::Clinical, &clinical), (Scope::Allergies, &allergies)]);
        assert_eq!(view.list(), vec!["AllergyIntolerance/a1", "Condition/c1"]);
        // Every resource, deleted ones too, sorted by type and id across scopes.
        let held: Vec<(Scope, &str, &str, usize)> = view
            .resources()
            .into_iter()
            .map(|(scope, t, id, versions)| (scope, t, id, versions.len()))
            .collect();
        assert_eq!(
            held,
            vec![
                (Scope::Allergies, "AllergyIntolerance", "a1", 1),
                (Scope::Clinical, "Condition", "c1", 2),
                (Scope::Clinical, "Condition", "c2", 2),
            ]
        );
        let (scope, latest) = view
            .current("Condition", "c1")
            .expect("a live resource")
            .expect("held");
        assert_eq!((scope, latest.version), (Scope::Clinical, 2));
        assert!(matches!(
            view.current("Condition", "c2"),
            Err(EhiError::Gone(_))
        ));
        assert!(
            view.current("Condition", "nope")
                .expect("absent is not an error")
                .is_none()
        );
        assert!(view.live_in(Scope::Clinical, "Condition", "c2").is_none());
        assert!(view.live_in(Scope::Allergies, "Condition", "c1").is_none());
        assert_eq!(view.holding("Condition"), vec![Scope::Clinical]);
        assert!(view.holding("Observation").is_empty());
    }
}
