"""Verifies a patient summary's Bundle.signature with libraries independent of the
ehi-layer: the detached JWS in Signature.data checked by joserfc against the RFC 8785
canonical form of the Bundle without its signature, made by the rfc8785 package.

Usage: verify_jws.py BUNDLE.json PUBLIC_KEY_HEX
The key is the one the caller trusts (not the one the JWS header names). Prints one
JSON line ({"alg": ..., "payload_bytes": n}); exits non-zero when it does not verify.
Run by ehi-layer/tests/summary.rs (pip install joserfc==1.6.5 rfc8785==0.1.4).
"""

import base64
import json
import sys
import warnings

import rfc8785
from joserfc import jws
from joserfc.jwk import OKPKey


def main():
    path = sys.argv[1]
    x = base64.urlsafe_b64encode(bytes.fromhex(sys.argv[2])).rstrip(b"=").decode("ascii")
    with open(path, encoding="utf-8") as f:
        bundle = json.load(f)
    signature = bundle.pop("signature")
    assert signature["sigFormat"] == "application/jose", signature["sigFormat"]
    token = base64.b64decode(signature["data"]).decode("ascii")
    header_part, payload_part, _ = token.split(".")
    assert payload_part == "", "the payload is not detached"
    header = json.loads(base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4)))
    key = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": x})
    registry = jws.JWSRegistry(algorithms=[header["alg"]])
    registry.max_payload_length = 1 << 30
    payload = rfc8785.dumps(bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jws.deserialize_compact(token, key, payload=payload, registry=registry)
    print(json.dumps({"alg": header["alg"], "payload_bytes": len(payload)}))


if __name__ == "__main__":
    main()
