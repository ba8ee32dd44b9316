//! FHIR ids and literal references: whether a string is a valid id, and the type and id
//! a reference (`Type/id`, `Type/id/_history/v`, or an absolute url ending so) points
//! at. Shared by the extraction of index entries, FHIRPath type filters and query
//! parsing.

/// Whether reference `r` is an absolute url.
pub(crate) fn is_absolute(r: &str) -> bool {
    r.contains("://")
}

/// Whether `s` is a valid FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub(crate) fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Splits a literal reference (`Type/id`, `Type/id/_history/v`, or an absolute url
/// ending so) into `(Type, id)`.
pub(crate) fn split_reference(r: &str) -> Option<(&str, &str)> {
    if r.starts_with("urn:") || r.starts_with('#') {
        return None;
    }
    let mut segs: Vec<&str> = r.rsplitn(5, '/').collect();
    // segs is reversed: [last, …]
    if segs.len() >= 4 && segs[1] == "_history" {
        segs.drain(..2);
    }
    let (id, ty) = (*segs.first()?, *segs.get(1)?);
    let type_ok = ty.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
        && ty.bytes().all(|b| b.is_ascii_alphanumeric());
    let prefix_ok = segs.len() == 2 || is_absolute(r);
    (type_ok && prefix_ok && is_fhir_id(id)).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_forms() {
        assert_eq!(split_reference("Patient/123"), Some(("Patient", "123")));
        assert_eq!(
            split_reference("Patient/123/_history/2"),
            Some(("Patient", "123"))
        );
        assert_eq!(
            split_reference("https://ehr.example/fhir/R4/Patient/a.b-1"),
            Some(("Patient", "a.b-1"))
        );
        assert_eq!(
            split_reference("https://ehr.example/fhir/Patient/9/_history/1"),
            Some(("Patient", "9"))
        );
        assert_eq!(split_reference("urn:uuid:1234"), None);
        assert_eq!(split_reference("#contained"), None);
        assert_eq!(split_reference("123"), None);
        assert_eq!(split_reference("patient/123"), None);
        assert_eq!(split_reference("x/Patient/123"), None);
    }
}
