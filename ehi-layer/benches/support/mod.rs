//! Helpers shared by the ehi-layer benches: latency arithmetic and seeded synthetic
//! FHIR data.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`th percentile (nearest rank) of `samples`; sorts them.
pub fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let i = ((samples.len() * p).div_ceil(100)).saturating_sub(1);
    samples.get(i).copied().unwrap_or_default()
}

/// `n` resources: one Patient per 100, the rest Observations with seeded codes, dates
/// and values.
pub fn synthetic_bundle_with_prefix(n: usize, seed: u64, prefix: &str) -> Value {
    const CODES: [(&str, &str); 6] = [
        ("8867-4", "Heart rate"),
        ("8302-2", "Body Height"),
        ("29463-7", "Body Weight"),
        ("2339-0", "Glucose"),
        ("8480-6", "Systolic blood pressure"),
        ("39156-5", "Body mass index"),
    ];
    const NAMES: [&str; 8] = [
        "Martinez",
        "Marlowe",
        "Okafor",
        "Lindqvist",
        "Nakamura",
        "Dubois",
        "Marchetti",
        "Kowalski",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut entries = Vec::with_capacity(n);
    let mut patient = String::new();
    for i in 0..n {
        if i % 100 == 0 {
            patient = format!("{prefix}-patient-{i}");
            entries.push(json!({"resource": {
                "resourceType": "Patient", "id": patient,
                "name": [{"family": NAMES[rng.random_range(0..NAMES.len())], "given": ["Alex"]}],
                "birthDate": format!("19{:02}-0{}-1{}", rng.random_range(30..99), rng.random_range(1..9), rng.random_range(0..9)),
            }}));
            continue;
        }
        let (code, display) = CODES[rng.random_range(0..CODES.len())];
        entries.push(json!({"resource": {
            "resourceType": "Observation", "id": format!("{prefix}-obs-{i}"), "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": format!("20{:02}-{:02}-{:02}T{:02}:00:00Z",
                rng.random_range(10..24), rng.random_range(1..13), rng.random_range(1..29), rng.random_range(0..24)),
            "valueQuantity": {"value": rng.random_range(40..200), "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"},
        }}));
    }
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}
