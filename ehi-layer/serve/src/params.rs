//! Result parameters shared by read, history, search and `$everything`: paging
//! (`_count`, `_offset` and the Bundle links), `_summary` and `_elements` (shaping a
//! resource), and the Bundle entry of a resource.

use serde_json::{Value, json};

use super::{DEFAULT_COUNT, MAX_COUNT, Pairs, ServeError, summary};

/// `_count` and `_offset`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Page {
    count: usize,
    offset: usize,
}

impl Page {
    pub(super) fn from_pairs(pairs: &Pairs) -> Result<Page, ServeError> {
        let mut page = Page {
            count: DEFAULT_COUNT,
            offset: 0,
        };
        for (k, v) in pairs {
            let parse = |what: &str| {
                v.trim().parse::<usize>().map_err(|_| {
                    ServeError::BadRequest(format!("{what}={v}: expected a whole number ≥ 0"))
                })
            };
            match k.as_str() {
                "_count" => page.count = parse("_count")?.min(MAX_COUNT),
                "_offset" => page.offset = parse("_offset")?,
                _ => {}
            }
        }
        Ok(page)
    }

    fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = self.offset.min(total);
        start..start.saturating_add(self.count).min(total)
    }

    pub(super) fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        items.get(self.range(items.len())).unwrap_or_default()
    }

    /// `self`, `first`, `previous` and `next` links over `url` with `pairs`.
    pub(super) fn links(&self, url: &str, pairs: &Pairs, total: usize) -> Vec<Value> {
        let link = |offset: usize| {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                if k != "_count" && k != "_offset" {
                    query.append_pair(k, v);
                }
            }
            query.append_pair("_count", &self.count.to_string());
            query.append_pair("_offset", &offset.to_string());
            format!("{url}?{}", query.finish())
        };
        let mut links = vec![
            json!({"relation": "self", "url": link(self.offset)}),
            json!({"relation": "first", "url": link(0)}),
        ];
        if self.offset > 0 {
            let prev = self.offset.saturating_sub(self.count.max(1));
            links.push(json!({"relation": "previous", "url": link(prev)}));
        }
        if self.count > 0 && self.offset.saturating_add(self.count) < total {
            links.push(json!({"relation": "next", "url": link(self.offset + self.count)}));
        }
        links
    }
}

/// `_summary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Summary {
    False,
    Count,
    Data,
    True,
    Text,
}

impl Summary {
    pub(super) fn parse(value: &str) -> Result<Summary, ServeError> {
        Ok(match value {
            "false" => Summary::False,
            "count" => Summary::Count,
            "data" => Summary::Data,
            "true" => Summary::True,
            "text" => Summary::Text,
            other => {
                return Err(ServeError::BadRequest(format!(
                    "_summary={other} is not supported (true, text, data, count, false are)"
                )));
            }
        })
    }
}

/// The element names of an `_elements` value (comma-separated, blanks dropped).
pub(super) fn parse_elements(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// `_summary=data` drops `text`; `_summary=true` and `_summary=text` keep what
/// [`summary`] says; `_elements` keeps the listed top-level elements (and
/// `resourceType`, `id`, `meta`). Any of them marks the resource SUBSETTED.
pub(super) fn shape_resource(
    mut resource: Value,
    summary: Summary,
    elements: Option<&[String]>,
) -> Value {
    let mut subsetted = match summary {
        Summary::Data => resource
            .as_object_mut()
            .is_some_and(|obj| obj.remove("text").is_some()),
        Summary::True => summary::summary_true(&mut resource),
        Summary::Text => summary::summary_text(&mut resource),
        Summary::False | Summary::Count => false,
    };
    if let Some(keep) = elements
        && let Some(obj) = resource.as_object_mut()
    {
        let before = obj.len();
        let t = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // FHIR: `_elements` also returns the resource's mandatory elements.
        let required = ehi_vault::validate::required_elements(&t);
        obj.retain(|k, _| {
            let name = k.strip_prefix('_').unwrap_or(k);
            matches!(k.as_str(), "resourceType" | "id" | "meta")
                || keep.iter().any(|e| e == k)
                || required.iter().any(|r| r.matches(name))
        });
        subsetted |= obj.len() != before;
    }
    if subsetted {
        summary::mark_subsetted(&mut resource);
    }
    resource
}

pub(super) fn entry(base: &str, resource: Value, mode: &str) -> Value {
    let full_url = match (resource["resourceType"].as_str(), resource["id"].as_str()) {
        (Some(t), Some(id)) => format!("{base}/{t}/{id}"),
        _ => String::new(),
    };
    json!({"fullUrl": full_url, "resource": resource, "search": {"mode": mode}})
}
