//! Tests of the slots protocol types: the published ed25519 and RSA test vectors,
//! signing and verification, claims, the JSON forms, signature decoding, the splitter of
//! history and watch bodies, and the classification of refusals.

use base64::Engine as _;

use super::client::split_values;
use super::*;
use crate::{ClientError, Id};

// The published ed25519 test vector (spec/slots-ed25519.md).
const VECTOR_SEED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const VECTOR_SLOT: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
/// SHA-256 of `invariant slot test vector: previous`.
const VECTOR_PREVIOUS: &str = "cbac9ff9e8d2725e8b5d9c5f41f1be5dbcef5c77ea304e664c1a466a13172a93";
/// SHA-256 of `invariant slot test vector: address`.
const VECTOR_ADDRESS: &str = "1129d47f4dad17768f57b5c14309beb99059d4a216b1a58945e0681624b86635";
const VECTOR_MESSAGE: &str = concat!(
    "696e76617269616e742d736c6f742d7570646174652d763100",
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
    "01",
    "cbac9ff9e8d2725e8b5d9c5f41f1be5dbcef5c77ea304e664c1a466a13172a93",
    "1129d47f4dad17768f57b5c14309beb99059d4a216b1a58945e0681624b86635",
);
const VECTOR_SIGNATURE: &str = concat!(
    "861217d7b032018306de074ce87c165c5451f06a848109610b8b57ade28614be",
    "43fa49842bda2cc92164c1291339b9ccd0b95dcfe16f7e33d7adaae566a2650e",
);
const VECTOR_ROOT_MESSAGE: &str = concat!(
    "696e76617269616e742d736c6f742d7570646174652d763100",
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
    "00",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "1129d47f4dad17768f57b5c14309beb99059d4a216b1a58945e0681624b86635",
);
const VECTOR_ROOT_SIGNATURE: &str = concat!(
    "984b753b5b48214d307375c0d1623f9d43cfb310a25f8eadd8579d8905127976",
    "9a6bae7098e2f3dc312057c0ac8b08bcecc2e51f61672bd312a5895dd4cf350f",
);

fn id(hex: &str) -> Id {
    Id::parse(hex).expect("test id")
}

fn seed() -> [u8; 32] {
    let bytes = hex::decode(VECTOR_SEED).expect("seed hex");
    bytes.try_into().expect("32-byte seed")
}

#[test]
fn ed25519_test_vector() {
    let signer = SlotSigner::ed25519_from_seed(&seed());
    let slot = signer.ed25519_slot().expect("ed25519 slot");
    assert_eq!(slot, id(VECTOR_SLOT));
    assert_eq!(
        Id::of_content(b"invariant slot test vector: previous"),
        id(VECTOR_PREVIOUS)
    );
    assert_eq!(
        Id::of_content(b"invariant slot test vector: address"),
        id(VECTOR_ADDRESS)
    );
    let previous = Previous::Address(id(VECTOR_PREVIOUS));
    let address = id(VECTOR_ADDRESS);
    let message = ed25519_message(&slot, &previous, &address);
    assert_eq!(hex::encode(message), VECTOR_MESSAGE);
    let signature = signer.sign(&slot, &previous, &address).expect("sign");
    assert_eq!(signature, VECTOR_SIGNATURE);
    let root_message = ed25519_message(&slot, &Previous::Root, &address);
    assert_eq!(hex::encode(root_message), VECTOR_ROOT_MESSAGE);
    let root_signature = signer.sign(&slot, &Previous::Root, &address).expect("sign");
    assert_eq!(root_signature, VECTOR_ROOT_SIGNATURE);

    let verifier = SlotVerifier::new(slot, &SignatureConfig::Ed25519).expect("verifier");
    let bytes = verifier
        .verify(&previous, &address, Some(VECTOR_SIGNATURE))
        .expect("vector verifies");
    assert_eq!(bytes.map(hex::encode).as_deref(), Some(VECTOR_SIGNATURE));
}

#[test]
fn claims_sign_the_registration_state_and_only_ed25519_has_them() {
    let signer = SlotSigner::ed25519_from_seed(&seed());
    let slot = signer.ed25519_slot().expect("ed25519 slot");
    let address = id(VECTOR_ADDRESS);
    // The claim is the vector's root signature: the registration state's signature.
    assert_eq!(
        signer.claim(&address).as_deref(),
        Some(VECTOR_ROOT_SIGNATURE)
    );
    let request = signer.register_request(slot, address);
    assert_eq!(request.claim.as_deref(), Some(VECTOR_ROOT_SIGNATURE));
    let json = serde_json::to_value(&request).expect("serialize");
    assert_eq!(json["claim"], VECTOR_ROOT_SIGNATURE);
    assert_eq!(json["signature"]["kind"], "ed25519");

    let verifier = SlotVerifier::new(slot, &SignatureConfig::Ed25519).expect("verifier");
    let bytes = verifier
        .verify_claim(&address, VECTOR_ROOT_SIGNATURE)
        .expect("claim verifies");
    assert_eq!(hex::encode(bytes), VECTOR_ROOT_SIGNATURE);
    // A claim is for one first address; an update signature is not a claim.
    assert!(matches!(
        verifier.verify_claim(&id(VECTOR_PREVIOUS), VECTOR_ROOT_SIGNATURE),
        Err(SignatureError::Invalid)
    ));
    assert!(matches!(
        verifier.verify_claim(&address, VECTOR_SIGNATURE),
        Err(SignatureError::Invalid)
    ));
    let stranger = SlotSigner::ed25519_from_seed(&[9; 32]);
    let foreign = stranger.claim(&address).expect("ed25519 claim");
    assert!(matches!(
        verifier.verify_claim(&address, &foreign),
        Err(SignatureError::Invalid)
    ));
    // Registering another id with this key sends no claim (it could not verify).
    let other = Id::random();
    assert_eq!(signer.register_request(other, address).claim, None);
    // Unsigned and RSA slots have no claims.
    let none = SlotVerifier::new(slot, &SignatureConfig::None).expect("none");
    assert!(matches!(
        none.verify_claim(&address, VECTOR_ROOT_SIGNATURE),
        Err(SignatureError::ClaimUnsupported)
    ));
    let rsa = SlotSigner::rsa_from_pem(TEST_RSA_PRIVATE).expect("rsa signer");
    assert_eq!(rsa.claim(&address), None);
    assert_eq!(rsa.register_request(other, address).claim, None);
    // A request without a claim serializes as before.
    let plain = serde_json::to_value(RegisterRequest::unsigned(other, address)).expect("serialize");
    assert!(plain.get("claim").is_none(), "{plain}");
}

/// A 1024-bit RSA key made for these tests only (small, so tests stay fast).
const TEST_RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIICXQIBAAKBgQDmQ3UW3DfPERbaftVQO+jDsWb10QEwBYABt9KzdzocdyUTSwbr\n5jKwcLAs0X3cBe/UqyhKA1K5UIhLbafz+tEduunmdcBPM8ArPEuV5PWE64WBiBb3\nTAZjJBA0Oh1v+Fjq/OegKPbW0uOaUW6UEW1pFIvGEn1fw5jH6pdPuiZ6+QIDAQAB\nAoGAGxeuzCzHCD8LgFPSB2m1HmleIugfiqXrBMi7KtCJbtX578YxH0prhmUL5YoU\nk/HC4TPuPp8beaBnGPDjBQrq1ap2oQWSEIXnT0NfQa9l+iKVGdaaOe4yeldz304y\nXQia8fAe5WXZwvGT8uxm8NmeOW0jOtY1Dt6wYLs3dXd0/LECQQD/T1TZMTvGnanR\nSk2sV6ErTX88nfCB7osxNA5Z6S61Fp1tdRDXA3892Tv8v8AuHU4QfSxQR/8afbvl\nN2p6O+u9AkEA5uLLXyukCytMPkSswpq3z0AP+5fRW48cX/IiSbj6apnU4OyVVm1b\nQYw6Q8F6MrClz2oQzAF8BnQ01iApzx+B7QJBAPNgopew0TTS0zFJzaV+m4r2A1a7\nkKurxFCROSUInpfOCSBwui7djIxe60pTWFYdZW9eg8G8ADk2psko/H2tZVkCQB9K\niWmCjp785T5jLE7LjTHHauMcNkGEacIPHNqE+VtNMe6x4aNu+rktehAIvrjz++Ta\naSBc6yQsx6Rlg4UQrhkCQQCHdFjOyNVFvUNPpv+nbVD99AfsLz10ykZT5oBdKEtv\nkAhVsVM2oW+TLTDLJ4/TElA2LCK4DK+67Lw4djyuVspY\n-----END RSA PRIVATE KEY-----";
const TEST_RSA_PUBLIC_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----\nMIGJAoGBAOZDdRbcN88RFtp+1VA76MOxZvXRATAFgAG30rN3Ohx3JRNLBuvmMrBw\nsCzRfdwF79SrKEoDUrlQiEttp/P60R266eZ1wE8zwCs8S5Xk9YTrhYGIFvdMBmMk\nEDQ6HW/4WOr856Ao9tbS45pRbpQRbWkUi8YSfV/DmMfql0+6Jnr5AgMBAAE=\n-----END RSA PUBLIC KEY-----";
const TEST_RSA_PUBLIC_SPKI: &str = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDmQ3UW3DfPERbaftVQO+jDsWb1\n0QEwBYABt9KzdzocdyUTSwbr5jKwcLAs0X3cBe/UqyhKA1K5UIhLbafz+tEduunm\ndcBPM8ArPEuV5PWE64WBiBb3TAZjJBA0Oh1v+Fjq/OegKPbW0uOaUW6UEW1pFIvG\nEn1fw5jH6pdPuiZ6+QIDAQAB\n-----END PUBLIC KEY-----";
/// PKCS#1 v1.5 / SHA-256 signatures by `TEST_RSA_PRIVATE` of `rsa_message` for the
/// vector's address, with the vector's previous and with root, made with an
/// independent implementation (Python `cryptography`).
const RSA_VECTOR_SIGNATURE: &str = concat!(
    "a7ac21e7160c09f44fbade10153c895b5393f85a1cea212c666d2e5ef2fcb1ad",
    "e297b2c55cfe6b0ad184a0da653abe8d76fb686a5862e5f0cad8ef840c55e857",
    "5b78c3f65c41a5c064278cd65d485a9fc8f307931b7d5ecfdfb8a528309da69d",
    "a2d7f959ed7bbaa602d68510142379044b97ff586d2f6341b2517b2ffeaf02bc",
);
const RSA_VECTOR_ROOT_SIGNATURE: &str = concat!(
    "7122a878af9ef6ae9b52d9320c98484e5d4b7ec3b05f68ab65da220865545cdc",
    "e8f9e9b191f7b6ec29626545646aad38cb59bac3771ede7c8111f0f074d1862b",
    "85f58807325db533cb239bb0d65019d5767246df428193e28e0edda3f87f239f",
    "7e984b6b88e6dab69431c054d37357ee45ba7332cf229366118526beb39d2b36",
);

#[test]
fn ed25519_message_layout() {
    let slot = Id::of_content(b"slot");
    let previous = Id::of_content(b"previous");
    let address = Id::of_content(b"address");
    let message = ed25519_message(&slot, &Previous::Address(previous), &address);
    assert_eq!(message.len(), 122);
    assert_eq!(&message[..25], ED25519_DOMAIN);
    assert_eq!(&message[25..57], slot.as_bytes());
    assert_eq!(message[57], 1);
    assert_eq!(&message[58..90], previous.as_bytes());
    assert_eq!(&message[90..], address.as_bytes());
    let root = ed25519_message(&slot, &Previous::Root, &address);
    assert_eq!(root[57], 0);
    assert!(root[58..90].iter().all(|b| *b == 0));
    // The all-zero address is distinguishable from root by the tag.
    let zero = ed25519_message(&slot, &Previous::Address(Id::from_bytes([0; 32])), &address);
    assert_ne!(zero, root);
}

#[test]
fn rsa_message_is_the_reference_form() {
    let address = id(VECTOR_ADDRESS);
    let previous = id(VECTOR_PREVIOUS);
    assert_eq!(
        rsa_message(&address, &Previous::Address(previous)),
        format!("{VECTOR_ADDRESS}0000{VECTOR_PREVIOUS}").into_bytes()
    );
    assert_eq!(
        rsa_message(&address, &Previous::Root),
        format!("{VECTOR_ADDRESS}0000").into_bytes()
    );
}

#[test]
fn rsa_signatures_match_an_independent_implementation() {
    let signer = SlotSigner::rsa_from_pem(TEST_RSA_PRIVATE).expect("test key");
    let address = id(VECTOR_ADDRESS);
    let previous = Previous::Address(id(VECTOR_PREVIOUS));
    // PKCS#1 v1.5 signatures are deterministic: ours equal the independent ones.
    assert_eq!(
        signer
            .sign(&id(VECTOR_SLOT), &previous, &address)
            .expect("sign"),
        RSA_VECTOR_SIGNATURE
    );
    assert_eq!(
        signer
            .sign(&id(VECTOR_SLOT), &Previous::Root, &address)
            .expect("sign"),
        RSA_VECTOR_ROOT_SIGNATURE
    );
    for key in [TEST_RSA_PUBLIC_PKCS1, TEST_RSA_PUBLIC_SPKI] {
        let config = SignatureConfig::Sha256Rsa { key: key.into() };
        let verifier = SlotVerifier::new(Id::random(), &config).expect("public key parses");
        assert!(verifier.requires_signature());
        let bytes = verifier
            .verify(&previous, &address, Some(RSA_VECTOR_SIGNATURE))
            .expect("verifies")
            .expect("signed slot returns the signature");
        // The same signature in base64 is accepted too.
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        verifier
            .verify(&previous, &address, Some(&b64))
            .expect("base64 form verifies");
        // Wrong previous, wrong address, missing signature: refused.
        assert!(matches!(
            verifier.verify(&Previous::Root, &address, Some(RSA_VECTOR_SIGNATURE)),
            Err(SignatureError::Invalid)
        ));
        assert!(matches!(
            verifier.verify(&previous, &Id::of_content(b"x"), Some(RSA_VECTOR_SIGNATURE)),
            Err(SignatureError::Invalid)
        ));
        assert!(matches!(
            verifier.verify(&previous, &address, None),
            Err(SignatureError::Missing)
        ));
    }
    // The signer registers with its SPKI public key, which verifies its signatures.
    let config = signer.signature_config();
    let verifier = SlotVerifier::new(Id::random(), &config).expect("own key parses");
    verifier
        .verify(&previous, &address, Some(RSA_VECTOR_SIGNATURE))
        .expect("verifies with the exported key");
}

#[test]
fn every_altered_ed25519_byte_is_refused() {
    let signer = SlotSigner::ed25519_from_seed(&seed());
    let slot = signer.ed25519_slot().expect("slot");
    let verifier = SlotVerifier::new(slot, &signer.signature_config()).expect("verifier");
    let previous = Id::of_content(b"p");
    let address = Id::of_content(b"a");
    let request = signer
        .update_request(&slot, &previous, &address)
        .expect("sign");
    let signature = request.signature.clone().expect("signed");
    verifier
        .verify(&request.previous, &address, Some(&signature))
        .expect("genuine signature verifies");
    let sig_bytes = hex::decode(&signature).expect("hex");
    for i in 0..sig_bytes.len() {
        let mut altered = sig_bytes.clone();
        altered[i] ^= 0x01;
        assert!(
            verifier
                .verify(&request.previous, &address, Some(&hex::encode(&altered)))
                .is_err(),
            "altered signature byte {i} accepted"
        );
    }
    for i in 0..32 {
        let mut bytes = *address.as_bytes();
        bytes[i] ^= 0x80;
        assert!(
            verifier
                .verify(&request.previous, &Id::from_bytes(bytes), Some(&signature))
                .is_err()
        );
        let mut bytes = *previous.as_bytes();
        bytes[i] ^= 0x80;
        assert!(
            verifier
                .verify(
                    &Previous::Address(Id::from_bytes(bytes)),
                    &address,
                    Some(&signature)
                )
                .is_err()
        );
    }
    // Another slot's key cannot sign for this slot.
    let other = SlotSigner::ed25519_from_seed(&[9; 32]);
    let forged = other
        .sign(&slot, &request.previous, &address)
        .expect("sign");
    assert!(matches!(
        verifier.verify(&request.previous, &address, Some(&forged)),
        Err(SignatureError::Invalid)
    ));
    assert!(matches!(
        verifier.verify(&request.previous, &address, Some("zz")),
        Err(SignatureError::Encoding)
    ));
    assert!(matches!(
        verifier.verify(&request.previous, &address, Some("abcd")),
        Err(SignatureError::Encoding)
    ));
}

#[test]
fn invalid_configurations_are_refused() {
    // Not a point on the curve (y = 2 has no x), and a small-order (weak) point.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    let weak = Id::from_bytes({
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    });
    for slot in [Id::from_bytes(not_a_point), weak] {
        assert!(matches!(
            SlotVerifier::new(slot, &SignatureConfig::Ed25519),
            Err(SignatureConfigError::NotEd25519Key(_))
        ));
    }
    let bad_key = SignatureConfig::Sha256Rsa {
        key: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
    };
    assert!(matches!(
        SlotVerifier::new(Id::random(), &bad_key),
        Err(SignatureConfigError::InvalidRsaKey(_))
    ));
    let none = SlotVerifier::new(Id::random(), &SignatureConfig::None).expect("none");
    assert!(!none.requires_signature());
    assert_eq!(
        none.verify(&Previous::Root, &Id::random(), Some("ignored"))
            .expect("none accepts"),
        None
    );
}

#[test]
fn wire_forms() {
    let a = Id::of_content(b"a");
    let state = SlotState {
        address: a,
        previous: Previous::Root,
        time: Some(5),
        signature: None,
        proof: None,
    };
    let json = serde_json::to_string(&state).expect("serialize");
    assert_eq!(
        json,
        format!(r#"{{"address":"{a}","previous":"root","time":5}}"#)
    );
    assert_eq!(
        serde_json::from_str::<SlotState>(&json).expect("parse"),
        state
    );
    // The reference's registration state has no time.
    let bare: SlotState =
        serde_json::from_str(&format!(r#"{{"address":"{a}","previous":"{a}"}}"#)).expect("no time");
    assert_eq!(bare.previous, Previous::Address(a));
    assert!(serde_json::from_str::<SlotState>(r#"{"address":"x","previous":"root"}"#).is_err());

    let config = SlotConfig::default();
    assert_eq!(
        serde_json::to_string(&config).expect("serialize"),
        r#"{"signature":{"kind":"none"},"proof":"none"}"#
    );
    let rsa: SignatureConfig =
        serde_json::from_str(r#"{"kind":"sha256:rsa","key":"PEM"}"#).expect("rsa");
    assert_eq!(rsa, SignatureConfig::Sha256Rsa { key: "PEM".into() });
    assert_eq!(
        serde_json::from_str::<SignatureConfig>(r#"{"kind":"ed25519"}"#).expect("ed"),
        SignatureConfig::Ed25519
    );
    assert!(serde_json::from_str::<SignatureConfig>(r#"{"kind":"dsa"}"#).is_err());

    let register: RegisterRequest = serde_json::from_str(&format!(
        r#"{{"id":"{a}","address":"{a}","proof":{{"kind":"none"}},"time":1}}"#
    ))
    .expect("register");
    assert_eq!(register.signature, None);
    assert_eq!(register.proof, Some(ProofConfig::None));
    assert!(
        serde_json::from_str::<RegisterRequest>(&format!(
            r#"{{"id":"{a}","address":"{a}","proof":"proof-of-work:4"}}"#
        ))
        .is_err()
    );
    assert_eq!(
        serde_json::to_string(&RegisterRequest::unsigned(a, a)).expect("serialize"),
        format!(r#"{{"id":"{a}","address":"{a}"}}"#)
    );
}

#[test]
fn signatures_decode_from_hex_and_base64() {
    let bytes: Vec<u8> = (0u8..64).collect();
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    for text in [
        hex::encode(&bytes),
        hex::encode_upper(&bytes),
        STANDARD.encode(&bytes),
        URL_SAFE_NO_PAD.encode(&bytes),
    ] {
        assert_eq!(
            decode_signature(&text).as_deref(),
            Some(bytes.as_slice()),
            "{text}"
        );
    }
    assert_eq!(decode_signature(""), None);
    assert_eq!(decode_signature("not a signature!"), None);
    assert_eq!(decode_signature(&"a".repeat(MAX_SIGNATURE_TEXT + 2)), None);
}

#[test]
fn value_splitter_accepts_ndjson_and_back_to_back_values() {
    let mut buffer = b"{\"a\":1}\n{\"a\":2}{\"a\":3} \n {\"a\":".to_vec();
    let values = split_values(&mut buffer).expect("split");
    assert_eq!(values.len(), 3);
    assert_eq!(values[2], b"{\"a\":3}".to_vec());
    assert_eq!(buffer, b" \n {\"a\":".to_vec());
    buffer.extend_from_slice(b"4}\n");
    let values = split_values(&mut buffer).expect("split");
    assert_eq!(values.len(), 1);
    assert!(buffer.iter().all(u8::is_ascii_whitespace));
    let mut bad = b"{\"a\":1} ]".to_vec();
    assert!(split_values(&mut bad).is_err());
}

#[test]
fn rejections_are_classified() {
    let status = |status| ClientError::Status {
        url: "u".into(),
        status,
        reason: String::new(),
    };
    assert_eq!(Rejection::of(&status(409)), Some(Rejection::Conflict));
    assert_eq!(Rejection::of(&status(403)), Some(Rejection::Forbidden));
    assert_eq!(Rejection::of(&status(404)), Some(Rejection::NotFound));
    assert_eq!(Rejection::of(&status(400)), Some(Rejection::Invalid));
    assert_eq!(Rejection::of(&status(500)), None);
}
