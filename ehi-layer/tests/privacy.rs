//! "Storage learns nothing": after importing a hand-written patient (and, when the
//! `synthea` command is installed, a generated one), every file under every server's
//! data directory — blobs, slot records, broker registrations, distributor pins — is
//! scanned for every name, identifier, code, date, id, resource type and text of the
//! input (strings of at least 6 characters): there must be no hit.

mod common;

use std::collections::HashSet;

use common::{TestNet, input, needles, patient_bundle};
use ehi_layer::Input;
use serde_json::Value;

/// Needles are cut to this many bytes (a leaked long string leaks its prefix too).
const MAX_NEEDLE: usize = 48;
const MIN_NEEDLE: usize = 6;

/// Finds needles inside `data`: every run of printable ASCII is checked for every
/// needle-sized substring.
struct Scanner {
    needles: HashSet<Vec<u8>>,
    lengths: Vec<usize>,
}

impl Scanner {
    fn new(strings: &[String]) -> Scanner {
        let needles: HashSet<Vec<u8>> = strings
            .iter()
            .filter(|s| s.is_ascii())
            .map(|s| s.as_bytes()[..s.len().min(MAX_NEEDLE)].to_vec())
            .collect();
        let mut lengths: Vec<usize> = needles.iter().map(Vec::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        Scanner { needles, lengths }
    }

    fn hits(&self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for run in data.split(|b| !(0x20..0x7f).contains(b)) {
            if run.len() < MIN_NEEDLE {
                continue;
            }
            for start in 0..run.len() {
                for &len in &self.lengths {
                    let Some(window) = run.get(start..start + len) else {
                        break;
                    };
                    if self.needles.contains(window) {
                        out.push(String::from_utf8_lossy(window).into_owned());
                    }
                }
            }
        }
        out
    }
}

#[test]
fn the_scanner_finds_what_is_there() {
    let scanner = Scanner::new(&["Quixotebaum".to_string(), "8302-2".to_string()]);
    assert_eq!(
        scanner.hits(b"\x00\x01xxQuixotebaumyy\xff"),
        ["Quixotebaum"]
    );
    assert_eq!(scanner.hits(b"code 8302-2;"), ["8302-2"]);
    assert!(scanner.hits(b"Quixoteba\x00um 8302-").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_learns_nothing() -> anyhow::Result<()> {
    let net = TestNet::start(3, true).await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, _path, vault) = net.new_vault(&dir.path().join("device")).await?;

    let mut documents: Vec<Value> = vec![patient_bundle()];
    let mut inputs = vec![input("patient.json", &patient_bundle())];
    let generated = dir.path().join("synthea");
    if let Some(files) = common::synthea(1, 7, &generated)? {
        for file in files {
            let bytes = std::fs::read(&file)?;
            documents.push(serde_json::from_slice(&bytes)?);
            inputs.push(Input::from_bytes(file.display().to_string(), bytes));
        }
    }
    let report = vault.import(inputs).await?;
    assert!(report.created >= 10, "{report:?}");
    // Searches and reads do not write plaintext anywhere either.
    vault.search("Observation", "code=8302-2").await?;
    ehi_layer::export::bundle(&vault, true).await?;

    let mut strings = Vec::new();
    for document in &documents {
        strings.extend(needles(document, MIN_NEEDLE));
    }
    strings.sort();
    strings.dedup();
    for expected in [
        "Quixotebaum",
        "Zelphina",
        "MRN-77120934",
        "999-41-8823",
        "8302-2",
        "44054006",
        "1961-08-29",
        "2019-03-14T09:31:07-04:00",
        "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b",
        "Observation",
        "Patient",
        "Wintergreen Hollow",
    ] {
        assert!(
            strings.iter().any(|s| s.contains(expected)),
            "{expected} is not among the needles"
        );
    }
    let scanner = Scanner::new(&strings);
    eprintln!("{} needles", scanner.needles.len());

    // Let the distributor copy blocks around first, so its copies are scanned too.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let files = net.data_files();
    let mut scanned = 0u64;
    let mut leaks = Vec::new();
    for (server, path) in &files {
        let data = std::fs::read(path)?;
        scanned += data.len() as u64;
        for hit in scanner.hits(&data) {
            leaks.push(format!("{server}: {} contains {hit:?}", path.display()));
        }
    }
    eprintln!("scanned {} files, {scanned} bytes", files.len());
    assert!(net.blob_files().len() > 10, "the blobs were scanned");
    assert!(
        leaks.is_empty(),
        "plaintext reached the servers:\n{}",
        leaks.join("\n")
    );
    net.stop().await;
    Ok(())
}
