//! Unit tests of search semantics per parameter kind, result parameters, errors, index
//! maintenance and the serde round trip, over small hand-written realistic resources.

use super::*;
use serde_json::json;

fn index(resources: &[Value]) -> SearchIndex {
    let mut idx = SearchIndex::new();
    for r in resources {
        idx.upsert(r).expect("indexes");
    }
    idx
}

/// Ids matching `q` for `ty`, in result order.
fn ids(idx: &SearchIndex, ty: &str, q: &str) -> Vec<String> {
    let query = SearchQuery::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    idx.search(ty, &query)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .ids
}

/// Ids matching, sorted (for set comparisons).
fn set(idx: &SearchIndex, ty: &str, q: &str) -> Vec<String> {
    let mut v = ids(idx, ty, q);
    v.sort();
    v
}

fn err(idx: &SearchIndex, ty: &str, q: &str) -> SearchError {
    let query = match SearchQuery::parse(q) {
        Ok(query) => query,
        Err(e) => return e,
    };
    idx.search(ty, &query).expect_err(q)
}

fn observation(id: &str, loinc: &str, effective: Value, value: Value) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "id": id,
        "meta": {"lastUpdated": "2024-06-01T12:00:00Z"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": "Heart rate"}], "text": "Heart rate"},
        "subject": {"reference": "Patient/p1"},
    });
    let obj = o.as_object_mut().expect("object");
    match effective {
        Value::String(_) => obj.insert("effectiveDateTime".into(), effective),
        _ => obj.insert("effectivePeriod".into(), effective),
    };
    if !value.is_null() {
        obj.insert("valueQuantity".into(), value);
    }
    o
}

fn bpm(v: f64) -> Value {
    json!({"value": v, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"})
}

fn patients() -> Vec<Value> {
    vec![
        json!({
            "resourceType": "Patient", "id": "p1", "active": true,
            "meta": {"lastUpdated": "2024-01-02T03:04:05Z", "tag": [{"system": "urn:t", "code": "imported"}]},
            "identifier": [
                {"system": "http://hospital.smarthealthit.org", "value": "3503973",
                 "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical Record Number"}},
                {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"}
            ],
            "name": [{"use": "official", "family": "Escalante", "given": ["Miguel Ángel"], "prefix": ["Mr."]},
                     {"use": "nickname", "text": "Mike"}],
            "telecom": [{"system": "phone", "value": "555-0100", "use": "home"},
                        {"system": "email", "value": "miguel@example.org"}],
            "gender": "male", "birthDate": "1985-03-14",
            "address": [{"line": ["12 Rue de l'Église"], "city": "Montréal", "state": "QC", "postalCode": "H2X 1Y4", "country": "CA"}]
        }),
        json!({
            "resourceType": "Patient", "id": "p2", "active": false,
            "name": [{"family": "Leuschke", "given": ["Donnell"]}],
            "gender": "female", "birthDate": "1985",
            "telecom": [{"system": "phone", "value": "555-0199"}]
        }),
        json!({
            "resourceType": "Patient", "id": "p3",
            "name": [{"family": "Escalante-Díaz", "given": ["Zoë"]}],
            "gender": "other", "birthDate": "2001-11"
        }),
    ]
}

fn observations() -> Vec<Value> {
    vec![
        observation("o1", "8867-4", json!("2021-03-04T10:00:00Z"), bpm(72.0)),
        observation(
            "o2",
            "8867-4",
            json!("2021-03-05T23:30:00-05:00"),
            bpm(100.0),
        ),
        observation("o3", "8867-4", json!("2021-04"), bpm(99.4)),
        observation(
            "o4",
            "29463-7",
            json!({"start": "2020-12-31T22:00:00Z", "end": "2021-01-02"}),
            json!({"value": 70.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}),
        ),
        observation("o5", "29463-7", json!({"start": "2022-01-01"}), Value::Null),
        json!({
            "resourceType": "Observation", "id": "o6", "status": "preliminary",
            "code": {"coding": [{"code": "local-1"}], "text": "Local glucose"},
            "subject": {"reference": "Group/g1"},
            "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
            "effectiveInstant": "2023-07-01T08:00:00.123+02:00"
        }),
    ]
}

#[test]
fn token_forms() {
    let idx = index(&observations());
    let loinc = "http://loinc.org";
    assert_eq!(
        set(&idx, "Observation", &format!("code={loinc}|8867-4")),
        ["o1", "o2", "o3"]
    );
    assert_eq!(set(&idx, "Observation", "code=8867-4"), ["o1", "o2", "o3"]);
    assert_eq!(
        set(&idx, "Observation", "code=|8867-4"),
        Vec::<String>::new()
    );
    assert_eq!(set(&idx, "Observation", "code=|local-1"), ["o6"]);
    assert_eq!(set(&idx, "Observation", "code=local-1"), ["o6"]);
    assert_eq!(
        set(&idx, "Observation", &format!("code={loinc}|")),
        ["o1", "o2", "o3", "o4", "o5"]
    );
    assert_eq!(
        set(&idx, "Observation", "code=http://snomed.info/sct|8867-4"),
        Vec::<String>::new()
    );
    // code type: exact, case-sensitive, no system.
    assert_eq!(set(&idx, "Observation", "status=final").len(), 5);
    assert_eq!(set(&idx, "Observation", "status=|preliminary"), ["o6"]);
    assert!(set(&idx, "Observation", "status=Final").is_empty());
    // :not includes resources without the element.
    assert_eq!(
        set(&idx, "Observation", "code:not=8867-4"),
        ["o4", "o5", "o6"]
    );
    assert_eq!(set(&idx, "Observation", "category:not=vital-signs"), ["o6"]);
    // :text on CodeableConcept.text and Coding.display.
    assert_eq!(set(&idx, "Observation", "code:text=glucose"), ["o6"]);
    assert_eq!(set(&idx, "Observation", "code:text=HEART").len(), 5);
    assert_eq!(set(&idx, "Observation", "category:text=vital sig").len(), 5);

    let pats = index(&patients());
    assert_eq!(
        set(
            &pats,
            "Patient",
            "identifier=http://hospital.smarthealthit.org|3503973"
        ),
        ["p1"]
    );
    assert_eq!(set(&pats, "Patient", "identifier=999-12-3456"), ["p1"]);
    assert_eq!(
        set(&pats, "Patient", "identifier:text=medical record"),
        ["p1"]
    );
    assert_eq!(set(&pats, "Patient", "gender=male,female"), ["p1", "p2"]);
    assert_eq!(set(&pats, "Patient", "active=true"), ["p1"]);
    assert_eq!(set(&pats, "Patient", "active=false"), ["p2"]);
    assert_eq!(set(&pats, "Patient", "active:missing=true"), ["p3"]);
    assert_eq!(set(&pats, "Patient", "phone=555-0199"), ["p2"]);
    assert_eq!(set(&pats, "Patient", "email=miguel@example.org"), ["p1"]);
    assert!(
        set(&pats, "Patient", "email=555-0100").is_empty(),
        "where(system='email')"
    );
    assert_eq!(set(&pats, "Patient", "telecom=phone|555-0100"), ["p1"]);
    assert_eq!(set(&pats, "Patient", "_id=p2,p3,nope"), ["p2", "p3"]);
    assert_eq!(set(&pats, "Patient", "_tag=urn:t|imported"), ["p1"]);
}

#[test]
fn string_matching() {
    let idx = index(&patients());
    // Prefix, case- and accent-insensitive, on family/given/prefix/text.
    assert_eq!(set(&idx, "Patient", "name=escal"), ["p1", "p3"]);
    assert_eq!(set(&idx, "Patient", "name=ESCALANTE"), ["p1", "p3"]);
    assert_eq!(
        set(&idx, "Patient", "name=angel"),
        ["p1"],
        "a later word of given"
    );
    assert_eq!(
        set(&idx, "Patient", "name=Miguel Án"),
        ["p1"],
        "whole-value prefix"
    );
    assert_eq!(set(&idx, "Patient", "name=mike"), ["p1"], "HumanName.text");
    assert_eq!(set(&idx, "Patient", "name=mr"), ["p1"], "prefix");
    assert_eq!(set(&idx, "Patient", "given=zoe"), ["p3"]);
    assert_eq!(set(&idx, "Patient", "family=diaz"), ["p3"]);
    assert!(
        set(&idx, "Patient", "family=lante").is_empty(),
        "not a prefix"
    );
    assert!(set(&idx, "Patient", "given=escalante").is_empty());
    // :exact is whole-value, case- and accent-sensitive.
    assert_eq!(set(&idx, "Patient", "family:exact=Escalante"), ["p1"]);
    assert!(set(&idx, "Patient", "family:exact=escalante").is_empty());
    assert_eq!(set(&idx, "Patient", "given:exact=Miguel Ángel"), ["p1"]);
    assert!(set(&idx, "Patient", "given:exact=Miguel Angel").is_empty());
    // :contains is a normalized substring.
    assert_eq!(set(&idx, "Patient", "family:contains=LANT"), ["p1", "p3"]);
    assert_eq!(set(&idx, "Patient", "name:contains=uel án"), ["p1"]);
    // Address parts.
    assert_eq!(set(&idx, "Patient", "address=montreal"), ["p1"]);
    assert_eq!(set(&idx, "Patient", "address=eglise"), ["p1"]);
    assert_eq!(set(&idx, "Patient", "address-city=MONTRÉAL"), ["p1"]);
    assert_eq!(set(&idx, "Patient", "address-postalcode=h2x"), ["p1"]);
    // OR and AND.
    assert_eq!(set(&idx, "Patient", "name=donnell,zoe"), ["p2", "p3"]);
    assert_eq!(set(&idx, "Patient", "name=escalante&name=zoe"), ["p3"]);
    assert_eq!(set(&idx, "Patient", r"name=x\,y"), Vec::<String>::new());
}

#[test]
fn date_prefixes_partial_dates_periods_and_zones() {
    let idx = index(&observations());
    let q = |s: &str| set(&idx, "Observation", s);
    // o1 2021-03-04T10:00:00Z; o2 2021-03-06T04:30Z (a 23:30-05:00 local time);
    // o3 2021-04 (month); o4 [2020-12-31T22:00Z, 2021-01-03); o5 [2022-01-01, ∞);
    // o6 2023-07-01T06:00:00.123Z.
    assert_eq!(q("date=2021-03-04"), ["o1"]);
    assert_eq!(
        q("date=2021-03-05"),
        Vec::<String>::new(),
        "o2 is the 6th in UTC"
    );
    assert_eq!(q("date=2021-03-06"), ["o2"]);
    assert_eq!(q("date=2021-03"), ["o1", "o2"]);
    assert_eq!(q("date=2021"), ["o1", "o2", "o3"], "o4 starts in 2020");
    assert_eq!(
        q("date=2021-04-10"),
        Vec::<String>::new(),
        "a month is not within a day"
    );
    assert_eq!(
        q("date=ge2021-04-10"),
        ["o3", "o5", "o6"],
        "o3's month extends after"
    );
    assert_eq!(q("date=gt2021-04"), ["o5", "o6"]);
    assert_eq!(q("date=lt2021-01-01"), ["o4"], "o4 starts in 2020");
    assert_eq!(q("date=le2021-01-02"), ["o4"]);
    assert_eq!(q("date=lt2021-03-04T10:00:00Z"), ["o4"]);
    assert_eq!(q("date=le2021-03-04T10:00:00Z"), ["o1", "o4"]);
    assert_eq!(q("date=gt2021-03-04T10:00:00Z"), ["o2", "o3", "o5", "o6"]);
    assert_eq!(q("date=2021-03-04T11:00:00%2B01:00"), ["o1"], "+01:00 zone");
    assert_eq!(
        q("date=2021-03-04T11:00:00+01:00"),
        ["o1"],
        "unencoded + decodes as space"
    );
    assert_eq!(q("date=2021-03-04T05:00:00-05:00"), ["o1"]);
    assert_eq!(q("date=2021-03-04T10:00"), ["o1"], "minute precision");
    assert_eq!(q("date=sa2021-03-31"), ["o3", "o5", "o6"]);
    assert_eq!(q("date=eb2021-03-01"), ["o4"]);
    assert_eq!(q("date=ne2021-03"), ["o3", "o4", "o5", "o6"]);
    assert_eq!(
        q("date=2023-07-01T06:00:00.123Z"),
        ["o6"],
        "instant with ms"
    );
    assert_eq!(
        q("date=2023-07-01T06:00:00Z"),
        ["o6"],
        "second contains the ms"
    );
    // Open-ended period.
    assert_eq!(q("date=ge2030"), ["o5"]);
    assert_eq!(q("date=gt2021-12-31&date=lt2022-06"), ["o5"]);
    // Range via AND.
    assert_eq!(q("date=ge2021-03-01&date=lt2021-04"), ["o1", "o2"]);
    // OR.
    assert_eq!(q("date=2021-03-04,2021-04"), ["o1", "o3"]);
    // _lastUpdated from meta.lastUpdated.
    assert_eq!(q("_lastUpdated=2024-06").len(), 5);
    assert_eq!(q("_lastUpdated:missing=true"), ["o6"]);

    let pats = index(&patients());
    assert_eq!(set(&pats, "Patient", "birthdate=1985"), ["p1", "p2"]);
    assert_eq!(set(&pats, "Patient", "birthdate=1985-03-14"), ["p1"]);
    assert_eq!(
        set(&pats, "Patient", "birthdate=ge1985-03"),
        ["p1", "p2", "p3"]
    );
    assert_eq!(set(&pats, "Patient", "birthdate=lt1985-06"), ["p1", "p2"]);
    assert_eq!(set(&pats, "Patient", "birthdate=gt1985-06"), ["p2", "p3"]);
}

#[test]
fn date_approximately() {
    let idx = index(&observations());
    let run = |q: &str, now: &str| {
        let now = date::parse(now).expect("date").lo;
        let query = SearchQuery::parse(q).expect("query");
        let mut v = idx
            .search_at("Observation", &query, now)
            .expect("search")
            .ids;
        v.sort();
        v
    };
    // 2021-03-10 is ~1200 days before now=2024-06-24: ±120 days catches o1..o4.
    assert_eq!(
        run("date=ap2021-03-10", "2024-06-24"),
        ["o1", "o2", "o3", "o4"]
    );
    // Near now, ap is almost eq-overlap.
    assert_eq!(run("date=ap2021-03-06", "2021-03-07"), ["o2"]);
}

#[test]
fn reference_forms() {
    let mut resources = observations();
    resources.push(json!({
        "resourceType": "Observation", "id": "o7", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "https://ehr.example.org/fhir/Patient/p2/_history/3"}
    }));
    let idx = index(&resources);
    let q = |s: &str| set(&idx, "Observation", s);
    assert_eq!(q("patient=Patient/p1").len(), 5);
    assert_eq!(q("patient=p1").len(), 5);
    assert_eq!(
        q("patient=https://other.example/fhir/Patient/p1").len(),
        5,
        "url tail"
    );
    assert_eq!(q("patient=p2"), ["o7"]);
    assert_eq!(
        q("patient=https://ehr.example.org/fhir/Patient/p2/_history/3"),
        ["o7"]
    );
    assert!(
        q("patient=g1").is_empty(),
        "patient keeps only Patient references"
    );
    assert_eq!(q("subject=g1"), ["o6"]);
    assert_eq!(q("subject=Group/g1"), ["o6"]);
    assert_eq!(q("subject:Group=g1"), ["o6"]);
    assert!(q("subject:Patient=g1").is_empty());
    assert_eq!(q("subject:Patient=p1").len(), 5);
    assert_eq!(q("subject=Patient/p1,Group/g1").len(), 6);
    assert_eq!(q("subject:missing=true"), Vec::<String>::new());
}

#[test]
fn quantity_precision_prefixes_and_units() {
    let idx = index(&observations());
    let q = |s: &str| set(&idx, "Observation", s);
    // 100 means [99.5, 100.5): o2 (100) but not o3 (99.4).
    assert_eq!(q("value-quantity=100"), ["o2"]);
    assert_eq!(q("value-quantity=1e2"), ["o2", "o3"], "[95, 105)");
    assert_eq!(q("value-quantity=100.0"), ["o2"]);
    assert_eq!(q("value-quantity=99"), ["o3"], "[98.5, 99.5)");
    assert_eq!(q("value-quantity=5.4"), ["o6"]);
    assert_eq!(q("value-quantity=5.40"), ["o6"]);
    assert_eq!(q("value-quantity=5.35"), Vec::<String>::new());
    assert_eq!(q("value-quantity=5"), ["o6"], "[4.5, 5.5)");
    assert_eq!(q("value-quantity=gt99.4"), ["o2"]);
    assert_eq!(q("value-quantity=ge99.4"), ["o2", "o3"]);
    assert_eq!(q("value-quantity=lt72"), ["o4", "o6"]);
    assert_eq!(q("value-quantity=le72"), ["o1", "o4", "o6"]);
    assert_eq!(q("value-quantity=ne100"), ["o1", "o3", "o4", "o6"]);
    assert_eq!(q("value-quantity=ap95"), ["o2", "o3"], "within 10%");
    assert_eq!(
        q("value-quantity=72|http://unitsofmeasure.org|/min"),
        ["o1"]
    );
    assert_eq!(q("value-quantity=72||/min"), ["o1"]);
    assert_eq!(q("value-quantity=72||beats/minute"), ["o1"], "unit text");
    assert!(q("value-quantity=72|http://unitsofmeasure.org|kg").is_empty());
    assert_eq!(q("value-quantity=ge0||kg"), ["o4"]);
    assert_eq!(q("value-quantity=5.4||mmol/L"), ["o6"]);
    assert_eq!(q("value-quantity=lt80,gt99.9"), ["o1", "o2", "o4", "o6"]);
    assert_eq!(q("value-quantity=gt60&value-quantity=lt80"), ["o1", "o4"]);
    assert_eq!(q("value-quantity=-1e-3"), Vec::<String>::new());
}

#[test]
fn sort_count_offset() {
    let idx = index(&observations());
    let q = |s: &str| ids(&idx, "Observation", s);
    assert_eq!(q("_sort=date"), ["o4", "o1", "o2", "o3", "o5", "o6"]);
    assert_eq!(q("_sort=-date"), ["o6", "o5", "o3", "o2", "o1", "o4"]);
    assert_eq!(q("_sort=-date&_count=2"), ["o6", "o5"]);
    assert_eq!(q("_sort=-date&_count=2&_offset=2"), ["o3", "o2"]);
    assert_eq!(q("_sort=-date&_count=10&_offset=5"), ["o4"]);
    assert_eq!(q("_sort=-date&_offset=9"), Vec::<String>::new());
    // Missing values sort last either way; ties by id.
    assert_eq!(
        q("_sort=value-quantity"),
        ["o6", "o4", "o1", "o3", "o2", "o5"]
    );
    assert_eq!(
        q("_sort=-value-quantity"),
        ["o2", "o3", "o1", "o4", "o6", "o5"]
    );
    assert_eq!(q("_sort=code,-date"), ["o5", "o4", "o3", "o2", "o1", "o6"]);
    assert_eq!(q("_sort=-_id&_count=3"), ["o6", "o5", "o4"]);
    assert_eq!(q("_count=3"), ["o1", "o2", "o3"], "default order is by id");
    let query = SearchQuery::parse("code=8867-4&_count=0").expect("query");
    let r = idx.search("Observation", &query).expect("search");
    assert_eq!((r.total, r.ids.len()), (3, 0));
    let pats = index(&patients());
    assert_eq!(ids(&pats, "Patient", "_sort=family"), ["p1", "p3", "p2"]);
    assert_eq!(
        ids(&pats, "Patient", "_sort=-birthdate"),
        ["p3", "p1", "p2"]
    );
}

#[test]
fn errors_are_typed_and_name_the_problem() {
    let idx = index(&observations());
    let e = err(&idx, "Observation", "colour=red");
    assert_eq!(
        e,
        SearchError::UnknownParameter {
            resource_type: "Observation".into(),
            name: "colour".into()
        }
    );
    assert!(e.to_string().contains("colour"));
    assert!(matches!(
        err(&idx, "Observation", "_sort=colour"),
        SearchError::UnknownParameter { .. }
    ));
    assert!(matches!(
        err(&idx, "Obsrvation", "code=1"),
        SearchError::UnknownResourceType { .. }
    ));
    // Unknown type even when the query is empty.
    assert!(matches!(
        idx.search("Nope", &SearchQuery::default()),
        Err(SearchError::UnknownResourceType { .. })
    ));
    for (q, what) in [
        ("date=2021-13", "InvalidValue"),
        ("date=yesterday", "InvalidValue"),
        ("date=ge", "InvalidValue"),
        ("value-quantity=abc", "InvalidValue"),
        ("value-quantity=1|x", "InvalidValue"),
        ("code=a|b|c", "InvalidValue"),
        ("code=|", "InvalidValue"),
        ("code:missing=maybe", "InvalidValue"),
        ("patient=a/b/c", "InvalidValue"),
        ("code:exact=1", "UnsupportedModifier"),
        ("code:below=1", "UnsupportedModifier"),
        ("date:exact=2020", "UnsupportedModifier"),
        ("patient:identifier=x|1", "UnsupportedModifier"),
        ("patient:Nonsense=1", "UnsupportedModifier"),
        ("_id:not=1", "UnsupportedModifier"),
        ("_id:missing=true", "UnsupportedModifier"),
        ("_include=Observation:patient", "UnsupportedParameter"),
        ("patient.name=x", "UnsupportedParameter"),
    ] {
        let e = err(&idx, "Observation", q);
        assert!(format!("{e:?}").starts_with(what), "{q}: {e:?}");
    }
    // Validation does not depend on data being present.
    assert!(matches!(
        err(&SearchIndex::new(), "Condition", "onset-date=bad"),
        SearchError::InvalidValue { .. }
    ));
    assert!(
        err(&SearchIndex::new(), "Condition", "colour=1")
            .to_string()
            .contains("Condition")
    );
}

#[test]
fn upsert_validation_leaves_index_unchanged() {
    let mut idx = index(&observations());
    let bad_date = observation("o9", "1-1", json!("2021-02-30"), Value::Null);
    let e = idx.upsert(&bad_date).expect_err("bad date");
    assert!(
        e.to_string().contains("o9") && e.to_string().contains("date"),
        "{e}"
    );
    assert!(!idx.contains("Observation", "o9"));
    assert!(matches!(
        idx.upsert(&json!({"resourceType": "Spaceship", "id": "x"})),
        Err(SearchError::UnknownResourceType { .. })
    ));
    assert!(idx.upsert(&json!({"resourceType": "Patient"})).is_err());
    assert!(
        idx.upsert(&json!({"resourceType": "Patient", "id": "a b"}))
            .is_err()
    );
    assert!(idx.upsert(&json!({"id": "x"})).is_err());
    assert_eq!(idx.len(), 6);
}

#[test]
fn reindex_remove_and_compaction() {
    let mut idx = index(&observations());
    assert_eq!(idx.len(), 6);
    // Re-index o1 with another code: the old entries no longer match.
    idx.upsert(&observation("o1", "29463-7", json!("2019-01-01"), bpm(1.0)))
        .expect("reindex");
    assert_eq!(idx.len(), 6);
    assert_eq!(set(&idx, "Observation", "code=8867-4"), ["o2", "o3"]);
    assert_eq!(set(&idx, "Observation", "code=29463-7"), ["o1", "o4", "o5"]);
    assert_eq!(
        set(&idx, "Observation", "date=2021-03-04"),
        Vec::<String>::new()
    );
    idx.remove("Observation", "o2");
    idx.remove("Observation", "missing");
    idx.remove("Nope", "o3");
    assert_eq!(idx.len(), 5);
    assert_eq!(set(&idx, "Observation", "code=8867-4"), ["o3"]);
    assert_eq!(
        set(&idx, "Observation", "code:not=8867-4"),
        ["o1", "o4", "o5", "o6"]
    );
    // Many rewrites trigger compaction; results stay right.
    for round in 0..50 {
        for i in 0..20 {
            let when = format!("2020-01-{:02}", i + 1);
            idx.upsert(&observation(
                &format!("n{i}"),
                "1-1",
                json!(when),
                bpm(f64::from(round)),
            ))
            .expect("upsert");
        }
    }
    let t = idx.types.get("Observation").expect("type");
    assert!(t.ids.len() < 200, "compacted: {}", t.ids.len());
    assert_eq!(idx.len(), 25);
    assert_eq!(set(&idx, "Observation", "code=1-1").len(), 20);
    assert_eq!(set(&idx, "Observation", "value-quantity=49").len(), 20);
    assert!(set(&idx, "Observation", "value-quantity=48").is_empty());
    assert_eq!(set(&idx, "Observation", "date=2020-01-05"), ["n4"]);
    assert_eq!(
        ids(&idx, "Observation", "date=2020-01&_sort=-date&_count=2"),
        ["n19", "n18"]
    );
    for id in ["o1", "o3", "o4", "o5", "o6"] {
        idx.remove("Observation", id);
    }
    for i in 0..20 {
        idx.remove("Observation", &format!("n{i}"));
    }
    assert!(idx.is_empty());
    assert!(idx.types.is_empty());
}

#[test]
fn serde_round_trip_and_version_check() {
    let mut idx = index(&observations());
    for p in patients() {
        idx.upsert(&p).expect("patient");
    }
    // Leave unsorted tails and a tombstone in the encoded form.
    idx.remove("Observation", "o3");
    let bytes = postcard::to_allocvec(&idx).expect("encode");
    let back: SearchIndex = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(back.len(), idx.len());
    for (ty, q) in [
        ("Observation", "code=8867-4"),
        ("Observation", "date=ge2021-03&_sort=-date"),
        ("Observation", "date=lt2021-03-06"),
        ("Observation", "value-quantity=gt70"),
        ("Observation", "patient=p1&_sort=value-quantity"),
        ("Patient", "name=escal"),
        ("Patient", "family:exact=Escalante"),
        ("Patient", "birthdate=1985&_sort=-_id"),
    ] {
        assert_eq!(ids(&back, ty, q), ids(&idx, ty, q), "{ty}?{q}");
    }
    // A later upsert into the decoded index works.
    let mut back = back;
    back.upsert(&observation("o3", "8867-4", json!("2021-04"), bpm(99.4)))
        .expect("upsert");
    assert_eq!(set(&back, "Observation", "code=8867-4"), ["o1", "o2", "o3"]);
    // Another format version is refused.
    let mut old = idx.clone();
    old.format_version = FORMAT_VERSION + 1;
    let bytes = postcard::to_allocvec(&old).expect("encode");
    assert!(postcard::from_bytes::<SearchIndex>(&bytes).is_err());
    // A damaged index (an ordinal past the id table) fails to load instead of panicking.
    let mut damaged = serde_json::to_value(&idx).expect("json");
    damaged["types"]["Patient"]["params"]["gender"]["Token"]["codes"]["male\u{1f}"] = json!([7]);
    let e = serde_json::from_value::<SearchIndex>(damaged).expect_err("damaged");
    assert!(e.to_string().contains("damaged search index"), "{e}");
    // serde_json works too (any serde format).
    let text = serde_json::to_string(&idx).expect("json");
    let back: SearchIndex = serde_json::from_str(&text).expect("json decode");
    assert_eq!(ids(&back, "Patient", "name=zoe"), ["p3"]);
}

/// Resources shaped like Synthea's R4 output (references already resolved to Type/id,
/// as the ehi-layer import does).
#[test]
fn realistic_record() {
    let resources = vec![
        json!({"resourceType": "Patient", "id": "cdb486b4", "name": [{"use": "official", "family": "Leuschke194", "given": ["Donnell534"], "prefix": ["Mr."]}],
               "gender": "male", "birthDate": "1961-09-16", "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "cdb486b4"}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "162673000", "display": "General examination of patient (procedure)"}], "text": "General examination of patient (procedure)"}],
               "subject": {"reference": "Patient/cdb486b4", "display": "Mr. Donnell534 Leuschke194"},
               "period": {"start": "2001-12-20T11:52:38.886514+00:00", "end": "2001-12-20T12:07:38.886514+00:00"}}),
        json!({"resourceType": "Condition", "id": "c1",
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]},
               "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "444814009", "display": "Viral sinusitis (disorder)"}], "text": "Viral sinusitis (disorder)"},
               "subject": {"reference": "Patient/cdb486b4"}, "encounter": {"reference": "Encounter/e1"},
               "onsetDateTime": "2001-12-20T11:52:38+00:00", "abatementDateTime": "2002-01-10T11:52:38+00:00", "recordedDate": "2001-12-20T11:52:38+00:00"}),
        json!({"resourceType": "MedicationRequest", "id": "m1", "status": "stopped", "intent": "order",
               "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "834061", "display": "Penicillin V Potassium 250 MG Oral Tablet"}]},
               "subject": {"reference": "Patient/cdb486b4"}, "authoredOn": "2001-12-20T11:52:38+00:00",
               "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}]}),
        json!({"resourceType": "Immunization", "id": "i1", "status": "completed",
               "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140", "display": "Influenza, seasonal, injectable, preservative free"}]},
               "patient": {"reference": "Patient/cdb486b4"}, "occurrenceDateTime": "2012-10-04T11:52:38+00:00", "primarySource": true}),
        json!({"resourceType": "AllergyIntolerance", "id": "a1",
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
               "type": "allergy", "category": ["food"], "criticality": "low",
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91935009", "display": "Allergy to peanuts"}]},
               "patient": {"reference": "Patient/cdb486b4"}, "recordedDate": "1963-01-01T00:00:00+00:00"}),
        json!({"resourceType": "Procedure", "id": "pr1", "status": "completed",
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "430193006", "display": "Medication Reconciliation (procedure)"}]},
               "subject": {"reference": "Patient/cdb486b4"},
               "performedPeriod": {"start": "2001-12-20T11:52:38+00:00", "end": "2001-12-20T12:07:38+00:00"}}),
        json!({"resourceType": "DiagnosticReport", "id": "d1", "status": "final",
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
               "code": {"coding": [{"system": "http://loinc.org", "code": "51990-0", "display": "Basic metabolic panel"}]},
               "subject": {"reference": "Patient/cdb486b4"}, "effectiveDateTime": "2015-06-11T11:52:38+00:00",
               "issued": "2015-06-11T11:52:38.886+00:00", "result": [{"reference": "Observation/ob1"}]}),
        json!({"resourceType": "ExplanationOfBenefit", "id": "eob1", "status": "active",
               "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional"}]},
               "use": "claim", "patient": {"reference": "Patient/cdb486b4"}, "created": "2001-12-20T12:07:38+00:00",
               "billablePeriod": {"start": "2001-12-20T11:52:38+00:00", "end": "2002-12-20T11:52:38+00:00"}}),
    ];
    let idx = index(&resources);
    let one = |ty: &str, q: &str, want: &str| assert_eq!(set(&idx, ty, q), [want], "{ty}?{q}");
    one("Patient", "family=leuschke", "cdb486b4");
    one(
        "Patient",
        "identifier=https://github.com/synthetichealth/synthea|cdb486b4",
        "cdb486b4",
    );
    one("Encounter", "class=AMB", "e1");
    one("Encounter", "type=http://snomed.info/sct|162673000", "e1");
    one("Encounter", "date=2001-12-20", "e1");
    one("Encounter", "patient=cdb486b4", "e1");
    one("Condition", "clinical-status=resolved", "c1");
    one("Condition", "onset-date=2001-12", "c1");
    one("Condition", "abatement-date=gt2002-01-01", "c1");
    one("Condition", "code:text=sinusitis", "c1");
    one("Condition", "encounter=Encounter/e1", "c1");
    one(
        "MedicationRequest",
        "code=http://www.nlm.nih.gov/research/umls/rxnorm|834061",
        "m1",
    );
    one("MedicationRequest", "status=stopped", "m1");
    one("MedicationRequest", "authoredon=le2001-12-31", "m1");
    one("Immunization", "vaccine-code=140", "i1");
    one("Immunization", "date=2012", "i1");
    one("Immunization", "status=completed", "i1");
    one("AllergyIntolerance", "clinical-status=active", "a1");
    one("AllergyIntolerance", "code=91935009&category=food", "a1");
    one("Procedure", "code=430193006", "pr1");
    one("Procedure", "date=2001-12-20", "pr1");
    one("DiagnosticReport", "code=51990-0&category=LAB", "d1");
    one("DiagnosticReport", "date=2015-06", "d1");
    one("DiagnosticReport", "result=Observation/ob1", "d1");
    one("ExplanationOfBenefit", "created=2001", "eob1");
    one("ExplanationOfBenefit", "type=institutional", "eob1");
    one("ExplanationOfBenefit", "patient=Patient/cdb486b4", "eob1");
    assert_eq!(idx.len(), resources.len());
}

#[test]
fn required_parameters_are_supported() {
    let required: &[(&str, &[&str])] = &[
        (
            "Patient",
            &[
                "name",
                "family",
                "given",
                "birthdate",
                "gender",
                "identifier",
            ],
        ),
        (
            "Observation",
            &[
                "code",
                "category",
                "date",
                "status",
                "value-quantity",
                "patient",
                "subject",
            ],
        ),
        (
            "Condition",
            &[
                "code",
                "clinical-status",
                "onset-date",
                "patient",
                "subject",
            ],
        ),
        (
            "MedicationRequest",
            &["code", "status", "authoredon", "patient", "subject"],
        ),
        (
            "Immunization",
            &["vaccine-code", "date", "status", "patient"],
        ),
        (
            "AllergyIntolerance",
            &["code", "clinical-status", "patient"],
        ),
        (
            "Encounter",
            &["date", "type", "class", "patient", "subject"],
        ),
        ("Procedure", &["code", "date", "patient", "subject"]),
        (
            "DiagnosticReport",
            &["code", "category", "date", "patient", "subject"],
        ),
        ("ExplanationOfBenefit", &["created", "type", "patient"]),
    ];
    for (ty, codes) in required {
        for code in codes.iter().chain(&["_id", "_lastUpdated"]) {
            let def = crate::parameter(ty, code).unwrap_or_else(|| panic!("{ty} {code}"));
            assert!(
                def.definition_url.starts_with("http://hl7.org/fhir/"),
                "{def:?}"
            );
        }
    }
    let value_quantity = crate::parameter("Observation", "value-quantity").expect("vq");
    assert_eq!(value_quantity.kind, ParamKind::Quantity);
    assert_eq!(
        value_quantity.expression,
        "(Observation.value as Quantity) | (Observation.value as SampledData)"
    );
    assert_eq!(
        value_quantity.definition_url,
        "http://hl7.org/fhir/SearchParameter/Observation-value-quantity"
    );
    let code = crate::parameter("Observation", "code").expect("code");
    assert_eq!(code.expression, "Observation.code");
    assert_eq!(
        code.definition_url,
        "http://hl7.org/fhir/SearchParameter/clinical-code"
    );
    // Every R4 type has the Resource parameters; non-types have none.
    assert_eq!(crate::resource_types().count(), 146);
    assert!(crate::parameter("Basic", "_lastUpdated").is_some());
    assert!(crate::supported_parameters("Resource").is_none());
}

/// Pins the parameter table: if it changes, bump [`FORMAT_VERSION`] (an index built
/// with the old table would lack the new entries) and update the fingerprint.
#[test]
fn parameter_table_fingerprint() {
    // FNV-1a over every (type, code, kind, expression).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for ty in crate::resource_types() {
        for p in crate::supported_parameters(ty).expect("type") {
            for part in [ty, p.code, p.kind.as_str(), p.expression] {
                for b in part.bytes().chain([0]) {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
    }
    assert_eq!(
        (FORMAT_VERSION, h),
        (1, 11_689_640_598_272_499_117),
        "parameter table changed: bump FORMAT_VERSION and update this fingerprint"
    );
}

#[test]
fn number_precision_ranges() {
    let n = |s: &str| parse_number(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(n("100"), (100.0, 99.5, 100.5));
    assert_eq!(n("100.00"), (100.0, 99.995, 100.005));
    assert_eq!(n("1e2"), (100.0, 95.0, 105.0));
    assert_eq!(n("1.0e2"), (100.0, 99.5, 100.5));
    assert_eq!(n("-5.5"), (-5.5, -5.55, -5.45));
    assert_eq!(n("0.001"), (0.001, 0.0005, 0.0015));
    assert_eq!(n("+7"), (7.0, 6.5, 7.5));
    assert_eq!(n(".5"), (0.5, 0.45, 0.55));
    for bad in [
        "", "-", "1e", "abc", "1.2.3", "e5", "nan", "inf", "1e400", "--1",
    ] {
        assert!(parse_number(bad).is_err(), "{bad}");
    }
}

#[test]
fn tables_are_sorted_for_binary_search() {
    let types: Vec<&str> = crate::resource_types().collect();
    assert!(types.windows(2).all(|w| w[0] < w[1]));
    for ty in types {
        let params = crate::supported_parameters(ty).expect("type");
        assert!(params.windows(2).all(|w| w[0].code < w[1].code), "{ty}");
        for p in params {
            assert_eq!(crate::parameter(ty, p.code), Some(p));
        }
    }
    assert_eq!(SearchIndex::default().len(), 0);
    assert!(SearchIndex::default().is_empty());
}
