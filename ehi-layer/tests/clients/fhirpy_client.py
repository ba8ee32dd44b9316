"""`ehi serve` driven by the third-party Python FHIR client fhirpy, with every returned
resource validated by fhir.resources (R4B models).

Usage: fhirpy_client.py BASE TOKEN PATIENT_ID CODE EXPECTED_MATCHES
Prints one JSON line with what it saw; exits non-zero on any failure.
Run by ehi-layer/tests/serve_clients.rs (pip install fhirpy==2.3.1 fhir.resources==8.3.0).
"""

import json
import sys

from fhir.resources.R4B import get_fhir_model_class
from fhirpy import SyncFHIRClient


def validate(resource):
    data = resource.serialize() if hasattr(resource, "serialize") else dict(resource)
    get_fhir_model_class(data["resourceType"]).model_validate(data)


def main():
    base, token, patient_id, code, expected = sys.argv[1:6]
    expected = int(expected)
    client = SyncFHIRClient(base, authorization=f"Bearer {token}")

    # Search, following the server's `next` links to the end.
    found = client.resources("Observation").search(code=code).limit(7).fetch_all()
    ids = [o.id for o in found]
    assert len(ids) == expected, (len(ids), expected)
    assert len(set(ids)) == len(ids), "an id was returned twice"
    for o in found:
        validate(o)

    # `.count()` sends `_count=0&_totalMethod=count` (a parameter of another server):
    # strict handling refuses it, `Prefer: handling=lenient` ignores it.
    try:
        client.resources("Observation").search(code=code).count()
        raise AssertionError("strict handling accepted _totalMethod")
    except Exception as e:  # fhirpy raises OperationOutcome on the 400
        assert "_totalMethod" in str(e), e
    lenient = SyncFHIRClient(
        base,
        authorization=f"Bearer {token}",
        extra_headers={"Prefer": "handling=lenient"},
    )
    counted = lenient.resources("Observation").search(code=code).count()
    assert counted == expected, (counted, expected)

    patient = client.reference("Patient", patient_id).to_resource()
    validate(patient)
    everything = client.execute(f"Patient/{patient_id}/$everything", method="get")
    for entry in everything["entry"]:
        validate(entry["resource"])

    # Create, then update.
    new = client.resource(
        "Observation",
        status="preliminary",
        code={"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        subject={"reference": f"Patient/{patient_id}"},
        effectiveDateTime="2024-03-03T10:00:00Z",
    )
    new.save()
    assert new.id, "no id after create"
    new["status"] = "final"
    new.save()
    again = client.reference("Observation", new.id).to_resource()
    assert again["status"] == "final"
    assert again["meta"]["versionId"] == "2", again["meta"]
    validate(again)

    print(json.dumps({"matches": len(ids), "counted": counted, "everything": len(everything["entry"]), "created": new.id}))


if __name__ == "__main__":
    main()
