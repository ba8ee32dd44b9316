//! The purpose-of-use vocabulary (HL7 v3 `ActReason` PurposeOfUse codes) that grants,
//! consent requests and audit records name: the codes this layer accepts, their
//! display names, and the check every front end applies to a code it is given.

use crate::error::{EhiError, Result};

/// The HL7 v3 `PurposeOfUse` codes (`http://terminology.hl7.org/CodeSystem/v3-ActReason`)
/// a grant may carry, with their display names.
pub const PURPOSES: &[(&str, &str)] = &[
    ("TREAT", "treatment"),
    ("ETREAT", "emergency treatment"),
    ("CAREMGT", "care management"),
    ("COC", "coordination of care"),
    ("HPAYMT", "healthcare payment"),
    ("HOPERAT", "healthcare operations"),
    ("PATRQT", "patient requested"),
    ("FAMRQT", "family requested"),
    ("PWATRNY", "power of attorney"),
    ("SUPNWK", "support network"),
    ("PUBHLTH", "public health"),
    ("HRESCH", "healthcare research"),
    ("CLINTRL", "clinical trial"),
    ("HDIRECT", "directory"),
    ("HLEGAL", "legal"),
    ("HSYSADMIN", "system administration"),
    ("HMARKT", "marketing"),
    ("TRAIN", "training"),
    ("DONAT", "donation"),
];

/// The code system of [`PURPOSES`].
pub const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Checks a purpose code against [`PURPOSES`] (case-insensitive; returns it upper-case).
pub fn check_purpose(code: &str) -> Result<String> {
    let upper = code.trim().to_ascii_uppercase();
    if PURPOSES.iter().any(|(c, _)| *c == upper) {
        Ok(upper)
    } else {
        let known: Vec<&str> = PURPOSES.iter().map(|(c, _)| *c).collect();
        Err(EhiError::InvalidArgument(format!(
            "purpose {code:?} is not a v3 PurposeOfUse code this layer accepts ({})",
            known.join(", ")
        )))
    }
}
