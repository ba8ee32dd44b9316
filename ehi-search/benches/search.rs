//! Search bench: builds an index of 100,000 synthetic resources (seeded, generated in
//! code: 10k Patients, 60k Observations, 10k each Conditions and Encounters, 5k each
//! MedicationRequests and Immunizations), then prints p50/p99 latency of a token query,
//! a date-range query, a string query and a sorted, paged patient query, plus the
//! postcard-encoded index size and its decode time (and the same for a 10,000-resource
//! index, the cold-open case). Run: `cargo bench -p ehi-search --bench search`.

use std::time::{Duration, Instant};

use anyhow::Context;
use ehi_search::{SearchIndex, SearchQuery};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const FAMILIES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "García",
    "Miller",
    "Davis",
    "Rodríguez",
    "Martínez",
    "Hernández",
    "López",
    "González",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Pérez",
    "Thompson",
    "White",
    "Harris",
    "Sánchez",
    "Clark",
    "Ramírez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Müller",
    "Schäfer",
    "Øberg",
];
const GIVENS: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "José",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Zoë",
    "Renée",
    "Chloé",
    "André",
    "Miguel Ángel",
    "Søren",
    "Noémie",
];

fn loinc(i: usize) -> String {
    format!("{}-{}", 1000 + i * 37, i % 10)
}

fn day(rng: &mut StdRng) -> (i32, u32, u32) {
    (
        rng.random_range(2000..2025),
        rng.random_range(1..=12),
        rng.random_range(1..=28),
    )
}

fn generate(n_patients: usize, scale: usize, rng: &mut StdRng) -> Vec<Value> {
    let mut out = Vec::new();
    for p in 0..n_patients {
        let (y, m, d) = (
            rng.random_range(1930..2020),
            rng.random_range(1..=12),
            rng.random_range(1..=28),
        );
        out.push(json!({
            "resourceType": "Patient", "id": format!("pat-{p}"),
            "meta": {"lastUpdated": "2024-06-01T00:00:00Z"},
            "identifier": [{"system": "http://hospital.example.org/mrn", "value": format!("MRN{p:07}")}],
            "name": [{"use": "official",
                      "family": FAMILIES[rng.random_range(0..FAMILIES.len())],
                      "given": [GIVENS[rng.random_range(0..GIVENS.len())]]}],
            "gender": (["male", "female", "other", "unknown"][rng.random_range(0..4)]),
            "birthDate": format!("{y}-{m:02}-{d:02}"),
            "address": [{"line": [format!("{} Main St", p % 997)], "city": "Springfield", "state": "MA"}]
        }));
    }
    let patient = |rng: &mut StdRng| format!("Patient/pat-{}", rng.random_range(0..n_patients));
    for i in 0..6 * scale {
        let (y, m, d) = day(rng);
        let code = rng.random_range(0..40);
        out.push(json!({
            "resourceType": "Observation", "id": format!("obs-{i}"),
            "meta": {"lastUpdated": format!("{y}-{m:02}-{d:02}T12:00:00Z")},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": if code < 20 { "vital-signs" } else { "laboratory" }}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc(code), "display": format!("Measurement number {code}")}]},
            "subject": {"reference": patient(rng)},
            "effectiveDateTime": format!("{y}-{m:02}-{d:02}T{:02}:{:02}:00+00:00", rng.random_range(0..24), rng.random_range(0..60)),
            "valueQuantity": {"value": rng.random_range(0..20000) as f64 / 100.0, "unit": "mg/dL",
                              "system": "http://unitsofmeasure.org", "code": "mg/dL"}
        }));
    }
    for i in 0..scale {
        let (y, m, d) = day(rng);
        out.push(json!({
            "resourceType": "Condition", "id": format!("cond-{i}"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": if i % 3 == 0 { "active" } else { "resolved" }}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": format!("{}", 40000 + i % 300)}]},
            "subject": {"reference": patient(rng)},
            "onsetDateTime": format!("{y}-{m:02}-{d:02}")
        }));
        out.push(json!({
            "resourceType": "Encounter", "id": format!("enc-{i}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": (["AMB", "EMER", "IMP"][i % 3])},
            "type": [{"coding": [{"system": "http://snomed.info/sct", "code": format!("{}", 185000 + i % 20)}]}],
            "subject": {"reference": patient(rng)},
            "period": {"start": format!("{y}-{m:02}-{d:02}T09:00:00Z"), "end": format!("{y}-{m:02}-{d:02}T10:00:00Z")}
        }));
    }
    for i in 0..scale / 2 {
        let (y, m, d) = day(rng);
        out.push(json!({
            "resourceType": "MedicationRequest", "id": format!("med-{i}"), "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": format!("{}", 300000 + i % 100)}]},
            "subject": {"reference": patient(rng)}, "authoredOn": format!("{y}-{m:02}-{d:02}")
        }));
        out.push(json!({
            "resourceType": "Immunization", "id": format!("imm-{i}"), "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": format!("{}", 100 + i % 30)}]},
            "patient": {"reference": patient(rng)}, "occurrenceDateTime": format!("{y}-{m:02}-{d:02}")
        }));
    }
    out
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn run(
    index: &SearchIndex,
    label: &str,
    ty: &str,
    rng: &mut StdRng,
    make: impl Fn(&mut StdRng) -> String,
) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    let mut matched = 0usize;
    for _ in 0..1000 {
        let q = make(rng);
        let start = Instant::now();
        let query = SearchQuery::parse(&q)?;
        let result = index.search(ty, &query).with_context(|| q.clone())?;
        samples.push(start.elapsed());
        matched += result.total;
    }
    let p50 = percentile(&mut samples, 0.5);
    let p99 = percentile(&mut samples, 0.99);
    println!(
        "{label:<48} p50 {:>8.3} ms  p99 {:>8.3} ms  (avg {} matches)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        matched / 1000
    );
    Ok(())
}

fn build(resources: &[Value]) -> anyhow::Result<(SearchIndex, Duration)> {
    let start = Instant::now();
    let mut index = SearchIndex::new();
    for r in resources {
        index.upsert(r)?;
    }
    Ok((index, start.elapsed()))
}

fn codec(index: &SearchIndex, label: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let bytes = postcard::to_allocvec(index)?;
    let encode = start.elapsed();
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let back: SearchIndex = postcard::from_bytes(&bytes)?;
        best = best.min(start.elapsed());
        anyhow::ensure!(back.len() == index.len());
    }
    println!(
        "{label:<48} {:>7.2} MiB ({:.0} B/resource), encode {:.1} ms, decode {:.1} ms",
        bytes.len() as f64 / (1 << 20) as f64,
        bytes.len() as f64 / index.len() as f64,
        encode.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(42);
    let resources = generate(10_000, 10_000, &mut rng);
    let (index, took) = build(&resources)?;
    println!(
        "built index of {} resources in {:.2} s",
        index.len(),
        took.as_secs_f64()
    );
    drop(resources);

    run(
        &index,
        "token  Observation?code=http://loinc.org|…",
        "Observation",
        &mut rng,
        |r| format!("code=http://loinc.org|{}", loinc(r.random_range(0..40))),
    )?;
    run(
        &index,
        "date   Observation?date=ge…&date=lt… (1 month)",
        "Observation",
        &mut rng,
        |r| {
            let (y, m) = (r.random_range(2000..2025), r.random_range(1..=11));
            format!("date=ge{y}-{m:02}&date=lt{y}-{:02}", m + 1)
        },
    )?;
    run(
        &index,
        "string Patient?name=<3-letter prefix>",
        "Patient",
        &mut rng,
        |r| {
            let family = FAMILIES[r.random_range(0..FAMILIES.len())];
            format!("name={}", family.chars().take(3).collect::<String>())
        },
    )?;
    run(
        &index,
        "token+date Observation?code&date=ge…&_count=20",
        "Observation",
        &mut rng,
        |r| {
            format!(
                "code={}&date=ge{}-01-01&_count=20",
                loinc(r.random_range(0..40)),
                r.random_range(2000..2025)
            )
        },
    )?;
    run(
        &index,
        "sorted Observation?patient=…&_sort=-date&_count=10",
        "Observation",
        &mut rng,
        |r| {
            format!(
                "patient=pat-{}&_sort=-date&_count=10",
                r.random_range(0..10_000)
            )
        },
    )?;
    run(
        &index,
        "sorted Observation?category=vital-signs&_sort=-date&_count=10",
        "Observation",
        &mut rng,
        |_| "category=vital-signs&_sort=-date&_count=10".to_string(),
    )?;

    codec(&index, "postcard, 100,000 resources")?;
    let mut rng = StdRng::seed_from_u64(7);
    let small = generate(1_000, 1_000, &mut rng);
    let (small_index, took) = build(&small)?;
    println!(
        "built index of {} resources in {:.0} ms",
        small_index.len(),
        took.as_secs_f64() * 1e3
    );
    codec(&small_index, "postcard, 10,000 resources")?;
    Ok(())
}
