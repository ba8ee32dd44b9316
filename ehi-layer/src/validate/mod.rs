//! Structural validation of FHIR R4 resources against the official R4 definitions
//! (the tables in [`r4`], generated from the R4 StructureDefinition snapshots).
//!
//! A resource is valid when:
//! - it is a JSON object whose `resourceType` names a concrete R4 resource;
//! - every property is an element of its type (choice elements such as `value[x]` by
//!   one of their types, e.g. `valueQuantity`; `_name` for a primitive's id and
//!   extensions), at every depth: backbone elements, complex datatypes, contained and
//!   nested resources;
//! - elements that may repeat are arrays (not empty), the others are not arrays;
//! - every primitive has its JSON kind (boolean, number or string) and matches its R4
//!   regex (decimal, integer, date, dateTime, instant, time, code, id, uri, oid, uuid,
//!   ...); integers fit in 32 bits; the resource's `id` is an `id`;
//! - every element with a minimum cardinality of 1 is present (or has its `_name`
//!   extension form), at every depth.
//!
//! Invariants (FHIRPath constraints), terminology bindings and profiles are not
//! checked. [`validate`] returns every violation with the element's path
//! (`Observation.component[1].valueQuantity.value`) and the rule it breaks.

mod r4;

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// One element of a type's snapshot: its path below the type, minimum cardinality,
/// whether it repeats, its type codes, or the element whose structure it reuses.
#[derive(Debug)]
pub(crate) struct Elem {
    path: &'static str,
    min: u32,
    many: bool,
    types: &'static [&'static str],
    content_ref: Option<&'static str>,
}

/// How JSON carries a primitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JsonKind {
    Bool,
    Number,
    String,
}

/// A primitive datatype and the regex of its value.
#[derive(Debug)]
pub(crate) struct Primitive {
    name: &'static str,
    json: JsonKind,
    regex: Option<&'static str>,
}

/// One rule a resource breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Where: `Observation.valueQuantity.value`, `Patient.name[0].given[1]`.
    pub path: String,
    /// The rule, in words: `unknown element`, `a decimal must be a JSON number`, ...
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

/// A type's elements, indexed by their parent path ("" for the type's own elements).
struct TypeDef {
    abstract_type: bool,
    children: HashMap<&'static str, Vec<&'static Elem>>,
}

impl TypeDef {
    fn new(abstract_type: bool, elems: &'static [Elem]) -> TypeDef {
        let mut children: HashMap<&'static str, Vec<&'static Elem>> = HashMap::new();
        for elem in elems {
            let parent = elem.path.rsplit_once('.').map_or("", |(parent, _)| parent);
            children.entry(parent).or_default().push(elem);
        }
        TypeDef {
            abstract_type,
            children,
        }
    }

    fn children(&self, at: &str) -> &[&'static Elem] {
        self.children.get(at).map_or(&[], Vec::as_slice)
    }
}

struct Tables {
    resources: HashMap<&'static str, TypeDef>,
    complex: HashMap<&'static str, TypeDef>,
    primitives: HashMap<&'static str, (JsonKind, Option<Regex>)>,
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let table = |defs: &'static [(&'static str, bool, &'static [Elem])]| {
        defs.iter()
            .map(|(name, abstract_type, elems)| (*name, TypeDef::new(*abstract_type, elems)))
            .collect()
    };
    Tables {
        resources: table(r4::RESOURCES),
        complex: table(r4::COMPLEX),
        primitives: r4::PRIMITIVES
            .iter()
            .map(|p| {
                // The generated regexes come from the R4 definitions and are tested to
                // compile; one that did not would only lose its syntax check.
                let regex = p.regex.and_then(|r| Regex::new(&anchored(r)).ok());
                (p.name, (p.json, regex))
            })
            .collect(),
    }
});

/// A definition's regex as a Rust regex matching the whole text. FHIR's regexes are
/// XML Schema regexes, where `\s` is only space, tab, newline and carriage return (a
/// no-break space is not white space there, unlike Unicode's `\s`).
fn anchored(regex: &str) -> String {
    let regex = regex
        .replace("\\S", "[^ \\t\\n\\r]")
        .replace("\\s", "[ \\t\\n\\r]");
    format!("^(?:{regex})$")
}

/// Whether `name` is a concrete R4 resource type.
pub fn is_resource_type(name: &str) -> bool {
    TABLES
        .resources
        .get(name)
        .is_some_and(|def| !def.abstract_type)
}

/// Every violation of the R4 structure rules in `resource` (empty when valid).
pub fn validate(resource: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    check_resource(resource, None, &mut out);
    out
}

/// Caps the violations reported for one resource (a wrong file can have thousands).
const MAX_VIOLATIONS: usize = 100;

fn violation(out: &mut Vec<Violation>, path: &str, rule: impl Into<String>) {
    if out.len() < MAX_VIOLATIONS {
        out.push(Violation {
            path: path.to_string(),
            rule: rule.into(),
        });
    }
}

/// A resource at `at` (`None` for the top-level resource, else the display path of
/// the element holding it).
fn check_resource(value: &Value, at: Option<&str>, out: &mut Vec<Violation>) {
    let here = at.unwrap_or("(resource)");
    let Some(obj) = value.as_object() else {
        return violation(out, here, "a resource must be a JSON object");
    };
    let Some(resource_type) = obj.get("resourceType").and_then(Value::as_str) else {
        return violation(out, here, "resourceType is missing or not a string");
    };
    let display = match at {
        None => resource_type.to_string(),
        Some(at) => format!("{at}<{resource_type}>"),
    };
    let Some(def) = TABLES.resources.get(resource_type) else {
        return violation(
            out,
            &display,
            format!("unknown resourceType {resource_type:?} (not an R4 resource)"),
        );
    };
    if def.abstract_type {
        return violation(
            out,
            &display,
            format!("{resource_type} is abstract; use a concrete resource type"),
        );
    }
    // Resource.id has the `id` syntax (the snapshot types it as a plain string).
    if let Some(id) = obj.get("id") {
        check_primitive("id", id, &format!("{display}.id"), out);
    }
    check_object(def, "", obj, &display, true, out);
}

/// The element of `children` that property `name` is, and the type it selects for a
/// choice element (`valueQuantity` → `Quantity`).
fn find<'a>(children: &[&'a Elem], name: &str) -> Option<(&'a Elem, Option<&'static str>)> {
    for elem in children {
        let last = elem.path.rsplit('.').next().unwrap_or(elem.path);
        if let Some(base) = last.strip_suffix("[x]") {
            if let Some(suffix) = name.strip_prefix(base) {
                let chosen = elem.types.iter().find(|t| {
                    let mut chars = t.chars();
                    chars.next().is_some_and(|c| {
                        suffix.starts_with(c.to_ascii_uppercase())
                            && suffix.get(1..) == Some(chars.as_str())
                    })
                });
                if let Some(t) = chosen {
                    return Some((elem, Some(*t)));
                }
            }
        } else if last == name {
            return Some((elem, None));
        }
    }
    None
}

fn is_primitive(t: &str) -> bool {
    TABLES.primitives.contains_key(t)
}

fn check_object(
    def: &TypeDef,
    at: &str,
    obj: &Map<String, Value>,
    display: &str,
    resource_root: bool,
    out: &mut Vec<Violation>,
) {
    let children = def.children(at);
    for (key, value) in obj {
        if resource_root && key == "resourceType" {
            continue;
        }
        let path = format!("{display}.{key}");
        let (name, extension_form) = match key.strip_prefix('_') {
            Some(name) => (name, true),
            None => (key.as_str(), false),
        };
        let Some((elem, chosen)) = find(children, name) else {
            violation(out, &path, "unknown element");
            continue;
        };
        let single = chosen.or(match elem.types {
            [t] => Some(*t),
            _ => None,
        });
        if extension_form {
            if !single.is_some_and(is_primitive) {
                violation(out, &path, "only primitive elements have a `_` form");
                continue;
            }
            check_items(elem, value, &path, true, out, |item, p, out| match item {
                Value::Object(ext) => check_extension_form(ext, p, out),
                _ => violation(out, p, "a `_` element must be a JSON object"),
            });
            continue;
        }
        let item_is_primitive = single.is_some_and(is_primitive);
        check_items(
            elem,
            value,
            &path,
            item_is_primitive,
            out,
            |item, p, out| {
                check_value(def, elem, single, item, p, out);
            },
        );
    }
    for elem in children.iter().filter(|e| e.min > 0) {
        let last = elem.path.rsplit('.').next().unwrap_or(elem.path);
        let present = obj.keys().any(|k| {
            find(children, k.strip_prefix('_').unwrap_or(k))
                .is_some_and(|(found, _)| std::ptr::eq(found, *elem))
        });
        if !present {
            violation(
                out,
                &format!("{display}.{last}"),
                format!(
                    "required element is missing (minimum cardinality {})",
                    elem.min
                ),
            );
        }
    }
}

/// Applies the array rules of `elem` and calls `each` for every item.
fn check_items(
    elem: &Elem,
    value: &Value,
    path: &str,
    nulls_allowed: bool,
    out: &mut Vec<Violation>,
    mut each: impl FnMut(&Value, &str, &mut Vec<Violation>),
) {
    match (elem.many, value) {
        (true, Value::Array(items)) => {
            if items.is_empty() {
                violation(out, path, "an array must not be empty (omit the element)");
            }
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if item.is_null() {
                    // Nulls keep a primitive array aligned with its `_` array.
                    if !nulls_allowed {
                        violation(out, &p, "null is not a value");
                    }
                    continue;
                }
                each(item, &p, out);
            }
        }
        (true, _) => violation(out, path, "this element repeats: it must be an array"),
        (false, Value::Array(_)) => {
            violation(
                out,
                path,
                "this element does not repeat: it must not be an array",
            );
        }
        (false, Value::Null) => violation(out, path, "null is not a value"),
        (false, item) => each(item, path, out),
    }
}

/// A `_name` object: only `id` and `extension`.
fn check_extension_form(ext: &Map<String, Value>, path: &str, out: &mut Vec<Violation>) {
    if let Some(element) = TABLES.complex.get("Element") {
        check_object(element, "", ext, path, false, out);
    }
}

fn check_value(
    def: &TypeDef,
    elem: &Elem,
    single: Option<&'static str>,
    item: &Value,
    path: &str,
    out: &mut Vec<Violation>,
) {
    if let Some(target) = elem.content_ref {
        return match item {
            Value::Object(obj) => check_object(def, target, obj, path, false, out),
            _ => violation(out, path, "must be a JSON object"),
        };
    }
    let Some(t) = single else {
        // A choice element written without its type suffix is caught by `find`; a
        // multi-typed element without a choice does not occur in R4.
        return;
    };
    if is_primitive(t) {
        return check_primitive(t, item, path, out);
    }
    let Some(obj) = item.as_object() else {
        return violation(out, path, format!("a {t} must be a JSON object"));
    };
    if t == "Resource" {
        return check_resource(item, Some(path), out);
    }
    // Backbone elements (and inline Elements) are defined in the same snapshot.
    if !def.children(elem.path).is_empty() {
        return check_object(def, elem.path, obj, path, false, out);
    }
    match TABLES.complex.get(t) {
        Some(datatype) => check_object(datatype, "", obj, path, false, out),
        None => violation(out, path, format!("unknown type {t}")),
    }
}

fn check_primitive(t: &str, item: &Value, path: &str, out: &mut Vec<Violation>) {
    let Some((kind, regex)) = TABLES.primitives.get(t) else {
        return;
    };
    let text = match (kind, item) {
        (JsonKind::Bool, Value::Bool(_)) => return,
        (JsonKind::Number, Value::Number(n)) => n.to_string(),
        (JsonKind::String, Value::String(s)) => s.clone(),
        (JsonKind::Bool, _) => return violation(out, path, format!("a {t} must be true or false")),
        (JsonKind::Number, _) => {
            return violation(out, path, format!("a {t} must be a JSON number"));
        }
        (JsonKind::String, _) => {
            return violation(out, path, format!("a {t} must be a JSON string"));
        }
    };
    if let Some(regex) = regex
        && !regex.is_match(&text)
    {
        return violation(out, path, format!("{text:?} is not a valid {t}"));
    }
    if matches!(t, "integer" | "positiveInt" | "unsignedInt")
        && text.trim_start_matches('+').parse::<i32>().is_err()
    {
        violation(out, path, format!("{text} does not fit a 32-bit {t}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: &Value) -> Vec<String> {
        validate(v).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_generated_regex_compiles_and_every_type_resolves() {
        for p in r4::PRIMITIVES {
            if let Some(r) = p.regex {
                assert!(Regex::new(&anchored(r)).is_ok(), "{}", p.name);
            }
        }
        for (name, _, elems) in r4::RESOURCES.iter().chain(r4::COMPLEX) {
            for e in elems.iter() {
                for t in e.types {
                    assert!(
                        is_primitive(t)
                            || TABLES.complex.contains_key(t)
                            || TABLES.resources.contains_key(t),
                        "{name}.{}: type {t}",
                        e.path
                    );
                }
            }
        }
        assert!(is_resource_type("Observation"));
        assert!(!is_resource_type("Observaton"));
        assert!(!is_resource_type("DomainResource"));
    }

    #[test]
    fn a_valid_observation_passes() {
        let obs = json!({
            "resourceType": "Observation", "id": "o-1", "status": "final",
            "meta": {"lastUpdated": "2024-01-02T03:04:05.123Z"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "HR"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01-02",
            "valueQuantity": {"value": 60, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
            "component": [{"code": {"text": "x"}, "valueString": "y"}],
            "contained": [{"resourceType": "Patient", "id": "c", "active": true}],
            "extension": [{"url": "http://example.org/x", "valueBoolean": true}],
            "_status": {"extension": [{"url": "http://example.org/y", "valueCode": "z"}]}
        });
        assert_eq!(rules(&obs), Vec::<String>::new());
    }

    #[test]
    fn each_rule_names_the_path() {
        let bad = json!({"resourceType": "Observaton", "id": "1"});
        assert_eq!(
            rules(&bad),
            ["Observaton: unknown resourceType \"Observaton\" (not an R4 resource)"]
        );
        let obs = json!({
            "resourceType": "Observation", "id": "bad id!", "status": "final",
            "code": {"text": "x"},
            "valueQuantity": {"value": "abc"},
            "effectiveDateTime": "2024-13-45",
            "issued": "2024-01-02",
            "note": {"text": "one"},
            "identifier": [],
            "subject": [{"reference": "Patient/1"}],
            "colour": "red",
            "component": [{"valueInteger": 3000000000_u64}]
        });
        let got = rules(&obs);
        for expected in [
            "Observation.id: \"bad id!\" is not a valid id",
            "Observation.valueQuantity.value: a decimal must be a JSON number",
            "Observation.effectiveDateTime: \"2024-13-45\" is not a valid dateTime",
            "Observation.issued: \"2024-01-02\" is not a valid instant",
            "Observation.note: this element repeats: it must be an array",
            "Observation.identifier: an array must not be empty (omit the element)",
            "Observation.subject: this element does not repeat: it must not be an array",
            "Observation.colour: unknown element",
            "Observation.component[0].valueInteger: 3000000000 does not fit a 32-bit integer",
            "Observation.component[0].code: required element is missing (minimum cardinality 1)",
        ] {
            assert!(
                got.iter().any(|g| g == expected),
                "{expected} not in {got:#?}"
            );
        }
        assert_eq!(got.len(), 10, "{got:#?}");
        let missing = json!({"resourceType": "Observation"});
        assert_eq!(
            rules(&missing),
            [
                "Observation.status: required element is missing (minimum cardinality 1)",
                "Observation.code: required element is missing (minimum cardinality 1)",
            ]
        );
    }

    #[test]
    fn primitive_forms() {
        let p = |v: Value| rules(&json!({"resourceType": "Patient", "birthDate": v}));
        assert!(p(json!("1970")).is_empty());
        assert!(
            p(json!("1970-02-30")).is_empty(),
            "the regex checks form, not calendar"
        );
        assert_eq!(p(json!("70-01-01")).len(), 1);
        assert_eq!(p(json!(1970)).len(), 1);
        let active = |v: Value| rules(&json!({"resourceType": "Patient", "active": v}));
        assert!(active(json!(false)).is_empty());
        assert_eq!(
            active(json!("true")),
            ["Patient.active: a boolean must be true or false"]
        );
        let gender = |v: Value| rules(&json!({"resourceType": "Patient", "gender": v}));
        assert_eq!(
            gender(json!("fe male")).len(),
            0,
            "code allows single inner spaces"
        );
        assert_eq!(gender(json!(" female")).len(), 1);
        assert!(
            gender(json!("a\u{a0}")).is_empty(),
            "a no-break space is not white space in FHIR's (XML Schema) regexes"
        );
        assert_eq!(gender(json!("a\t")).len(), 1);
        // Decimals keep their token: 1.50 and exponent forms are valid decimals.
        let q = |text: &str| -> Vec<String> {
            let v: Value = serde_json::from_str(&format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{text}}}}}"#
            ))
            .expect("json");
            rules(&v)
        };
        assert!(q("1.50").is_empty());
        assert!(q("-2.5e-3").is_empty());
        assert!(q("12345678901234567890.1").is_empty());
        // Primitive arrays may hold nulls aligned with their `_` array.
        let names = json!({"resourceType": "Patient",
            "name": [{"given": ["A", null], "_given": [null, {"extension": [{"url": "http://e.org/u", "valueString": "x"}]}]}]});
        assert!(rules(&names).is_empty(), "{:?}", rules(&names));
    }

    #[test]
    fn nested_resources_are_checked() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "gender": 1}}]});
        assert_eq!(
            rules(&bundle),
            ["Bundle.entry[0].resource<Patient>.gender: a code must be a JSON string"]
        );
        let q = json!({"resourceType": "Questionnaire", "status": "draft",
            "item": [{"linkId": "1", "type": "group",
                "item": [{"linkId": "1.1", "type": "string", "wrong": 1}]}]});
        assert_eq!(
            rules(&q),
            ["Questionnaire.item[0].item[0].wrong: unknown element"],
            "content references reuse the structure of the element they name"
        );
    }
}
