//! The summary's signature: a detached JWS (Ed25519) over the RFC 8785 canonical form of
//! the Bundle without `Bundle.signature` (why this form, and its limits: the `ips` module
//! docs).

use super::*;
pub use crate::error::SignatureError;

/// The RFC 8785 canonical form of `bundle` without its `signature`: the JWS payload.
pub fn canonical(bundle: &Value) -> std::result::Result<Vec<u8>, SignatureError> {
    let Value::Object(map) = bundle else {
        return Err(SignatureError::Canonical("not a JSON object".into()));
    };
    let mut unsigned = map.clone();
    unsigned.remove("signature");
    serde_jcs::to_vec(&Value::Object(unsigned))
        .map_err(|e| SignatureError::Canonical(e.to_string()))
}

/// Signs `bundle` with `key`: sets `Bundle.signature` (see the module docs), replacing
/// any signature it had. `who` is the document's subject (the Composition's), when
/// there is one.
pub fn sign(
    bundle: &mut Value,
    key: &SigningKey,
    when_ms: u64,
) -> std::result::Result<(), SignatureError> {
    let payload = canonical(bundle)?;
    let public = key.verifying_key();
    let header = json!({
        "alg": "Ed25519",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(public.as_bytes())},
    });
    let header =
        serde_jcs::to_vec(&header).map_err(|e| SignatureError::Canonical(e.to_string()))?;
    let header = URL_SAFE_NO_PAD.encode(header);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&payload));
    let signature = key.sign(input.as_bytes());
    let jws = format!("{header}..{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    let who = bundle["entry"][0]["resource"]["subject"]["reference"]
        .as_str()
        .map(|r| json!({"reference": r}))
        .unwrap_or_else(|| json!({"display": "the patient"}));
    let Value::Object(map) = bundle else {
        return Err(SignatureError::Canonical("not a JSON object".into()));
    };
    map.insert(
        "signature".into(),
        json!({
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1",
                      "display": "Author's Signature"}],
            "when": instant(when_ms),
            "who": who,
            "targetFormat": TARGET_FORMAT,
            "sigFormat": SIG_FORMAT,
            "data": STANDARD.encode(jws.as_bytes()),
        }),
    );
    Ok(())
}

/// The JWS of `Bundle.signature`: (protected header as encoded, its JSON, signature).
fn parse_jws(bundle: &Value) -> std::result::Result<(String, Value, Signature), SignatureError> {
    let signature = bundle.get("signature").ok_or(SignatureError::Missing)?;
    let format = |m: &str| SignatureError::Format(m.to_string());
    if signature["sigFormat"] != SIG_FORMAT {
        return Err(format("sigFormat is not application/jose"));
    }
    let data = signature["data"]
        .as_str()
        .ok_or_else(|| format("no Signature.data"))?;
    let jws = STANDARD
        .decode(data)
        .map_err(|_| format("Signature.data is not base64"))?;
    let jws = String::from_utf8(jws).map_err(|_| format("the JWS is not text"))?;
    let mut parts = jws.split('.');
    let (Some(header), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format("not a compact JWS with a detached payload"));
    };
    let header_json: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| format("the protected header is not base64url JSON"))?;
    if !matches!(header_json["alg"].as_str(), Some("Ed25519" | "EdDSA")) {
        return Err(format("alg is not Ed25519 (or EdDSA)"));
    }
    if header_json.get("crit").is_some() || header_json.get("b64").is_some() {
        return Err(format("unsupported header parameters (crit, b64)"));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| format("the signature is not base64url"))?;
    let sig = Signature::from_slice(&sig).map_err(|_| format("not an Ed25519 signature"))?;
    Ok((header.to_string(), header_json, sig))
}

/// Verifies `Bundle.signature` against `key`: Ok when the Bundle (without its
/// signature) is, in canonical form, exactly what `key` signed.
pub fn verify(bundle: &Value, key: &VerifyingKey) -> std::result::Result<(), SignatureError> {
    let (header, _, signature) = parse_jws(bundle)?;
    let payload = canonical(bundle)?;
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&payload));
    key.verify(input.as_bytes(), &signature)
        .map_err(|_| SignatureError::Mismatch)
}

/// The public key the signature's header names (`jwk`). Says who claims to have
/// signed; [`verify`] with the key you trust says whether they did.
pub fn signer(bundle: &Value) -> std::result::Result<VerifyingKey, SignatureError> {
    let (_, header, _) = parse_jws(bundle)?;
    let format = |m: &str| SignatureError::Format(m.to_string());
    let jwk = &header["jwk"];
    if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
        return Err(format("the header's jwk is not an Ed25519 key"));
    }
    let x = jwk["x"]
        .as_str()
        .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
        .and_then(|x| <[u8; 32]>::try_from(x).ok())
        .ok_or_else(|| format("the header's jwk has no 32-byte x"))?;
    VerifyingKey::from_bytes(&x).map_err(|_| format("the header's jwk is not a valid key"))
}
