//! The slots protocol (`/slots/`): mutable, optionally signed pointers to addresses.
//!
//! A slot is identified by a 32-byte [`Id`](crate::Id) and holds an address. Routes (see the brief
//! and `spec/slots-ed25519.md`):
//!
//! | route | body → answer |
//! |---|---|
//! | `PUT /slots/register` | [`RegisterRequest`] → `true`; 409 id taken, 403 bad claim, 400 invalid |
//! | `GET /slots/:id` | → [`SlotState`]; 404 unknown |
//! | `PUT /slots/:id` | [`UpdateRequest`] → `true`; 409 stale `previous`, 403 bad or missing signature, 404 unknown, 400 malformed |
//! | `GET /slots/config/:id` | → [`SlotConfig`] (also served as `/slots/configuration/:id`) |
//! | `GET /slots/history/:id` | → states, newest first, down to the registration |
//! | `GET /slots/watch/:id` | → the current state at once, then every accepted state |
//!
//! History and watch answers are newline-delimited JSON (`application/x-ndjson`), one
//! [`SlotState`] per line; readers here also accept JSON values written back to back
//! (the reference implementation's form).
//!
//! Updates are authorised by the slot's [`SignatureConfig`]:
//! - `none`: anyone who knows the current address may update.
//! - `sha256:rsa`: RSASSA-PKCS1-v1_5 with SHA-256 over [`rsa_message`], with the PEM
//!   public key given at registration (the reference implementation's scheme).
//! - `ed25519`: the slot id is the ed25519 public key; the signature covers
//!   [`ed25519_message`], which binds slot id, previous and new address.
//!
//! An `ed25519` registration may carry a **claim** ([`RegisterRequest::claim`]): the
//! key's signature of the registration state itself (previous `"root"`, the first
//! address). It proves the registrant holds the key, so a claimed registration
//! replaces an unsigned or `sha256:rsa` slot that someone else registered under the
//! key first (`spec/slots.md`, "Claiming an ed25519 id"). [`SlotSigner::register_request`]
//! always adds one for its own key.
//!
//! Signatures travel as lowercase hex (as the reference emits); base64 is accepted too.
//! [`SlotSigner`] signs updates so callers never build messages by hand, and
//! [`SlotVerifier`] checks them (the server uses it; a client can re-check a history).
//!
//! The module is split into the wire forms (`wire`), signing and verification (`sign`)
//! and the client (`client`); everything is re-exported here.

mod client;
mod sign;
mod wire;

pub use client::{Rejection, SlotsClient, StateStream};
pub use sign::{SignatureConfigError, SignatureError, SlotSigner, SlotVerifier};
pub use wire::{
    ED25519_DOMAIN, ED25519_MESSAGE_LEN, MAX_SIGNATURE_TEXT, Previous, ProofConfig, ROOT,
    RegisterRequest, SignatureConfig, SlotConfig, SlotState, UpdateRequest, decode_signature,
    ed25519_message, encode_signature, rsa_message,
};

#[cfg(test)]
mod tests;
