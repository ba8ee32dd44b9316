//! Parsing of a FHIR search query string into [`SearchQuery`]: form-urlencoded pairs
//! (`form_urlencoded`), `name[:modifier]`, comma-separated alternatives (with `\,`
//! escapes kept for the value parsers), and the result parameters `_count`, `_offset`,
//! `_sort`. Values are checked against the parameter kinds later, at search time, when
//! the resource type is known.

use crate::SearchError;

/// A parsed search query. Build it with [`SearchQuery::parse`] or
/// [`SearchQuery::from_pairs`]; run it with [`crate::SearchIndex::search`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub(crate) params: Vec<QueryParam>,
    pub(crate) sort: Vec<SortSpec>,
    pub(crate) count: Option<usize>,
    pub(crate) offset: usize,
}

/// One `name[:modifier]=v1,v2` pair: the values are alternatives (OR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryParam {
    pub(crate) name: String,
    pub(crate) modifier: Option<String>,
    /// Alternatives, split at unescaped commas, escapes still in place.
    pub(crate) values: Vec<String>,
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SortSpec {
    pub(crate) name: String,
    pub(crate) descending: bool,
}

/// Result parameters that only shape the returned resources; they do not change which
/// ids match, so they are accepted and ignored.
const IGNORED: &[&str] = &["_format", "_pretty", "_summary", "_elements", "_total"];

/// Search features that are not implemented.
const UNSUPPORTED: &[&str] = &[
    "_include",
    "_revinclude",
    "_has",
    "_filter",
    "_type",
    "_list",
    "_query",
    "_contained",
    "_containedType",
    "_text",
    "_content",
];

impl SearchQuery {
    /// Parses a URL query string such as
    /// `code=http://loinc.org|8867-4&date=ge2020-01&_count=10&_sort=-date`
    /// (percent-encoding and `+` for space are decoded; a leading `?` is allowed).
    pub fn parse(query_string: &str) -> Result<SearchQuery, SearchError> {
        let q = query_string.strip_prefix('?').unwrap_or(query_string);
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        SearchQuery::from_pairs(&pairs)
    }

    /// Builds a query from already decoded `(name, value)` pairs.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: &[(K, V)],
    ) -> Result<SearchQuery, SearchError> {
        let mut query = SearchQuery::default();
        let (mut seen_count, mut seen_offset, mut seen_sort) = (false, false, false);
        for (k, v) in pairs {
            let (key, value) = (k.as_ref(), v.as_ref());
            if key.is_empty() {
                if value.is_empty() {
                    continue;
                }
                return Err(SearchError::UnsupportedParameter {
                    name: String::new(),
                    reason: format!("a value without a parameter name ({value:?})"),
                });
            }
            let (name, modifier) = match key.split_once(':') {
                Some((n, m)) => (n, Some(m)),
                None => (key, None),
            };
            let once = |seen: &mut bool| {
                if std::mem::replace(seen, true) {
                    Err(invalid(name, value, "given more than once"))
                } else {
                    Ok(())
                }
            };
            match name {
                "_count" | "_offset" | "_sort" if modifier.is_some() => {
                    return Err(SearchError::UnsupportedModifier {
                        name: name.to_string(),
                        modifier: modifier.unwrap_or_default().to_string(),
                    });
                }
                "_count" => {
                    once(&mut seen_count)?;
                    query.count = Some(
                        value
                            .parse()
                            .map_err(|_| invalid(name, value, "expected a whole number ≥ 0"))?,
                    );
                }
                "_offset" => {
                    once(&mut seen_offset)?;
                    query.offset = value
                        .parse()
                        .map_err(|_| invalid(name, value, "expected a whole number ≥ 0"))?;
                }
                "_sort" => {
                    once(&mut seen_sort)?;
                    for part in value.split(',') {
                        let (desc, sort_name) = match part.strip_prefix('-') {
                            Some(rest) => (true, rest),
                            None => (false, part),
                        };
                        if sort_name.is_empty() || sort_name.contains(':') {
                            return Err(invalid(name, value, "expected [-]parameter[,…]"));
                        }
                        query.sort.push(SortSpec {
                            name: sort_name.to_string(),
                            descending: desc,
                        });
                    }
                }
                n if IGNORED.contains(&n) => {}
                n if UNSUPPORTED.contains(&n) => {
                    return Err(SearchError::UnsupportedParameter {
                        name: n.to_string(),
                        reason: "not implemented by the on-device search".into(),
                    });
                }
                n if n.contains('.') => {
                    return Err(SearchError::UnsupportedParameter {
                        name: key.to_string(),
                        reason: "chained parameters are not implemented".into(),
                    });
                }
                _ => {
                    let values: Vec<String> = split_unescaped(value, ',')
                        .into_iter()
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                        .collect();
                    // Parameters with an empty value are ignored.
                    if !values.is_empty() {
                        query.params.push(QueryParam {
                            name: name.to_string(),
                            modifier: modifier.map(str::to_string),
                            values,
                        });
                    }
                }
            }
        }
        Ok(query)
    }

    /// The `_count` limit, if any.
    pub fn count(&self) -> Option<usize> {
        self.count
    }

    /// The `_offset` (0 unless given).
    pub fn offset(&self) -> usize {
        self.offset
    }
}

fn invalid(name: &str, value: &str, reason: &str) -> SearchError {
    SearchError::InvalidValue {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Splits `s` at each `sep` not preceded by a backslash escape.
pub(crate) fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Removes the search escapes `\,` `\|` `\$` `\\`.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_modifiers_and_result_params() {
        let q = SearchQuery::parse(
            "?code=http://loinc.org%7C8867-4,http://loinc.org|1234-5&name:exact=Jos%C3%A9+Mar%C3%ADa\
             &date=ge2020-01&date=lt2021&_count=10&_offset=5&_sort=-date,_id&_format=json&empty=",
        )
        .expect("parses");
        assert_eq!(q.count(), Some(10));
        assert_eq!(q.offset(), 5);
        assert_eq!(q.params.len(), 4);
        assert_eq!(
            q.params[0].values,
            ["http://loinc.org|8867-4", "http://loinc.org|1234-5"]
        );
        assert_eq!(q.params[1].modifier.as_deref(), Some("exact"));
        assert_eq!(q.params[1].values, ["José María"]);
        assert_eq!(q.params[2].name, "date");
        assert_eq!(q.params[3].values, ["lt2021"]);
        assert_eq!(
            q.sort,
            [
                SortSpec {
                    name: "date".into(),
                    descending: true
                },
                SortSpec {
                    name: "_id".into(),
                    descending: false
                }
            ]
        );
        let same = SearchQuery::from_pairs(&[
            ("code", "http://loinc.org|8867-4,http://loinc.org|1234-5"),
            ("name:exact", "José María"),
            ("date", "ge2020-01"),
            ("date", "lt2021"),
            ("_count", "10"),
            ("_offset", "5"),
            ("_sort", "-date,_id"),
        ])
        .expect("parses");
        assert_eq!(q, same);
    }

    #[test]
    fn escapes() {
        assert_eq!(split_unescaped(r"a\,b,c", ','), [r"a\,b", "c"]);
        assert_eq!(unescape(r"a\,b\|c\$d\\e\x"), r"a,b|c$d\e\x");
        let q = SearchQuery::parse(r"name=Smith\,John").expect("parses");
        assert_eq!(q.params[0].values, [r"Smith\,John"]);
    }

    #[test]
    fn rejects_bad_result_params_and_unsupported_features() {
        for (q, want) in [
            ("_count=-1", "InvalidValue"),
            ("_count=ten", "InvalidValue"),
            ("_count=1&_count=2", "InvalidValue"),
            ("_sort=", "InvalidValue"),
            ("_include=Observation:patient", "UnsupportedParameter"),
            ("subject.name=peter", "UnsupportedParameter"),
            ("_has:Observation:patient:code=1", "UnsupportedParameter"),
            ("_count:x=1", "UnsupportedModifier"),
        ] {
            let err = SearchQuery::parse(q).expect_err(q);
            assert!(format!("{err:?}").starts_with(want), "{q}: {err:?}");
        }
    }
}
