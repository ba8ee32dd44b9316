//! Every check cites a rule of `spec/*.md` by anchor; this test keeps the citations
//! valid (the anchor exists in the document).

use std::path::PathBuf;

use invariant_conformance::{Role, checks};

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec")
}

#[test]
fn every_cited_anchor_exists() {
    let mut missing = Vec::new();
    for role in Role::ALL {
        for (id, spec, _) in checks(role) {
            let Some((file, anchor)) = spec.strip_prefix("spec/").and_then(|s| s.split_once('#'))
            else {
                missing.push(format!("{id}: malformed citation {spec}"));
                continue;
            };
            let text = std::fs::read_to_string(spec_dir().join(file))
                .unwrap_or_else(|e| panic!("{id} cites {file}, which cannot be read: {e}"));
            if !text.contains(&format!("<a id=\"{anchor}\"></a>")) {
                missing.push(format!("{id}: no anchor {anchor} in {file}"));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn every_role_has_a_document_and_an_openapi_file() {
    for role in Role::ALL {
        let doc = spec_dir().join(format!("{}.md", role.name()));
        assert!(doc.is_file(), "missing {}", doc.display());
        let api = spec_dir().join(format!("openapi/{}.yaml", role.name()));
        assert!(api.is_file(), "missing {}", api.display());
    }
}
