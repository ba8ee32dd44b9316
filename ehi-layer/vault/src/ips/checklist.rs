//! The IPS checklist: what keeps a Bundle from being a summary as the `ips` module
//! writes it (the rules are listed in the module docs).

use super::*;

/// What keeps `bundle` from being an IPS document as this module writes it (see the
/// module docs); empty when nothing does.
pub fn check(bundle: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |m: String| problems.push(m);
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "document" {
        fail("not a Bundle of type document".into());
    }
    if bundle["identifier"]["value"].as_str().is_none() {
        fail("Bundle.identifier is missing".into());
    }
    if bundle["timestamp"].as_str().is_none() {
        fail("Bundle.timestamp is missing".into());
    }
    let entries: &[Value] = bundle["entry"].as_array().map_or(&[], Vec::as_slice);

    // fullUrls.
    let mut full_urls: HashMap<&str, &Value> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        match entry["fullUrl"].as_str() {
            None => fail(format!("entry {i} has no fullUrl")),
            Some(url) => {
                if full_urls.insert(url, &entry["resource"]).is_some() {
                    fail(format!("fullUrl {url} appears twice"));
                }
            }
        }
    }
    // Resolution: absolute references must be a fullUrl; relative ones resolve against
    // the base of the referring entry's fullUrl.
    let resolve = |from: &str, reference: &str| -> Option<&Value> {
        if let Some(r) = full_urls.get(reference) {
            return Some(*r);
        }
        let (t, id) = relative(reference)?;
        let base = from.rsplitn(3, '/').nth(2)?;
        full_urls.get(format!("{base}/{t}/{id}").as_str()).copied()
    };
    for entry in entries {
        let from = entry["fullUrl"].as_str().unwrap_or("");
        walk_references(&entry["resource"], &mut |reference| {
            if !reference.starts_with('#') && resolve(from, reference).is_none() {
                fail(format!(
                    "{from}: reference {reference} does not resolve in the Bundle"
                ));
            }
        });
    }

    // The Composition.
    let Some(first) = entries.first() else {
        fail("the Bundle has no entries".into());
        return problems;
    };
    let composition = &first["resource"];
    let from = first["fullUrl"].as_str().unwrap_or("");
    if composition["resourceType"] != "Composition" {
        fail("the first entry is not a Composition".into());
        return problems;
    }
    if !codes(&composition["type"]).any(|(s, c)| s == LOINC && c == IPS_TYPE) {
        fail("Composition.type is not LOINC 60591-5".into());
    }
    for element in ["status", "date", "title"] {
        if composition[element].as_str().is_none() {
            fail(format!("Composition.{element} is missing"));
        }
    }
    if composition["author"].as_array().is_none_or(Vec::is_empty) {
        fail("Composition.author is missing".into());
    }
    let patients: Vec<&Value> = entries
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Patient")
        .collect();
    if patients.len() != 1 {
        fail(format!(
            "{} Patients in the Bundle, not one",
            patients.len()
        ));
    }
    let subject = composition["subject"]["reference"]
        .as_str()
        .and_then(|r| resolve(from, r));
    match subject {
        Some(s) if s["resourceType"] == "Patient" => {}
        _ => fail("Composition.subject is not the Bundle's Patient".into()),
    }

    // Sections.
    let sections: &[Value] = composition["section"].as_array().map_or(&[], Vec::as_slice);
    for def in SECTIONS.iter().filter(|d| d.required) {
        if !sections
            .iter()
            .any(|s| codes(&s["code"]).any(|(sys, c)| sys == LOINC && c == def.code))
        {
            fail(format!(
                "the required section {} ({}) is missing",
                def.title, def.code
            ));
        }
    }
    let mut seen_codes = BTreeSet::new();
    for section in sections {
        let name = section["title"].as_str().unwrap_or("(untitled)");
        match codes(&section["code"]).next() {
            Some((LOINC, code)) => {
                if !seen_codes.insert(code) {
                    fail(format!("section {code} appears twice"));
                }
            }
            _ => fail(format!("section {name} has no LOINC code")),
        }
        let text = &section["text"];
        if text["status"] != "generated"
            || !text["div"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("<div xmlns=\"{XHTML}\"")))
        {
            fail(format!("section {name} has no generated XHTML narrative"));
        }
        let refs: &[Value] = section["entry"].as_array().map_or(&[], Vec::as_slice);
        let empty = section.get("emptyReason").is_some();
        if refs.is_empty() && !empty {
            fail(format!(
                "section {name} has neither entries nor an emptyReason"
            ));
        }
        if !refs.is_empty() && empty {
            fail(format!("section {name} has entries and an emptyReason"));
        }
        for r in refs {
            let included = r["reference"].as_str().and_then(|r| resolve(from, r));
            if included.is_none() {
                fail(format!("section {name}: entry {r} is not in the Bundle"));
            }
        }
    }
    problems
}
