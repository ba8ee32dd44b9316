"""Validates a FHIR Bundle file with the fhir.resources R4B models: the Bundle as a
whole, then every entry's resource with the model of its own type.

Usage: validate_r4b.py BUNDLE.json
Prints one JSON line ({"entries": n, "types": {type: count}}); exits non-zero, with
every error on stderr, when anything does not validate.
Run by ehi-layer/tests/summary.rs (pip install fhir.resources==8.3.0).
"""

import json
import sys

from fhir.resources.R4B import get_fhir_model_class


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        bundle = json.load(f)
    errors = []
    try:
        get_fhir_model_class("Bundle").model_validate(bundle)
    except Exception as e:  # pydantic's ValidationError, or an unknown type
        errors.append(f"Bundle: {e}")
    types = {}
    entries = bundle.get("entry", [])
    for i, entry in enumerate(entries):
        resource = entry.get("resource", {})
        kind = resource.get("resourceType")
        types[kind] = types.get(kind, 0) + 1
        try:
            get_fhir_model_class(kind).model_validate(resource)
        except Exception as e:
            errors.append(f"entry {i} ({kind}/{resource.get('id')}): {e}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"entries": len(entries), "types": types}))


if __name__ == "__main__":
    main()
