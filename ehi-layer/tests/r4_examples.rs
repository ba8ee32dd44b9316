//! The structure validator against every example resource of the FHIR R4 specification
//! (npm package `hl7.fhir.r4.examples` 4.0.1, unpacked by `cargo xtask test` and named by
//! `EHI_R4_EXAMPLES_DIR`): 5,306 resources of every type. All are accepted except the
//! few examples that really break an R4 rule, each listed below with the rule, so the
//! validator neither refuses valid FHIR nor misses these errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// Examples that break R4 rules (file → the violations, as `path: rule` prefixes).
const KNOWN_INVALID: &[(&str, &[&str])] = &[
    // ImplementationGuide.name and .status are required (1..1).
    ("ImplementationGuide-fhir.json", IG),
    ("ig-r4.json", IG),
    // Questionnaire.item.linkId is required (1..1), also on nested items.
    ("Questionnaire-qs1.json", &["Questionnaire.item[0].item["]),
    // An id longer than 64 characters (and no base).
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        &["SearchParameter.id: ", BASE],
    ),
    // SearchParameter.base is required (1..*).
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        &[BASE],
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        &[BASE],
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        &[BASE],
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        &[BASE],
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        &[BASE],
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        &[BASE],
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        &[BASE],
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        &[BASE],
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        &[BASE],
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        &[BASE],
    ),
];
const IG: &[&str] = &[
    "ImplementationGuide.name: required element is missing",
    "ImplementationGuide.status: required element is missing",
];
const BASE: &str = "SearchParameter.base: required element is missing";

#[test]
fn every_r4_example_is_accepted_unless_it_breaks_a_rule() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os("EHI_R4_EXAMPLES_DIR").map(PathBuf::from) else {
        invariant_test_support::missing_tool(
            "the FHIR R4 examples (EHI_R4_EXAMPLES_DIR)",
            "npm pack hl7.fhir.r4.examples@4.0.1",
        );
        return Ok(());
    };
    let mut checked = 0usize;
    let mut invalid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for path in names {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(value) = serde_json::from_slice::<Value>(&std::fs::read(&path)?) else {
            continue;
        };
        if value.get("resourceType").is_none() {
            continue; // package.json, .index.json
        }
        checked += 1;
        let violations = ehi_layer::validate::validate(&value);
        if !violations.is_empty() {
            invalid.insert(name, violations.iter().map(ToString::to_string).collect());
        }
    }
    assert!(
        checked > 5_000,
        "only {checked} examples in {}",
        dir.display()
    );
    for (name, violations) in &invalid {
        let known = KNOWN_INVALID
            .iter()
            .find(|(file, _)| name == file)
            .map(|(_, rules)| *rules);
        let Some(rules) = known else {
            panic!("{name} is refused, but it is valid R4: {violations:#?}");
        };
        for v in violations {
            assert!(
                rules.iter().any(|r| v.starts_with(r)),
                "{name}: unexpected violation {v}"
            );
        }
    }
    eprintln!(
        "{checked} R4 examples checked; {} refused: {:?}",
        invalid.len(),
        invalid.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        invalid.len(),
        KNOWN_INVALID.len(),
        "every known invalid example is refused: {:#?}",
        invalid.keys()
    );
    Ok(())
}
