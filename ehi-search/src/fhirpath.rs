//! The FHIRPath subset that the supported search parameters' expressions use, evaluated
//! over resource JSON. Not a FHIRPath engine: it parses exactly these forms and refuses
//! anything else (a unit test checks that every supported expression parses).
//!
//! * `Type.a.b` — navigation; arrays are flattened; a name that is absent but has
//!   choice-type keys (`effective` → `effectiveDateTime`, `effectivePeriod`, …) yields
//!   those values tagged with their type. The first step is the resource type or
//!   `Resource`.
//! * `(Type.a as T)`, `(Type.a as T).b`, `Type.a.as(T)` — keep choice values of type `T`
//!   (`Quantity` also accepts its specializations Age, Count, Distance, Duration,
//!   SimpleQuantity, MoneyQuantity).
//! * `.where(resolve() is T)` — keep References whose `reference` names type `T`
//!   (`T/id`, or `…/T/id` in an absolute url) or whose `type` is `T`.
//! * `.where(name='literal')` — keep objects whose `name` equals the literal.
//! * `a | b` — union.

use serde_json::Value;

/// A parsed expression: the union of its paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    paths: Vec<Vec<Step>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    As(String),
    WhereResolveIs(String),
    WhereEq(String, String),
}

/// A value reached by an expression, with the type suffix of the choice element it came
/// from (`DateTime` for `effectiveDateTime`), if any.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The JSON value.
    pub value: &'a Value,
    /// The choice type suffix, for values of `x[x]` elements.
    pub choice_type: Option<&'a str>,
}

/// FHIR data type names that can follow a choice element's name in JSON.
const CHOICE_TYPES: &[&str] = &[
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Count",
    "DataRequirement",
    "Date",
    "DateTime",
    "Decimal",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Id",
    "Identifier",
    "Instant",
    "Integer",
    "Markdown",
    "Meta",
    "Money",
    "Oid",
    "ParameterDefinition",
    "Period",
    "PositiveInt",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "String",
    "Time",
    "Timing",
    "TriggerDefinition",
    "UnsignedInt",
    "Uri",
    "Url",
    "UsageContext",
    "Uuid",
];

impl Expression {
    /// Parses `expression` for resources of `resource_type`. Each `|` part must start
    /// with `resource_type` or `Resource`.
    pub fn parse(expression: &str, resource_type: &str) -> Result<Expression, String> {
        let paths = split_top(expression, '|')
            .into_iter()
            .map(|part| parse_part(part.trim(), resource_type))
            .collect::<Result<Vec<_>, _>>()?;
        if paths.is_empty() {
            return Err("empty expression".into());
        }
        Ok(Expression { paths })
    }

    /// Every value the expression reaches in `resource`.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        for path in &self.paths {
            let mut nodes = vec![Node {
                value: resource,
                choice_type: None,
            }];
            for step in path {
                nodes = apply(step, &nodes);
                if nodes.is_empty() {
                    break;
                }
            }
            out.extend(nodes);
        }
        out
    }
}

fn parse_part(part: &str, resource_type: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let rest = if let Some(inner) = part.strip_prefix('(') {
        let close = matching_paren(inner).ok_or_else(|| format!("unbalanced '(' in {part}"))?;
        let (cast, after) = (&inner[..close], &inner[close + 1..]);
        let (path, ty) = cast
            .rsplit_once(" as ")
            .ok_or_else(|| format!("expected '(path as Type)' in {part}"))?;
        steps.extend(parse_chain(path.trim(), resource_type)?);
        steps.push(Step::As(ident(ty.trim())?.to_string()));
        if after.is_empty() {
            return Ok(steps);
        }
        after
            .strip_prefix('.')
            .ok_or_else(|| format!("expected '.' after ')' in {part}"))?
    } else {
        let chain = parse_chain(part, resource_type)?;
        return Ok(chain);
    };
    for seg in split_top(rest, '.') {
        steps.push(Step::Field(ident(seg)?.to_string()));
    }
    Ok(steps)
}

fn parse_chain(chain: &str, resource_type: &str) -> Result<Vec<Step>, String> {
    let segs = split_top(chain, '.');
    let (first, rest) = segs.split_first().ok_or_else(|| "empty path".to_string())?;
    if *first != resource_type && *first != "Resource" {
        return Err(format!(
            "path {chain} does not start with {resource_type} or Resource"
        ));
    }
    rest.iter().map(|seg| parse_step(seg)).collect()
}

fn parse_step(seg: &str) -> Result<Step, String> {
    if let Some(arg) = seg.strip_prefix("as(").and_then(|s| s.strip_suffix(')')) {
        return Ok(Step::As(ident(arg)?.to_string()));
    }
    if let Some(arg) = seg.strip_prefix("where(").and_then(|s| s.strip_suffix(')')) {
        if let Some(ty) = arg.strip_prefix("resolve() is ") {
            return Ok(Step::WhereResolveIs(ident(ty)?.to_string()));
        }
        if let Some((name, lit)) = arg.split_once('=') {
            let lit = lit
                .strip_prefix('\'')
                .and_then(|l| l.strip_suffix('\''))
                .filter(|l| !l.contains('\''))
                .ok_or_else(|| format!("expected a quoted literal in {seg}"))?;
            return Ok(Step::WhereEq(ident(name)?.to_string(), lit.to_string()));
        }
        return Err(format!("unsupported where() form: {seg}"));
    }
    Ok(Step::Field(ident(seg)?.to_string()))
}

fn ident(s: &str) -> Result<&str, String> {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric()) => Ok(s),
        _ => Err(format!("unsupported expression element {s:?}")),
    }
}

/// Byte index of the `)` closing an already-opened `(` in `s`.
fn matching_paren(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits at `sep` outside parentheses and quotes.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0usize, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            c if c == sep && !quoted && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn apply<'a>(step: &Step, nodes: &[Node<'a>]) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    for node in nodes {
        match step {
            Step::Field(name) => {
                let Some(obj) = node.value.as_object() else {
                    continue;
                };
                if let Some(v) = obj.get(name) {
                    push_flat(&mut out, v, None);
                    continue;
                }
                for (key, v) in obj {
                    if let Some(suffix) = key.strip_prefix(name.as_str())
                        && CHOICE_TYPES.contains(&suffix)
                    {
                        push_flat(&mut out, v, Some(suffix));
                    }
                }
            }
            Step::As(ty) => {
                if node.choice_type.is_some_and(|t| type_matches(t, ty)) {
                    out.push(*node);
                }
            }
            Step::WhereResolveIs(ty) => {
                if reference_type(node.value) == Some(ty.as_str()) {
                    out.push(*node);
                }
            }
            Step::WhereEq(name, lit) => {
                if node.value.get(name).and_then(Value::as_str) == Some(lit.as_str()) {
                    out.push(*node);
                }
            }
        }
    }
    out
}

fn push_flat<'a>(out: &mut Vec<Node<'a>>, v: &'a Value, choice_type: Option<&'a str>) {
    match v {
        Value::Array(items) => out.extend(items.iter().map(|value| Node { value, choice_type })),
        Value::Null => {}
        value => out.push(Node { value, choice_type }),
    }
}

/// Whether a choice suffix (`DateTime`, `Age`) is of FHIR type `ty` (`dateTime`, `Quantity`).
fn type_matches(suffix: &str, ty: &str) -> bool {
    let same = |a: &str, b: &str| {
        let (mut x, mut y) = (a.chars(), b.chars());
        match (x.next(), y.next()) {
            (Some(p), Some(q)) => p.eq_ignore_ascii_case(&q) && x.as_str() == y.as_str(),
            _ => false,
        }
    };
    same(suffix, ty)
        || (ty == "Quantity"
            && [
                "Age",
                "Count",
                "Distance",
                "Duration",
                "SimpleQuantity",
                "MoneyQuantity",
            ]
            .contains(&suffix))
}

/// The resource type a Reference points at: from `Type/id`, an absolute url ending in
/// `Type/id` (optionally `/_history/v`), or its `type` element.
pub(crate) fn reference_type(reference: &Value) -> Option<&str> {
    if let Some((ty, _)) = reference
        .get("reference")
        .and_then(Value::as_str)
        .and_then(crate::reference::split_reference)
    {
        return Some(ty);
    }
    reference.get("type").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expr: &str, ty: &str, r: &Value) -> Vec<Value> {
        Expression::parse(expr, ty)
            .expect("parses")
            .evaluate(r)
            .into_iter()
            .map(|n| n.value.clone())
            .collect()
    }

    #[test]
    fn every_supported_expression_parses() {
        let mut count = 0;
        for ty in crate::resource_types() {
            for p in crate::supported_parameters(ty).expect("listed type") {
                Expression::parse(p.expression, ty)
                    .unwrap_or_else(|e| panic!("{ty}.{}: {e}", p.code));
                count += 1;
            }
        }
        assert!(count > 1000, "{count}");
    }

    #[test]
    fn choice_types_and_casts() {
        let obs = json!({
            "resourceType": "Observation",
            "effectivePeriod": {"start": "2020"},
            "valueQuantity": {"value": 5},
            "component": [{"valueQuantity": {"value": 1}}, {"valueString": "x"}]
        });
        assert_eq!(
            eval("Observation.effective", "Observation", &obs),
            [json!({"start": "2020"})]
        );
        assert_eq!(
            eval(
                "(Observation.value as Quantity) | (Observation.value as SampledData)",
                "Observation",
                &obs
            ),
            [json!({"value": 5})]
        );
        assert_eq!(
            eval(
                "(Observation.component.value as Quantity)",
                "Observation",
                &obs
            ),
            [json!({"value": 1})]
        );
        let cond = json!({"resourceType": "Condition", "onsetAge": {"value": 40}, "abatementString": "gone"});
        assert_eq!(
            eval(
                "Condition.onset.as(Age) | Condition.onset.as(Range)",
                "Condition",
                &cond
            ),
            [json!({"value": 40})]
        );
        assert!(eval("Condition.onset.as(dateTime)", "Condition", &cond).is_empty());
        let obs2 = json!({"valueCodeableConcept": {"text": "pos"}});
        assert_eq!(
            eval(
                "(Observation.value as string) | (Observation.value as CodeableConcept).text",
                "Observation",
                &obs2
            ),
            [json!("pos")]
        );
    }

    #[test]
    fn where_filters() {
        let obs = json!({"subject": {"reference": "Patient/1"}, "performer": [
            {"reference": "Practitioner/2"}, {"reference": "https://x.org/fhir/Patient/3/_history/4"},
            {"reference": "urn:uuid:abc", "type": "Patient"}]});
        assert_eq!(
            eval(
                "Observation.subject.where(resolve() is Patient)",
                "Observation",
                &obs
            ),
            [json!({"reference": "Patient/1"})]
        );
        assert_eq!(
            eval(
                "Observation.performer.where(resolve() is Patient)",
                "Observation",
                &obs
            )
            .len(),
            2
        );
        let pat = json!({"telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
        assert_eq!(
            eval("Patient.telecom.where(system='email')", "Patient", &pat),
            [json!({"system": "email", "value": "a@b"})]
        );
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "Patient.deceased.exists() and Patient.deceased != false",
            "Patient.name.first()",
            "Observation.code",
            "(Patient.value as)",
            "Patient.where(x)",
        ] {
            assert!(Expression::parse(bad, "Patient").is_err(), "{bad}");
        }
        assert!(Expression::parse("Resource.meta.lastUpdated", "Patient").is_ok());
    }
}
