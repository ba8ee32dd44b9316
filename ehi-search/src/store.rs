//! Per-parameter index structures and the extraction of index entries from the values
//! an expression reaches. Ordinals (`u32`) name resources within one resource type; they
//! only grow, so appending keeps every posting list sorted.
//!
//! * token: `code \x1f system` → ordinals (a code without system has an empty system),
//!   so `code` alone is a key-prefix range and `system|code` one key; plus normalized
//!   text terms (CodeableConcept.text, Coding.display, Identifier.type.text) for `:text`.
//! * string: normalized whole values → ordinals, normalized words → ordinals (only words
//!   that differ from the whole value), raw values → ordinals (for `:exact`).
//! * reference: `id \x1f Type` → ordinals, and raw reference strings that are absolute
//!   urls, urns or canonicals → ordinals.
//! * uri: raw values → ordinals.
//! * date: `(lo, hi, ordinal)` sorted by `lo`, and a copy sorted by `hi` rebuilt on load;
//!   recent inserts sit in a small unsorted tail that is merged when it grows.
//! * quantity/number: `(value, unit, ordinal)` sorted by value with an interned unit
//!   table, and a tail like dates.

use std::collections::BTreeMap;
use std::ops::Bound;

use fixedbitset::FixedBitSet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ParamKind;
use crate::date::{self, DateRange};
use crate::fhirpath::Node;
use crate::normalize::{normalize, words};
use crate::reference::{is_absolute, split_reference};

/// Separates the parts of a composite key (`code \x1f system`, `id \x1f Type`).
pub(crate) const SEP: char = '\u{1f}';

/// Sorted map from key to the sorted ordinals having it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Postings(BTreeMap<String, Vec<u32>>);

impl Postings {
    fn add(&mut self, key: &str, ord: u32) {
        let list = match self.0.get_mut(key) {
            Some(list) => list,
            None => self.0.entry(key.to_string()).or_default(),
        };
        if list.last() != Some(&ord) {
            list.push(ord);
        }
    }

    /// Marks the ordinals of `key`.
    pub(crate) fn exact(&self, key: &str, out: &mut FixedBitSet) {
        if let Some(list) = self.0.get(key) {
            mark(out, list);
        }
    }

    /// Marks the ordinals of every key starting with `prefix`.
    pub(crate) fn prefix(&self, prefix: &str, out: &mut FixedBitSet) {
        for (key, list) in self
            .0
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        {
            if !key.starts_with(prefix) {
                break;
            }
            mark(out, list);
        }
    }

    /// Marks the ordinals of every key satisfying `pred` (a full scan of the keys).
    pub(crate) fn scan(&self, pred: impl Fn(&str) -> bool, out: &mut FixedBitSet) {
        for (key, list) in &self.0 {
            if pred(key) {
                mark(out, list);
            }
        }
    }

    fn mark_all(&self, out: &mut FixedBitSet) {
        self.0.values().for_each(|list| mark(out, list));
    }

    fn rank(&self, ranker: &mut Ranker<'_>) {
        if ranker.descending {
            self.0
                .values()
                .rev()
                .for_each(|l| ranker.group(l.iter().copied()));
        } else {
            self.0
                .values()
                .for_each(|l| ranker.group(l.iter().copied()));
        }
    }

    fn remap(&mut self, map: &[u32]) {
        self.0.retain(|_, list| {
            list.retain_mut(|o| {
                *o = map[*o as usize];
                *o != u32::MAX
            });
            !list.is_empty()
        });
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether every list is strictly increasing and below `n`.
    fn valid(&self, n: u32) -> bool {
        self.0
            .values()
            .all(|l| l.windows(2).all(|w| w[0] < w[1]) && l.last().is_none_or(|&o| o < n))
    }
}

fn mark(out: &mut FixedBitSet, list: &[u32]) {
    for &o in list {
        out.insert(o as usize);
    }
}

/// Assigns sort ranks to the ordinals of a result set while a store is walked in key
/// order: the first group seen gets rank 0, and an ordinal keeps its first rank.
pub(crate) struct Ranker<'a> {
    pub(crate) descending: bool,
    pub(crate) members: &'a FixedBitSet,
    pub(crate) ranks: &'a mut [u32],
    pub(crate) next: u32,
}

impl Ranker<'_> {
    fn group(&mut self, ords: impl Iterator<Item = u32>) {
        let mut any = false;
        for o in ords {
            let slot = &mut self.ranks[o as usize];
            if *slot == u32::MAX && self.members.contains(o as usize) {
                *slot = self.next;
                any = true;
            }
        }
        if any {
            self.next += 1;
        }
    }
}

/// A date entry: `(key, other, ordinal)`; in `by_lo` the key is `lo`, in `by_hi` it is `hi`.
type DateEntry = (i64, i64, u32);

/// Date ranges of one parameter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "DateRepr")]
pub(crate) struct DateStore {
    by_lo: Vec<DateEntry>,
    tail: Vec<DateEntry>,
    #[serde(skip)]
    by_hi: Vec<DateEntry>,
}

#[derive(Deserialize)]
struct DateRepr {
    by_lo: Vec<DateEntry>,
    tail: Vec<DateEntry>,
}

impl From<DateRepr> for DateStore {
    fn from(repr: DateRepr) -> DateStore {
        let mut store = DateStore {
            by_lo: repr.by_lo,
            tail: repr.tail,
            by_hi: Vec::new(),
        };
        store.by_lo.append(&mut store.tail);
        store.by_lo.sort_unstable();
        store.by_hi = store.by_lo.iter().map(|&(l, h, o)| (h, l, o)).collect();
        store.by_hi.sort_unstable();
        store
    }
}

/// Bounds on a `(key, …)` entry's key.
pub(crate) type KeyRange = (Bound<i64>, Bound<i64>);

fn key_slice<T: Copy>(v: &[(i64, T, u32)], (lower, upper): KeyRange) -> &[(i64, T, u32)] {
    let start = match lower {
        Bound::Included(a) => v.partition_point(|e| e.0 < a),
        Bound::Excluded(a) => v.partition_point(|e| e.0 <= a),
        Bound::Unbounded => 0,
    };
    let end = match upper {
        Bound::Included(b) => v.partition_point(|e| e.0 <= b),
        Bound::Excluded(b) => v.partition_point(|e| e.0 < b),
        Bound::Unbounded => v.len(),
    };
    v.get(start..end.max(start)).unwrap_or(&[])
}

impl DateStore {
    fn insert(&mut self, r: DateRange, ord: u32) {
        self.tail.push((r.lo, r.hi, ord));
        if self.tail.len() > 64.max(self.by_lo.len() / 8) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.by_hi
            .extend(self.tail.iter().map(|&(l, h, o)| (h, l, o)));
        self.by_lo.append(&mut self.tail);
        // Both are a long sorted run plus a short one: the stable sort merges in O(n).
        self.by_lo.sort();
        self.by_hi.sort();
    }

    /// Marks entries whose `lo` lies in `range` and whose `(lo, hi)` pass `filter`.
    pub(crate) fn scan_lo(
        &self,
        range: KeyRange,
        filter: impl Fn(i64, i64) -> bool,
        out: &mut FixedBitSet,
    ) {
        for &(lo, hi, o) in key_slice(&self.by_lo, range) {
            if filter(lo, hi) {
                out.insert(o as usize);
            }
        }
        for &(lo, hi, o) in &self.tail {
            if std::ops::RangeBounds::contains(&range, &lo) && filter(lo, hi) {
                out.insert(o as usize);
            }
        }
    }

    /// Marks entries whose `hi` lies in `range`.
    pub(crate) fn scan_hi(&self, range: KeyRange, out: &mut FixedBitSet) {
        for &(_, _, o) in key_slice(&self.by_hi, range) {
            out.insert(o as usize);
        }
        for &(_, hi, o) in &self.tail {
            if std::ops::RangeBounds::contains(&range, &hi) {
                out.insert(o as usize);
            }
        }
    }

    fn sorted_by_lo(&self) -> std::borrow::Cow<'_, [DateEntry]> {
        if self.tail.is_empty() {
            std::borrow::Cow::Borrowed(&self.by_lo)
        } else {
            let mut all = self.by_lo.clone();
            all.extend_from_slice(&self.tail);
            all.sort();
            std::borrow::Cow::Owned(all)
        }
    }

    fn rank(&self, ranker: &mut Ranker<'_>) {
        // Sort key: the start of each value (its end when it has no start).
        let mut keyed: Vec<(i64, u32)> = self
            .sorted_by_lo()
            .iter()
            .map(|&(lo, hi, o)| (if lo == i64::MIN { hi } else { lo }, o))
            .collect();
        keyed.sort();
        if ranker.descending {
            keyed.reverse();
        }
        for chunk in keyed.chunk_by(|a, b| a.0 == b.0) {
            ranker.group(chunk.iter().map(|e| e.1));
        }
    }

    fn mark_all(&self, out: &mut FixedBitSet) {
        for &(_, _, o) in self.by_lo.iter().chain(&self.tail) {
            out.insert(o as usize);
        }
    }

    fn remap(&mut self, map: &[u32]) {
        for v in [&mut self.by_lo, &mut self.tail, &mut self.by_hi] {
            v.retain_mut(|e| {
                e.2 = map[e.2 as usize];
                e.2 != u32::MAX
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.by_lo.is_empty() && self.tail.is_empty()
    }
}

/// The unit of a quantity value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Unit {
    pub(crate) system: String,
    pub(crate) code: String,
    pub(crate) unit: String,
}

/// A quantity entry: `(value, unit index, ordinal)`.
type QuantityEntry = (f64, u32, u32);

/// Quantity (or number) values of one parameter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct QuantityStore {
    pub(crate) units: Vec<Unit>,
    by_value: Vec<QuantityEntry>,
    tail: Vec<QuantityEntry>,
}

impl QuantityStore {
    fn insert(&mut self, value: f64, unit: Unit, ord: u32) {
        let u = match self.units.iter().position(|x| *x == unit) {
            Some(i) => i,
            None => {
                self.units.push(unit);
                self.units.len() - 1
            }
        };
        self.tail.push((value, u as u32, ord));
        if self.tail.len() > 64.max(self.by_value.len() / 8) {
            self.by_value.append(&mut self.tail);
            self.by_value.sort_by(cmp_quantity);
        }
    }

    /// Marks entries whose value lies in `range` and whose unit passes `unit_ok`.
    pub(crate) fn scan(
        &self,
        (lower, upper): (Bound<f64>, Bound<f64>),
        unit_ok: &[bool],
        out: &mut FixedBitSet,
    ) {
        let v = &self.by_value;
        let start = match lower {
            Bound::Included(a) => v.partition_point(|e| e.0 < a),
            Bound::Excluded(a) => v.partition_point(|e| e.0 <= a),
            Bound::Unbounded => 0,
        };
        let end = match upper {
            Bound::Included(b) => v.partition_point(|e| e.0 <= b),
            Bound::Excluded(b) => v.partition_point(|e| e.0 < b),
            Bound::Unbounded => v.len(),
        };
        let range = (lower, upper);
        let main = v.get(start..end.max(start)).unwrap_or(&[]);
        for &(_, u, o) in main.iter().chain(
            self.tail
                .iter()
                .filter(|e| std::ops::RangeBounds::contains(&range, &e.0)),
        ) {
            if unit_ok.get(u as usize).copied().unwrap_or(false) {
                out.insert(o as usize);
            }
        }
    }

    fn rank(&self, ranker: &mut Ranker<'_>) {
        let mut all: Vec<QuantityEntry> = self.by_value.iter().chain(&self.tail).copied().collect();
        all.sort_by(cmp_quantity);
        if ranker.descending {
            all.reverse();
        }
        for chunk in all.chunk_by(|a, b| a.0 == b.0) {
            ranker.group(chunk.iter().map(|e| e.2));
        }
    }

    fn mark_all(&self, out: &mut FixedBitSet) {
        for &(_, _, o) in self.by_value.iter().chain(&self.tail) {
            out.insert(o as usize);
        }
    }

    fn remap(&mut self, map: &[u32]) {
        for v in [&mut self.by_value, &mut self.tail] {
            v.retain_mut(|e| {
                e.2 = map[e.2 as usize];
                e.2 != u32::MAX
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.by_value.is_empty() && self.tail.is_empty()
    }
}

fn cmp_quantity(a: &QuantityEntry, b: &QuantityEntry) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.2.cmp(&b.2))
}

/// The index of one parameter of one resource type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ParamStore {
    Token {
        codes: Postings,
        text: Postings,
    },
    String {
        values: Postings,
        words: Postings,
        exact: Postings,
    },
    Reference {
        typed: Postings,
        other: Postings,
    },
    Uri {
        values: Postings,
    },
    Date(DateStore),
    Quantity(QuantityStore),
}

/// Index entries extracted from one resource for one parameter.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    keys: Vec<String>,
    terms: Vec<String>,
    raw: Vec<String>,
    dates: Vec<DateRange>,
    quantities: Vec<(f64, Unit)>,
}

impl Entries {
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.terms.is_empty()
            && self.raw.is_empty()
            && self.dates.is_empty()
            && self.quantities.is_empty()
    }

    fn add_text(&mut self, s: &str) {
        let n = normalize(s);
        for w in words(&n) {
            if w != n {
                self.terms.push(w.to_string());
            }
        }
        self.terms.push(n);
    }
}

impl ParamStore {
    pub(crate) fn new(kind: ParamKind) -> ParamStore {
        match kind {
            ParamKind::Token => ParamStore::Token {
                codes: Postings::default(),
                text: Postings::default(),
            },
            ParamKind::String => ParamStore::String {
                values: Postings::default(),
                words: Postings::default(),
                exact: Postings::default(),
            },
            ParamKind::Reference => ParamStore::Reference {
                typed: Postings::default(),
                other: Postings::default(),
            },
            ParamKind::Uri => ParamStore::Uri {
                values: Postings::default(),
            },
            ParamKind::Date => ParamStore::Date(DateStore::default()),
            ParamKind::Quantity | ParamKind::Number => {
                ParamStore::Quantity(QuantityStore::default())
            }
        }
    }

    pub(crate) fn insert(&mut self, entries: &Entries, ord: u32) {
        match self {
            ParamStore::Token { codes, text } => {
                entries.keys.iter().for_each(|k| codes.add(k, ord));
                entries.terms.iter().for_each(|k| text.add(k, ord));
            }
            ParamStore::String {
                values,
                words,
                exact,
            } => {
                entries.raw.iter().for_each(|k| exact.add(k, ord));
                entries.keys.iter().for_each(|k| values.add(k, ord));
                entries.terms.iter().for_each(|k| words.add(k, ord));
            }
            ParamStore::Reference { typed, other } => {
                entries.keys.iter().for_each(|k| typed.add(k, ord));
                entries.raw.iter().for_each(|k| other.add(k, ord));
            }
            ParamStore::Uri { values } => entries.raw.iter().for_each(|k| values.add(k, ord)),
            ParamStore::Date(d) => entries.dates.iter().for_each(|r| d.insert(*r, ord)),
            ParamStore::Quantity(q) => entries
                .quantities
                .iter()
                .for_each(|(v, u)| q.insert(*v, u.clone(), ord)),
        }
    }

    /// Marks every ordinal that has a value.
    pub(crate) fn mark_all(&self, out: &mut FixedBitSet) {
        match self {
            ParamStore::Token { codes, text } => {
                codes.mark_all(out);
                text.mark_all(out);
            }
            ParamStore::String { exact, .. } => exact.mark_all(out),
            ParamStore::Reference { typed, other } => {
                typed.mark_all(out);
                other.mark_all(out);
            }
            ParamStore::Uri { values } => values.mark_all(out),
            ParamStore::Date(d) => d.mark_all(out),
            ParamStore::Quantity(q) => q.mark_all(out),
        }
    }

    /// Walks the values in sort order, ranking the ordinals of a result set.
    pub(crate) fn rank(&self, ranker: &mut Ranker<'_>) {
        match self {
            ParamStore::Token { codes, .. } => codes.rank(ranker),
            ParamStore::String { values, .. } => values.rank(ranker),
            ParamStore::Reference { typed, other } => {
                if ranker.descending {
                    other.rank(ranker);
                    typed.rank(ranker);
                } else {
                    typed.rank(ranker);
                    other.rank(ranker);
                }
            }
            ParamStore::Uri { values } => values.rank(ranker),
            ParamStore::Date(d) => d.rank(ranker),
            ParamStore::Quantity(q) => q.rank(ranker),
        }
    }

    /// Whether every ordinal is below `n` (and lists are in the order the code relies
    /// on): a decoded index is checked so that a damaged one fails to load instead of
    /// panicking later.
    pub(crate) fn valid(&self, n: u32) -> bool {
        match self {
            ParamStore::Token { codes, text } => codes.valid(n) && text.valid(n),
            ParamStore::String {
                values,
                words,
                exact,
            } => values.valid(n) && words.valid(n) && exact.valid(n),
            ParamStore::Reference { typed, other } => typed.valid(n) && other.valid(n),
            ParamStore::Uri { values } => values.valid(n),
            // The by-lo list is re-sorted on load; only the ordinals matter.
            ParamStore::Date(d) => d.by_lo.iter().chain(&d.tail).all(|e| e.2 < n),
            ParamStore::Quantity(q) => {
                let units = q.units.len();
                q.by_value
                    .windows(2)
                    .all(|w| cmp_quantity(&w[0], &w[1]).is_le())
                    && q.by_value
                        .iter()
                        .chain(&q.tail)
                        .all(|e| e.2 < n && (e.1 as usize) < units && e.0.is_finite())
            }
        }
    }

    /// Renumbers ordinals (`map[old]`, `u32::MAX` = dropped); false if nothing is left.
    pub(crate) fn remap(&mut self, map: &[u32]) -> bool {
        match self {
            ParamStore::Token { codes, text } => {
                codes.remap(map);
                text.remap(map);
                codes.len() + text.len() > 0
            }
            ParamStore::String {
                values,
                words,
                exact,
            } => {
                values.remap(map);
                words.remap(map);
                exact.remap(map);
                exact.len() > 0
            }
            ParamStore::Reference { typed, other } => {
                typed.remap(map);
                other.remap(map);
                typed.len() + other.len() > 0
            }
            ParamStore::Uri { values } => {
                values.remap(map);
                values.len() > 0
            }
            ParamStore::Date(d) => {
                d.remap(map);
                !d.is_empty()
            }
            ParamStore::Quantity(q) => {
                q.remap(map);
                !q.is_empty()
            }
        }
    }
}

/// Extracts the index entries of a parameter of kind `kind` from the values its
/// expression reached. Errors name the offending value.
pub(crate) fn extract(kind: ParamKind, nodes: &[Node<'_>]) -> Result<Entries, String> {
    let mut e = Entries::default();
    for node in nodes {
        let v = node.value;
        match kind {
            ParamKind::Token => extract_token(v, &mut e),
            ParamKind::String => {
                let mut raw = Vec::new();
                collect_strings(v, &mut raw);
                for s in raw {
                    let n = normalize(s);
                    for w in words(&n) {
                        if w != n {
                            e.terms.push(w.to_string());
                        }
                    }
                    e.keys.push(n);
                    e.raw.push(s.to_string());
                }
            }
            ParamKind::Reference => {
                let r = match v {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) => o.get("reference").and_then(Value::as_str),
                    _ => None,
                };
                if let Some(r) = r {
                    match split_reference(r) {
                        Some((ty, id)) => {
                            e.keys.push(format!("{id}{SEP}{ty}"));
                            if is_absolute(r) {
                                e.raw.push(r.to_string());
                            }
                        }
                        None => e.raw.push(r.to_string()),
                    }
                }
            }
            ParamKind::Uri => {
                if let Some(s) = v.as_str() {
                    e.raw.push(s.to_string());
                }
            }
            ParamKind::Date => {
                if let Some(r) = extract_date(v)? {
                    e.dates.push(r);
                }
            }
            ParamKind::Quantity => {
                if let Some(obj) = v.as_object()
                    && let Some(value) = obj.get("value")
                {
                    let value = value
                        .as_f64()
                        .ok_or_else(|| format!("Quantity.value {value} is not a number"))?;
                    let text = |k: &str| {
                        obj.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    e.quantities.push((
                        value,
                        Unit {
                            system: text("system"),
                            code: text("code"),
                            unit: text("unit"),
                        },
                    ));
                }
            }
            ParamKind::Number => {
                if let Some(value) = v.as_f64() {
                    e.quantities.push((
                        value,
                        Unit {
                            system: String::new(),
                            code: String::new(),
                            unit: String::new(),
                        },
                    ));
                }
            }
        }
    }
    Ok(e)
}

fn extract_token(v: &Value, e: &mut Entries) {
    let mut add = |system: Option<&Value>, code: Option<&Value>| {
        let code = match code {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return,
        };
        let system = system.and_then(Value::as_str).unwrap_or_default();
        e.keys.push(format!("{code}{SEP}{system}"));
    };
    match v {
        Value::String(_) | Value::Bool(_) | Value::Number(_) => add(None, Some(v)),
        Value::Object(o) => {
            if o.contains_key("coding") || (o.contains_key("text") && !o.contains_key("value")) {
                // CodeableConcept
                for coding in o
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    add(coding.get("system"), coding.get("code"));
                }
                let displays: Vec<&str> = o
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("display").and_then(Value::as_str))
                    .chain(o.get("text").and_then(Value::as_str))
                    .collect();
                displays.into_iter().for_each(|t| e.add_text(t));
            } else if o.contains_key("code") {
                // Coding
                add(o.get("system"), o.get("code"));
                if let Some(d) = o.get("display").and_then(Value::as_str) {
                    e.add_text(d);
                }
            } else if o.contains_key("value") {
                // Identifier or ContactPoint
                add(o.get("system"), o.get("value"));
                if let Some(t) = o
                    .get("type")
                    .and_then(|t| t.get("text"))
                    .and_then(Value::as_str)
                {
                    e.add_text(t);
                }
            }
        }
        _ => {}
    }
}

/// The string values a string parameter searches in `v` (HumanName and Address parts).
fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    const PARTS: &[&str] = &[
        "family",
        "given",
        "prefix",
        "suffix",
        "text",
        "line",
        "city",
        "district",
        "state",
        "postalCode",
        "country",
    ];
    match v {
        Value::String(s) => out.push(s),
        Value::Object(o) => {
            for part in PARTS {
                match o.get(*part) {
                    Some(Value::String(s)) => out.push(s),
                    Some(Value::Array(items)) => {
                        out.extend(items.iter().filter_map(Value::as_str));
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The range of a date, dateTime, instant, Period or Timing value.
fn extract_date(v: &Value) -> Result<Option<DateRange>, String> {
    let one = |s: &str| date::parse(s).map_err(|e| format!("date {s:?}: {e}"));
    match v {
        Value::String(s) => one(s).map(Some),
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => {
            let start = o
                .get("start")
                .and_then(Value::as_str)
                .map(one)
                .transpose()?;
            let end = o.get("end").and_then(Value::as_str).map(one).transpose()?;
            let (lo, hi) = match (start, end) {
                (Some(s), Some(e)) => (s.lo.min(e.lo), e.hi.max(s.hi)),
                (Some(s), None) => (s.lo, i64::MAX),
                (None, Some(e)) => (i64::MIN, e.hi),
                (None, None) => return Ok(None),
            };
            Ok(Some(DateRange { lo, hi }))
        }
        Value::Object(o) if o.contains_key("event") || o.contains_key("repeat") => {
            let mut ranges = Vec::new();
            for ev in o
                .get("event")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(s) = ev.as_str() {
                    ranges.push(one(s)?);
                }
            }
            if let Some(bounds) = o.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                ranges.extend(extract_date(bounds)?);
            }
            Ok(ranges.into_iter().reduce(|a, b| DateRange {
                lo: a.lo.min(b.lo),
                hi: a.hi.max(b.hi),
            }))
        }
        _ => Ok(None),
    }
}
