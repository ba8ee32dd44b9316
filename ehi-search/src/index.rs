//! [`SearchIndex`]: per resource type, an ordinal → id table and, per parameter, the
//! structure of the `store` module for its kind; query compilation (values parsed per
//! parameter kind, modifiers checked) and evaluation into bitsets (`fixedbitset`) of
//! ordinals: alternatives are unions, parameters intersect. Sorting walks a parameter's
//! structure in key order to rank the matches, then orders by rank and id.
//!
//! Layout in memory and in the serde form (all types `Serialize`/`Deserialize`):
//! `SearchIndex { format_version, types: type → TypeIndex }`,
//! `TypeIndex { ids: ordinal → id ("" after removal), params: code → ParamStore }`.
//! The id → ordinal map, the live-ordinal bitset and the by-end copy of each date list
//! are rebuilt on load rather than stored, which keeps the encoding compact.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use fixedbitset::FixedBitSet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::date::{self, DateRange};
use crate::fhirpath::Expression;
use crate::normalize::normalize;
use crate::query::{SearchQuery, split_unescaped, unescape};
use crate::reference::{is_fhir_id, split_reference};
use crate::store::{self, Entries, ParamStore, Ranker, SEP};
use crate::{ParamDef, ParamKind, SearchError, parameter, supported_parameters};

/// Version of the serde form. Bump it whenever the layout or the parameter table
/// (`src/params.rs`) changes; an index of another version fails to deserialize and must
/// be rebuilt from the resources.
pub const FORMAT_VERSION: u32 = 1;

/// The matches of a search.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchResult {
    /// How many resources match (before `_offset` / `_count`).
    pub total: usize,
    /// The matching ids, sorted per `_sort` (then by id), from `_offset`, at most `_count`.
    pub ids: Vec<String>,
}

/// An in-memory FHIR search index over the current version of each resource.
///
/// Serialize it with any serde format (postcard, bincode…); the encoding starts with
/// [`FORMAT_VERSION`], and deserializing another version is an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "IndexRepr")]
pub struct SearchIndex {
    format_version: u32,
    types: BTreeMap<String, TypeIndex>,
}

#[derive(Deserialize)]
struct IndexRepr {
    format_version: u32,
    types: BTreeMap<String, TypeIndex>,
}

impl TryFrom<IndexRepr> for SearchIndex {
    type Error = String;

    fn try_from(repr: IndexRepr) -> Result<SearchIndex, String> {
        if repr.format_version != FORMAT_VERSION {
            return Err(format!(
                "search index format version {} is not the supported version {FORMAT_VERSION}; rebuild the index",
                repr.format_version
            ));
        }
        Ok(SearchIndex {
            format_version: repr.format_version,
            types: repr.types,
        })
    }
}

impl Default for SearchIndex {
    fn default() -> SearchIndex {
        SearchIndex::new()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "TypeRepr")]
struct TypeIndex {
    /// Ordinal → id; an empty string marks a removed (or superseded) ordinal.
    ids: Vec<String>,
    params: BTreeMap<String, ParamStore>,
    #[serde(skip)]
    by_id: HashMap<String, u32>,
    #[serde(skip)]
    live: FixedBitSet,
}

#[derive(Deserialize)]
struct TypeRepr {
    ids: Vec<String>,
    params: BTreeMap<String, ParamStore>,
}

impl TryFrom<TypeRepr> for TypeIndex {
    type Error = String;

    fn try_from(repr: TypeRepr) -> Result<TypeIndex, String> {
        let n = u32::try_from(repr.ids.len()).map_err(|_| "too many ordinals".to_string())?;
        if let Some((code, _)) = repr.params.iter().find(|(_, s)| !s.valid(n)) {
            return Err(format!("damaged search index: parameter {code}"));
        }
        let mut t = TypeIndex {
            ids: repr.ids,
            params: repr.params,
            by_id: HashMap::new(),
            live: FixedBitSet::new(),
        };
        t.rebuild_lookups();
        if t.by_id.len() != t.ids.iter().filter(|id| !id.is_empty()).count() {
            return Err("damaged search index: an id appears twice".into());
        }
        Ok(t)
    }
}

/// Compiled expressions per resource type, parallel to its parameter table.
static EXPRESSIONS: LazyLock<HashMap<&'static str, Vec<Option<Expression>>>> =
    LazyLock::new(|| {
        crate::resource_types()
            .map(|ty| {
                let exprs = supported_parameters(ty)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| Expression::parse(p.expression, ty).ok())
                    .collect();
                (ty, exprs)
            })
            .collect()
    });

impl SearchIndex {
    /// An empty index.
    pub fn new() -> SearchIndex {
        SearchIndex {
            format_version: FORMAT_VERSION,
            types: BTreeMap::new(),
        }
    }

    /// Index (or re-index) the current version of a resource, keyed by resourceType + id.
    /// On error (unknown type, missing or invalid id, a value that cannot be indexed such
    /// as a malformed date) the index is unchanged.
    pub fn upsert(&mut self, resource: &Value) -> Result<(), SearchError> {
        let invalid = |reason: String| SearchError::InvalidResource { reason };
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no resourceType".into()))?;
        let params = supported_parameters(rt).ok_or_else(|| SearchError::UnknownResourceType {
            resource_type: rt.to_string(),
        })?;
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{rt} has no id")))?;
        if !is_fhir_id(id) {
            return Err(invalid(format!("{rt} id {id:?} is not a valid FHIR id")));
        }
        let exprs = EXPRESSIONS.get(rt).map(Vec::as_slice).unwrap_or_default();
        let mut extracted: Vec<(&ParamDef, Entries)> = Vec::new();
        for (def, expr) in params.iter().zip(exprs) {
            let Some(expr) = expr else { continue };
            if def.code == "_id" {
                continue;
            }
            let nodes = expr.evaluate(resource);
            if nodes.is_empty() {
                continue;
            }
            let entries = store::extract(def.kind, &nodes)
                .map_err(|e| invalid(format!("{rt}/{id} parameter {}: {e}", def.code)))?;
            if !entries.is_empty() {
                extracted.push((def, entries));
            }
        }
        let t = self.types.entry(rt.to_string()).or_default();
        t.insert(id, &extracted)
            .map_err(|e| invalid(format!("{rt}/{id}: {e}")))
    }

    /// Removes a resource from the index (no-op if absent).
    pub fn remove(&mut self, resource_type: &str, id: &str) {
        if let Some(t) = self.types.get_mut(resource_type) {
            if let Some(ord) = t.by_id.get(id).copied() {
                t.tombstone(ord);
                t.maybe_compact();
            }
            if t.by_id.is_empty() {
                self.types.remove(resource_type);
            }
        }
    }

    /// Number of indexed resources.
    pub fn len(&self) -> usize {
        self.types.values().map(|t| t.by_id.len()).sum()
    }

    /// Whether no resource is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `resource_type`/`id` is indexed.
    pub fn contains(&self, resource_type: &str, id: &str) -> bool {
        self.types
            .get(resource_type)
            .is_some_and(|t| t.by_id.contains_key(id))
    }

    /// The format version this index was built with ([`FORMAT_VERSION`]).
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// Runs `query` over the resources of `resource_type`.
    pub fn search(
        &self,
        resource_type: &str,
        query: &SearchQuery,
    ) -> Result<SearchResult, SearchError> {
        self.search_at(resource_type, query, now_ms())
    }

    fn search_at(
        &self,
        resource_type: &str,
        query: &SearchQuery,
        now: i64,
    ) -> Result<SearchResult, SearchError> {
        if supported_parameters(resource_type).is_none() {
            return Err(SearchError::UnknownResourceType {
                resource_type: resource_type.to_string(),
            });
        }
        let clauses = query
            .params
            .iter()
            .map(|p| compile(resource_type, p))
            .collect::<Result<Vec<_>, _>>()?;
        let sort = query
            .sort
            .iter()
            .map(|s| {
                if s.name == "_id" {
                    return Ok((None, s.descending));
                }
                parameter(resource_type, &s.name)
                    .map(|def| (Some(def.code), s.descending))
                    .ok_or_else(|| SearchError::UnknownParameter {
                        resource_type: resource_type.to_string(),
                        name: s.name.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(t) = self.types.get(resource_type) else {
            return Ok(SearchResult::default());
        };
        let mut set = t.live.clone();
        for clause in &clauses {
            let m = t.eval(clause, now);
            set.intersect_with(&m);
        }
        let mut ords: Vec<u32> = set.ones().map(|o| o as u32).collect();
        let total = ords.len();
        // Sort ranks per key; `u32::MAX` (no value) sorts last in either direction.
        let ranks: Vec<(Option<Vec<u32>>, bool)> = sort
            .iter()
            .map(|(code, desc)| {
                let ranks = code.map(|code| {
                    let mut ranks = vec![u32::MAX; t.ids.len()];
                    if let Some(store) = t.params.get(code) {
                        store.rank(&mut Ranker {
                            descending: *desc,
                            members: &set,
                            ranks: &mut ranks,
                            next: 0,
                        });
                    }
                    ranks
                });
                (ranks, *desc)
            })
            .collect();
        let ids = &t.ids;
        let cmp = |a: &u32, b: &u32| {
            for (ranks, desc) in &ranks {
                let o = match ranks {
                    Some(r) => r[*a as usize].cmp(&r[*b as usize]),
                    None if *desc => ids[*b as usize].cmp(&ids[*a as usize]),
                    None => ids[*a as usize].cmp(&ids[*b as usize]),
                };
                if o.is_ne() {
                    return o;
                }
            }
            ids[*a as usize].cmp(&ids[*b as usize])
        };
        let start = query.offset.min(total);
        let end = match query.count {
            Some(c) => start.saturating_add(c).min(total),
            None => total,
        };
        if end < total && end > 0 {
            ords.select_nth_unstable_by(end - 1, cmp);
            ords.truncate(end);
        }
        ords.sort_unstable_by(cmp);
        let ids = ords
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .map(|&o| t.ids[o as usize].clone())
            .collect();
        Ok(SearchResult { total, ids })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl TypeIndex {
    fn rebuild_lookups(&mut self) {
        self.by_id = self
            .ids
            .iter()
            .enumerate()
            .filter(|(_, id)| !id.is_empty())
            .map(|(o, id)| (id.clone(), o as u32))
            .collect();
        self.live = FixedBitSet::with_capacity(self.ids.len());
        for &o in self.by_id.values() {
            self.live.insert(o as usize);
        }
    }

    fn insert(&mut self, id: &str, extracted: &[(&ParamDef, Entries)]) -> Result<(), String> {
        let ord = u32::try_from(self.ids.len())
            .ok()
            .filter(|o| *o < u32::MAX)
            .ok_or("too many resources of one type")?;
        if let Some(old) = self.by_id.get(id).copied() {
            self.tombstone(old);
        }
        self.ids.push(id.to_string());
        self.by_id.insert(id.to_string(), ord);
        self.live.grow(ord as usize + 1);
        self.live.insert(ord as usize);
        for (def, entries) in extracted {
            self.params
                .entry(def.code.to_string())
                .or_insert_with(|| ParamStore::new(def.kind))
                .insert(entries, ord);
        }
        self.maybe_compact();
        Ok(())
    }

    fn tombstone(&mut self, ord: u32) {
        if let Some(id) = self.ids.get_mut(ord as usize) {
            self.by_id.remove(id.as_str());
            id.clear();
            self.live.set(ord as usize, false);
        }
    }

    /// Drops removed ordinals once they outnumber the live ones.
    fn maybe_compact(&mut self) {
        let dead = self.ids.len() - self.by_id.len();
        if dead > 32 && dead > self.by_id.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut map = vec![u32::MAX; self.ids.len()];
        let mut next = 0u32;
        for (o, id) in self.ids.iter().enumerate() {
            if !id.is_empty() {
                map[o] = next;
                next += 1;
            }
        }
        self.ids.retain(|id| !id.is_empty());
        self.params.retain(|_, store| store.remap(&map));
        self.rebuild_lookups();
    }

    fn eval(&self, clause: &Clause, now: i64) -> FixedBitSet {
        let mut out = FixedBitSet::with_capacity(self.ids.len());
        let store = self.params.get(clause.code);
        match &clause.test {
            Test::Id(ids) => {
                for id in ids {
                    if let Some(&o) = self.by_id.get(id) {
                        out.insert(o as usize);
                    }
                }
            }
            Test::Missing(missing) => {
                if let Some(s) = store {
                    s.mark_all(&mut out);
                }
                if *missing {
                    out.toggle_range(..);
                }
            }
            Test::Token { not, values } => {
                if let Some(ParamStore::Token { codes, .. }) = store {
                    for v in values {
                        match v {
                            TokenValue::Code(code) => {
                                codes.prefix(&format!("{code}{SEP}"), &mut out)
                            }
                            TokenValue::SystemCode(system, code) => {
                                codes.exact(&format!("{code}{SEP}{system}"), &mut out)
                            }
                            TokenValue::System(system) => codes.scan(
                                |k| k.rsplit_once(SEP).is_some_and(|(_, s)| s == system),
                                &mut out,
                            ),
                        }
                    }
                }
                if *not {
                    out.toggle_range(..);
                }
            }
            Test::TokenText(values) => {
                if let Some(ParamStore::Token { text, .. }) = store {
                    values.iter().for_each(|v| text.prefix(v, &mut out));
                }
            }
            Test::String { mode, values } => {
                if let Some(ParamStore::String {
                    values: whole,
                    words,
                    exact,
                }) = store
                {
                    for v in values {
                        match mode {
                            StringMode::Prefix => {
                                whole.prefix(v, &mut out);
                                words.prefix(v, &mut out);
                            }
                            StringMode::Exact => exact.exact(v, &mut out),
                            StringMode::Contains => {
                                whole.scan(|k| k.contains(v.as_str()), &mut out)
                            }
                        }
                    }
                }
            }
            Test::Reference(values) => {
                if let Some(ParamStore::Reference { typed, other }) = store {
                    for v in values {
                        match v {
                            RefValue::Typed { ty: Some(ty), id } => {
                                typed.exact(&format!("{id}{SEP}{ty}"), &mut out)
                            }
                            RefValue::Typed { ty: None, id } => {
                                typed.prefix(&format!("{id}{SEP}"), &mut out)
                            }
                            RefValue::Raw(raw) => other.exact(raw, &mut out),
                        }
                    }
                }
            }
            Test::Uri { mode, values } => {
                if let Some(ParamStore::Uri { values: uris }) = store {
                    for v in values {
                        match mode {
                            UriMode::Exact => uris.exact(v, &mut out),
                            UriMode::Below => uris.prefix(v, &mut out),
                            UriMode::Above => uris.scan(|k| v.starts_with(k), &mut out),
                        }
                    }
                }
            }
            Test::Date(values) => {
                if let Some(ParamStore::Date(d)) = store {
                    for (prefix, r) in values {
                        eval_date(d, *prefix, *r, now, &mut out);
                    }
                }
            }
            Test::Quantity(values) => {
                if let Some(ParamStore::Quantity(q)) = store {
                    for v in values {
                        let unit_ok: Vec<bool> = q
                            .units
                            .iter()
                            .map(|u| match &v.unit {
                                UnitQuery::Any => true,
                                UnitQuery::Code(c) => u.code == *c || u.unit == *c,
                                UnitQuery::SystemCode(s, c) => u.system == *s && u.code == *c,
                            })
                            .collect();
                        use Bound::{Excluded, Included, Unbounded};
                        let x = v.value;
                        let ranges: &[(Bound<f64>, Bound<f64>)] = match v.prefix {
                            Prefix::Eq => &[(Included(v.lo), Excluded(v.hi))],
                            Prefix::Ne => {
                                &[(Unbounded, Excluded(v.lo)), (Included(v.hi), Unbounded)]
                            }
                            Prefix::Gt | Prefix::Sa => &[(Excluded(x), Unbounded)],
                            Prefix::Lt | Prefix::Eb => &[(Unbounded, Excluded(x))],
                            Prefix::Ge => &[(Included(x), Unbounded)],
                            Prefix::Le => &[(Unbounded, Included(x))],
                            Prefix::Ap => {
                                let d = x.abs() * 0.1;
                                &[(Included(x - d), Included(x + d))]
                            }
                        };
                        for r in ranges {
                            q.scan(*r, &unit_ok, &mut out);
                        }
                    }
                }
            }
        }
        out.intersect_with(&self.live);
        out
    }
}

/// Applies one date comparison per the spec's range definitions: S = `[sl, sh)` is the
/// search range, each indexed value a range T = `[lo, hi)`.
fn eval_date(d: &store::DateStore, prefix: Prefix, r: DateRange, now: i64, out: &mut FixedBitSet) {
    use Bound::{Excluded, Included, Unbounded};
    let (sl, sh) = (r.lo, r.hi);
    let all = |_: i64, _: i64| true;
    // eq: S contains T.
    let eq = |out: &mut FixedBitSet| d.scan_lo((Included(sl), Excluded(sh)), |_, hi| hi <= sh, out);
    // gt: T extends above S; lt: T extends below S.
    let gt = |out: &mut FixedBitSet| d.scan_hi((Excluded(sh), Unbounded), out);
    let lt = |out: &mut FixedBitSet| d.scan_lo((Unbounded, Excluded(sl)), all, out);
    match prefix {
        Prefix::Eq => eq(out),
        Prefix::Ne => {
            lt(out);
            gt(out);
        }
        Prefix::Gt => gt(out),
        Prefix::Lt => lt(out),
        Prefix::Ge => {
            gt(out);
            eq(out);
        }
        Prefix::Le => {
            lt(out);
            eq(out);
        }
        // sa: T starts at or after the end of S; eb: T ends at or before the start of S.
        Prefix::Sa => d.scan_lo((Included(sh), Unbounded), all, out),
        Prefix::Eb => d.scan_hi((Unbounded, Included(sl)), out),
        Prefix::Ap => {
            // Widen S by 10% of its distance from now, then test overlap.
            let gap = if now < sl {
                sl - now
            } else if now >= sh {
                now - sh
            } else {
                0
            };
            let (wl, wh) = (sl.saturating_sub(gap / 10), sh.saturating_add(gap / 10));
            d.scan_lo((Unbounded, Excluded(wh)), |_, hi| hi > wl, out);
        }
    }
}

/// A comparison prefix of a date, number or quantity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

#[derive(Debug)]
enum TokenValue {
    /// `code`: any system.
    Code(String),
    /// `system|code`; an empty system is `|code` (no system).
    SystemCode(String, String),
    /// `system|`: any code of the system.
    System(String),
}

#[derive(Debug, Clone, Copy)]
enum StringMode {
    Prefix,
    Exact,
    Contains,
}

#[derive(Debug)]
enum RefValue {
    Typed { ty: Option<String>, id: String },
    Raw(String),
}

#[derive(Debug, Clone, Copy)]
enum UriMode {
    Exact,
    Below,
    Above,
}

#[derive(Debug)]
enum UnitQuery {
    Any,
    /// `number||code`: the code or the unit, any system.
    Code(String),
    SystemCode(String, String),
}

#[derive(Debug)]
struct QuantityValue {
    prefix: Prefix,
    value: f64,
    /// The implicit precision range `[lo, hi)` of the search value.
    lo: f64,
    hi: f64,
    unit: UnitQuery,
}

#[derive(Debug)]
enum Test {
    Id(Vec<String>),
    Missing(bool),
    Token {
        not: bool,
        values: Vec<TokenValue>,
    },
    TokenText(Vec<String>),
    String {
        mode: StringMode,
        values: Vec<String>,
    },
    Reference(Vec<RefValue>),
    Uri {
        mode: UriMode,
        values: Vec<String>,
    },
    Date(Vec<(Prefix, DateRange)>),
    Quantity(Vec<QuantityValue>),
}

/// One query parameter, checked and with its values parsed for its kind.
#[derive(Debug)]
struct Clause {
    code: &'static str,
    test: Test,
}

fn compile(resource_type: &str, p: &crate::query::QueryParam) -> Result<Clause, SearchError> {
    let def = parameter(resource_type, &p.name).ok_or_else(|| SearchError::UnknownParameter {
        resource_type: resource_type.to_string(),
        name: p.name.clone(),
    })?;
    let name = def.code;
    let modifier = p.modifier.as_deref();
    let unsupported = || SearchError::UnsupportedModifier {
        name: name.to_string(),
        modifier: modifier.unwrap_or_default().to_string(),
    };
    let invalid = |value: &str, reason: String| SearchError::InvalidValue {
        name: name.to_string(),
        value: value.to_string(),
        reason,
    };
    let values = &p.values;
    if name == "_id" && modifier.is_some() {
        return Err(unsupported());
    }
    if modifier == Some("missing") {
        let [v] = values.as_slice() else {
            return Err(invalid(&values.join(","), "expected true or false".into()));
        };
        let missing = match v.as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(invalid(v, "expected true or false".into())),
        };
        return Ok(Clause {
            code: name,
            test: Test::Missing(missing),
        });
    }
    let test = if name == "_id" {
        Test::Id(values.iter().map(|v| unescape(v)).collect())
    } else {
        match def.kind {
            ParamKind::Token => match modifier {
                None | Some("not") => Test::Token {
                    not: modifier.is_some(),
                    values: values
                        .iter()
                        .map(|v| parse_token(v).map_err(|e| invalid(v, e)))
                        .collect::<Result<_, _>>()?,
                },
                Some("text") => {
                    Test::TokenText(values.iter().map(|v| normalize(&unescape(v))).collect())
                }
                _ => return Err(unsupported()),
            },
            ParamKind::String => {
                let mode = match modifier {
                    None => StringMode::Prefix,
                    Some("exact") => StringMode::Exact,
                    Some("contains") => StringMode::Contains,
                    _ => return Err(unsupported()),
                };
                let values = values
                    .iter()
                    .map(|v| match mode {
                        StringMode::Exact => unescape(v),
                        _ => normalize(&unescape(v)),
                    })
                    .collect();
                Test::String { mode, values }
            }
            ParamKind::Reference => {
                let ty = match modifier {
                    None => None,
                    Some(m) if crate::supported_parameters(m).is_some() => Some(m),
                    _ => return Err(unsupported()),
                };
                let mut refs = Vec::new();
                for v in values {
                    parse_reference(&unescape(v), ty, &mut refs).map_err(|e| invalid(v, e))?;
                }
                Test::Reference(refs)
            }
            ParamKind::Uri => {
                let mode = match modifier {
                    None => UriMode::Exact,
                    Some("below") => UriMode::Below,
                    Some("above") => UriMode::Above,
                    _ => return Err(unsupported()),
                };
                Test::Uri {
                    mode,
                    values: values.iter().map(|v| unescape(v)).collect(),
                }
            }
            ParamKind::Date => {
                if modifier.is_some() {
                    return Err(unsupported());
                }
                Test::Date(
                    values
                        .iter()
                        .map(|v| {
                            let (prefix, rest) = split_prefix(v);
                            // An unencoded `+` of a time zone arrives as a space.
                            date::parse(&unescape(rest).replace(' ', "+"))
                                .map(|r| (prefix, r))
                                .map_err(|e| invalid(v, e))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            ParamKind::Quantity | ParamKind::Number => {
                if modifier.is_some() {
                    return Err(unsupported());
                }
                Test::Quantity(
                    values
                        .iter()
                        .map(|v| parse_quantity(v, def.kind).map_err(|e| invalid(v, e)))
                        .collect::<Result<_, _>>()?,
                )
            }
        }
    };
    Ok(Clause { code: name, test })
}

fn parse_token(v: &str) -> Result<TokenValue, String> {
    let parts = split_unescaped(v, '|');
    match parts.as_slice() {
        [code] => Ok(TokenValue::Code(unescape(code))),
        [system, code] => match (system.is_empty(), code.is_empty()) {
            (_, false) => Ok(TokenValue::SystemCode(unescape(system), unescape(code))),
            (false, true) => Ok(TokenValue::System(unescape(system))),
            (true, true) => Err("expected [system]|[code]".into()),
        },
        _ => Err("expected code, system|code, |code or system|".into()),
    }
}

fn parse_reference(v: &str, ty: Option<&str>, out: &mut Vec<RefValue>) -> Result<(), String> {
    let absolute = v.contains("://") || v.starts_with("urn:");
    if absolute {
        out.push(RefValue::Raw(v.to_string()));
    }
    match split_reference(v) {
        // A `:Type` modifier that contradicts the value's type matches nothing.
        Some((t, id)) if ty.is_none_or(|m| m == t) => {
            out.push(RefValue::Typed {
                ty: Some(t.to_string()),
                id: id.to_string(),
            });
        }
        Some(_) => {}
        None if !absolute => {
            if is_fhir_id(v) {
                out.push(RefValue::Typed {
                    ty: ty.map(str::to_string),
                    id: v.to_string(),
                });
            } else if v.contains('/') {
                return Err("expected Type/id, id, or an absolute url".into());
            } else {
                out.push(RefValue::Raw(v.to_string()));
            }
        }
        None => {}
    }
    Ok(())
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let prefix = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (prefix, &v[2..])
}

fn parse_quantity(v: &str, kind: ParamKind) -> Result<QuantityValue, String> {
    let (prefix, rest) = split_prefix(v);
    let parts = split_unescaped(rest, '|');
    let (number, unit) = match parts.as_slice() {
        [n] => (*n, UnitQuery::Any),
        [n, system, code] if kind == ParamKind::Quantity => {
            let (system, code) = (unescape(system), unescape(code));
            let unit = match (system.is_empty(), code.is_empty()) {
                (true, true) => UnitQuery::Any,
                (true, false) => UnitQuery::Code(code),
                (false, false) => UnitQuery::SystemCode(system, code),
                (false, true) => return Err("a system needs a code".into()),
            };
            (*n, unit)
        }
        _ if kind == ParamKind::Number => return Err("expected [prefix]number".into()),
        _ => return Err("expected [prefix]number, number|system|code or number||code".into()),
    };
    let (value, lo, hi) = parse_number(number)?;
    Ok(QuantityValue {
        prefix,
        value,
        lo,
        hi,
        unit,
    })
}

/// Parses a decimal search value and its implicit precision range: half a unit of the
/// last significant digit either side (`100` → [99.5, 100.5), `5.40` → [5.395, 5.405)).
/// With an exponent the range is a tenth of that, as in the spec's own example
/// (`1e2` → [95, 105), not [50, 150)).
fn parse_number(s: &str) -> Result<(f64, f64, f64), String> {
    let bad = || format!("{s:?} is not a decimal number");
    let (negative, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 30 {
        return Err(bad());
    }
    let m: i128 = digits.parse().map_err(|_| bad())?;
    let m = if negative { -m } else { m };
    let has_exponent = body.contains(['e', 'E']);
    let scale = exponent - frac.len() as i32 - 1 - i32::from(has_exponent);
    let value: f64 = s.parse().map_err(|_| bad())?;
    let m = m * if has_exponent { 100 } else { 10 };
    let lo: f64 = format!("{}e{scale}", m - 5).parse().map_err(|_| bad())?;
    let hi: f64 = format!("{}e{scale}", m + 5).parse().map_err(|_| bad())?;
    if !value.is_finite() || !lo.is_finite() || !hi.is_finite() {
        return Err(bad());
    }
    Ok((value, lo, hi))
}

#[cfg(test)]
mod tests;
