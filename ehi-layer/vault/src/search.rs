//! The per-scope search index: a thin wrapper over `ehi_search::SearchIndex`, stored
//! postcard-encoded inside the encrypted scope manifest (`index_format` 1 = postcard of
//! the `ehi-search` index, which carries its own format version; an index that does not
//! decode is rebuilt from the scope's resources by the vault).

use ehi_search::{SearchIndex, SearchQuery};
use serde_json::Value;

/// A scope's search index.
#[derive(Clone, Debug, Default)]
pub struct Index(SearchIndex);

/// The result of a search in one index.
#[derive(Clone, Debug)]
pub struct Hits {
    pub total: usize,
    pub ids: Vec<String>,
}

impl Index {
    pub(crate) fn new() -> Index {
        Index(SearchIndex::new())
    }

    #[doc(hidden)]
    pub fn decode(bytes: &[u8]) -> Result<Index, String> {
        postcard::from_bytes(bytes)
            .map(Index)
            .map_err(|e| format!("the search index does not decode: {e}"))
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(&self.0).map_err(|e| format!("encoding the search index: {e}"))
    }

    pub(crate) fn upsert(&mut self, resource: &Value) -> Result<(), String> {
        self.0.upsert(resource).map_err(|e| e.to_string())
    }

    pub(crate) fn remove(&mut self, resource_type: &str, id: &str) {
        self.0.remove(resource_type, id);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    #[doc(hidden)]
    pub fn search(&self, resource_type: &str, query: &str) -> Result<Hits, String> {
        let query = SearchQuery::parse(query).map_err(|e| e.to_string())?;
        let result = self
            .0
            .search(resource_type, &query)
            .map_err(|e| e.to_string())?;
        Ok(Hits {
            total: result.total,
            ids: result.ids,
        })
    }
}
