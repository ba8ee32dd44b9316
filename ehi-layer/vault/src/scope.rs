//! Scopes: the groups of resources that share a key, a manifest and a slot, and the
//! documented resourceType → scope table.
//!
//! | scope | resource types (FHIR R4) |
//! |---|---|
//! | `demographics` | Patient, RelatedPerson, Person, Practitioner, PractitionerRole, Organization, OrganizationAffiliation, Location, HealthcareService, Endpoint, Group |
//! | `clinical` | Encounter, EpisodeOfCare, Condition, Observation, Procedure, DiagnosticReport, ImagingStudy, Media, Specimen, BodyStructure, MolecularSequence, CarePlan, CareTeam, Goal, ServiceRequest, NutritionOrder, VisionPrescription, Device, DeviceRequest, DeviceUseStatement, DeviceMetric, ClinicalImpression, DetectedIssue, FamilyMemberHistory, RiskAssessment, AdverseEvent, Flag, Appointment, AppointmentResponse, Schedule, Slot, Task, Communication, CommunicationRequest, QuestionnaireResponse, SupplyDelivery, SupplyRequest, List, **and every type not listed elsewhere** |
//! | `medications` | Medication, MedicationRequest, MedicationAdministration, MedicationDispense, MedicationStatement, MedicationKnowledge |
//! | `immunizations` | Immunization, ImmunizationEvaluation, ImmunizationRecommendation |
//! | `allergies` | AllergyIntolerance |
//! | `documents` | DocumentReference, DocumentManifest, Composition, Binary, Provenance, Consent, AuditEvent |
//! | `financial` | Claim, ClaimResponse, ExplanationOfBenefit, Coverage, CoverageEligibilityRequest, CoverageEligibilityResponse, Account, ChargeItem, Invoice, PaymentNotice, PaymentReconciliation, EnrollmentRequest, EnrollmentResponse, InsurancePlan, Contract |
//! | `sensitive` | no type by default; see below |
//!
//! A resource goes to `sensitive` instead when, the first time it is stored, its
//! `meta.security` carries a confidentiality code `R` or `V`
//! (`http://terminology.hl7.org/CodeSystem/v3-Confidentiality`) or one of the
//! sensitivity codes ETH, GDIS, HIV, MST, PSY, SCA, SDV, SEX, STD, SUD, BH, PSYTHPN
//! (`http://terminology.hl7.org/CodeSystem/v3-ActCode`). The patient may override the
//! table per type ([`crate::Vault::set_scope_override`]) while no resource of that type
//! is stored. **A resource never changes scope once stored**: moving history between
//! keys needs re-encryption, which is left to the future rotation tooling; a later
//! version that gains a sensitivity label is reported in the import's notes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A scope: a set of resources under one key (with epochs), one manifest, one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Who the patient is and who cares for them.
    Demographics,
    /// Encounters, conditions, observations, procedures, plans — the default.
    Clinical,
    /// Medications and their orders, dispenses, administrations, statements.
    Medications,
    /// Immunizations.
    Immunizations,
    /// Allergies and intolerances.
    Allergies,
    /// Documents, binaries, compositions, provenance, consents.
    Documents,
    /// Claims, explanations of benefit, coverage, billing.
    Financial,
    /// Resources labelled sensitive, and types the patient moves here.
    Sensitive,
}

impl Scope {
    /// Every scope, in a fixed order.
    pub const ALL: [Scope; 8] = [
        Scope::Demographics,
        Scope::Clinical,
        Scope::Medications,
        Scope::Immunizations,
        Scope::Allergies,
        Scope::Documents,
        Scope::Financial,
        Scope::Sensitive,
    ];

    /// The scope's name (also its AEAD context string).
    pub fn name(self) -> &'static str {
        match self {
            Scope::Demographics => "demographics",
            Scope::Clinical => "clinical",
            Scope::Medications => "medications",
            Scope::Immunizations => "immunizations",
            Scope::Allergies => "allergies",
            Scope::Documents => "documents",
            Scope::Financial => "financial",
            Scope::Sensitive => "sensitive",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

/// The default table (types not listed go to [`Scope::Clinical`]).
pub const DEFAULT_TABLE: &[(&str, Scope)] = &[
    ("Patient", Scope::Demographics),
    ("RelatedPerson", Scope::Demographics),
    ("Person", Scope::Demographics),
    ("Practitioner", Scope::Demographics),
    ("PractitionerRole", Scope::Demographics),
    ("Organization", Scope::Demographics),
    ("OrganizationAffiliation", Scope::Demographics),
    ("Location", Scope::Demographics),
    ("HealthcareService", Scope::Demographics),
    ("Endpoint", Scope::Demographics),
    ("Group", Scope::Demographics),
    ("Medication", Scope::Medications),
    ("MedicationRequest", Scope::Medications),
    ("MedicationAdministration", Scope::Medications),
    ("MedicationDispense", Scope::Medications),
    ("MedicationStatement", Scope::Medications),
    ("MedicationKnowledge", Scope::Medications),
    ("Immunization", Scope::Immunizations),
    ("ImmunizationEvaluation", Scope::Immunizations),
    ("ImmunizationRecommendation", Scope::Immunizations),
    ("AllergyIntolerance", Scope::Allergies),
    ("DocumentReference", Scope::Documents),
    ("DocumentManifest", Scope::Documents),
    ("Composition", Scope::Documents),
    ("Binary", Scope::Documents),
    ("Provenance", Scope::Documents),
    ("Consent", Scope::Documents),
    ("AuditEvent", Scope::Documents),
    ("Claim", Scope::Financial),
    ("ClaimResponse", Scope::Financial),
    ("ExplanationOfBenefit", Scope::Financial),
    ("Coverage", Scope::Financial),
    ("CoverageEligibilityRequest", Scope::Financial),
    ("CoverageEligibilityResponse", Scope::Financial),
    ("Account", Scope::Financial),
    ("ChargeItem", Scope::Financial),
    ("Invoice", Scope::Financial),
    ("PaymentNotice", Scope::Financial),
    ("PaymentReconciliation", Scope::Financial),
    ("EnrollmentRequest", Scope::Financial),
    ("EnrollmentResponse", Scope::Financial),
    ("InsurancePlan", Scope::Financial),
    ("Contract", Scope::Financial),
];

/// The default scope of `resource_type`.
pub fn default_scope(resource_type: &str) -> Scope {
    DEFAULT_TABLE
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, s)| *s)
        .unwrap_or(Scope::Clinical)
}

const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const SENSITIVE_ACT_CODES: &[&str] = &[
    "ETH", "GDIS", "HIV", "MST", "PSY", "SCA", "SDV", "SEX", "STD", "SUD", "BH", "PSYTHPN",
];

/// Whether `resource` carries a sensitivity label in `meta.security`.
pub fn is_labelled_sensitive(resource: &serde_json::Value) -> bool {
    let Some(labels) = resource
        .get("meta")
        .and_then(|m| m.get("security"))
        .and_then(|s| s.as_array())
    else {
        return false;
    };
    labels.iter().any(|label| {
        let system = label.get("system").and_then(|s| s.as_str()).unwrap_or("");
        let code = label.get("code").and_then(|c| c.as_str()).unwrap_or("");
        (system == CONFIDENTIALITY && matches!(code, "R" | "V"))
            || (system == ACT_CODE && SENSITIVE_ACT_CODES.contains(&code))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_names() {
        assert_eq!(default_scope("Patient"), Scope::Demographics);
        assert_eq!(default_scope("Observation"), Scope::Clinical);
        assert_eq!(default_scope("SomethingNew"), Scope::Clinical);
        assert_eq!(default_scope("ExplanationOfBenefit"), Scope::Financial);
        for scope in Scope::ALL {
            assert_eq!(scope.name().parse::<Scope>(), Ok(scope));
        }
        assert!("nope".parse::<Scope>().is_err());
        // No type is listed twice.
        let mut types: Vec<&str> = DEFAULT_TABLE.iter().map(|(t, _)| *t).collect();
        types.sort_unstable();
        let before = types.len();
        types.dedup();
        assert_eq!(before, types.len());
    }

    #[test]
    fn sensitivity_labels() {
        let plain = serde_json::json!({"resourceType": "Condition"});
        assert!(!is_labelled_sensitive(&plain));
        let labelled = serde_json::json!({"resourceType": "Condition", "meta": {"security": [
            {"system": ACT_CODE, "code": "PSY"}]}});
        assert!(is_labelled_sensitive(&labelled));
        let restricted = serde_json::json!({"meta": {"security": [
            {"system": CONFIDENTIALITY, "code": "R"}]}});
        assert!(is_labelled_sensitive(&restricted));
        let normal = serde_json::json!({"meta": {"security": [
            {"system": CONFIDENTIALITY, "code": "N"}]}});
        assert!(!is_labelled_sensitive(&normal));
    }
}
