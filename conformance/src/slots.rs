//! Slots checks (`spec/slots.md`): registration, compare-and-swap updates (also under a
//! concurrent race), signatures, configuration, history order and watch streams.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use invariant_spec::Id;
use invariant_spec::slots::{SignatureConfig, SlotSigner, SlotVerifier};
use reqwest::Method;
use serde_json::{Value, json};

use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Resp, Verdict, Warnings, ensure, fail, lowercase_id,
    malformed_answer, random_id, rejected_answer, upper,
};
use crate::profile::Profile;

const DOC: &str = "slots.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "slots-register",
        doc: DOC,
        anchor: "slots-register",
        title: "PUT /slots/register creates a slot and answers true",
        profile: Profile::Core,
        run: register,
    },
    CheckDef {
        id: "slots-register-taken",
        doc: DOC,
        anchor: "slots-register-taken",
        title: "registering an existing id is refused (409 preferred) and changes nothing",
        profile: Profile::Core,
        run: register_taken,
    },
    CheckDef {
        id: "slots-register-malformed",
        doc: DOC,
        anchor: "slots-register",
        title: "a malformed registration is 400",
        profile: Profile::Core,
        run: register_malformed,
    },
    CheckDef {
        id: "slots-oversize",
        doc: "common.md",
        anchor: "common-bodies",
        title: "a very large JSON body is refused with 413 or handled, never a 5xx",
        profile: Profile::Core,
        run: oversize,
    },
    CheckDef {
        id: "slots-get",
        doc: DOC,
        anchor: "slots-get",
        title: "GET /slots/:id answers the state; a new slot's previous is \"root\"",
        profile: Profile::Core,
        run: get,
    },
    CheckDef {
        id: "slots-get-unknown",
        doc: DOC,
        anchor: "slots-get",
        title: "GET of an unknown slot is 404",
        profile: Profile::Core,
        run: get_unknown,
    },
    CheckDef {
        id: "slots-update",
        doc: DOC,
        anchor: "slots-update",
        title: "PUT /slots/:id with the current previous succeeds",
        profile: Profile::Core,
        run: update,
    },
    CheckDef {
        id: "slots-update-stale",
        doc: DOC,
        anchor: "slots-update-stale",
        title: "an update with a stale previous is 409 and changes nothing",
        profile: Profile::Core,
        run: update_stale,
    },
    CheckDef {
        id: "slots-update-unknown",
        doc: DOC,
        anchor: "slots-update",
        title: "updating an unknown slot is 404",
        profile: Profile::Core,
        run: update_unknown,
    },
    CheckDef {
        id: "slots-update-malformed",
        doc: DOC,
        anchor: "slots-update",
        title: "a malformed update is 400 and changes nothing",
        profile: Profile::Core,
        run: update_malformed,
    },
    CheckDef {
        id: "slots-cas-race",
        doc: DOC,
        anchor: "slots-linearizable",
        title: "of concurrent updates with the same previous exactly one wins",
        profile: Profile::Core,
        run: cas_race,
    },
    CheckDef {
        id: "slots-config",
        doc: DOC,
        anchor: "slots-config",
        title: "GET /slots/config/:id answers the signature configuration",
        profile: Profile::Full,
        run: config,
    },
    CheckDef {
        id: "slots-history",
        doc: DOC,
        anchor: "slots-history",
        title: "history lists every state newest first down to the registration",
        profile: Profile::Core,
        run: history,
    },
    CheckDef {
        id: "slots-stream-format",
        doc: DOC,
        anchor: "slots-streams",
        title: "history and watch are newline-delimited JSON",
        profile: Profile::Core,
        run: stream_format,
    },
    CheckDef {
        id: "slots-watch",
        doc: DOC,
        anchor: "slots-watch",
        title: "watch sends the current state at once, then a later update",
        profile: Profile::Core,
        run: watch,
    },
    CheckDef {
        id: "slots-ed25519",
        doc: DOC,
        anchor: "slots-ed25519",
        title: "ed25519 slots accept good signatures and refuse bad ones with 403",
        profile: Profile::Full,
        run: ed25519,
    },
    CheckDef {
        id: "slots-ed25519-not-a-key",
        doc: DOC,
        anchor: "slots-ed25519",
        title: "an ed25519 registration whose id is not a usable key is 400",
        profile: Profile::Full,
        run: ed25519_not_a_key,
    },
    CheckDef {
        id: "slots-malformed-id",
        doc: "common.md",
        anchor: "common-malformed-id",
        title: "a malformed slot id in the path is a client error (400 preferred)",
        profile: Profile::Core,
        run: malformed_id,
    },
    CheckDef {
        id: "slots-id-case",
        doc: "common.md",
        anchor: "common-id-case",
        title: "slot ids are accepted in upper case and emitted in lower case",
        profile: Profile::Full,
        run: id_case,
    },
    CheckDef {
        id: "slots-trailing-slash",
        doc: "common.md",
        anchor: "common-trailing-slash",
        title: "routes answer with and without a trailing slash",
        profile: Profile::Core,
        run: trailing_slash,
    },
];

/// Registers an unsigned slot at a random address; returns (slot, address).
async fn new_slot(c: &Ctx) -> Result<(Id, Id), Fail> {
    let (id, address) = (random_id(), random_id());
    let resp = c
        .json(
            Method::PUT,
            "/slots/register/",
            &json!({"id": id, "address": address}),
        )
        .await?;
    resp.expect(200, "PUT /slots/register/")?;
    Ok((id, address))
}

async fn update_to(c: &Ctx, slot: &Id, previous: &Id, address: &Id) -> Result<Resp, Fail> {
    c.json(
        Method::PUT,
        &format!("/slots/{slot}"),
        &json!({"address": address, "previous": previous}),
    )
    .await
}

/// The current state's address, checked to be lowercase hex.
async fn current(c: &Ctx, slot: &Id) -> Result<Value, Fail> {
    let resp = c.get(&format!("/slots/{slot}")).await?;
    resp.expect(200, "GET /slots/:id")?;
    resp.json()
}

fn field_id(state: &Value, field: &str) -> Result<Id, Fail> {
    match state.get(field).and_then(Value::as_str) {
        Some(text) => lowercase_id(text, field),
        None => fail!("state {state} has no string field {field:?}"),
    }
}

fn register(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, address) = (random_id(), random_id());
        let resp = c
            .json(
                Method::PUT,
                "/slots/register/",
                &json!({"id": id, "address": address, "signature": {"kind": "none"}}),
            )
            .await?;
        resp.expect(200, "PUT /slots/register/")?;
        let body: Value = resp.json()?;
        ensure!(body == Value::Bool(true), "answer must be true, got {body}");
        let state = current(c, &id).await?;
        ensure!(
            field_id(&state, "address")? == address,
            "the new slot does not hold its registered address: {state}"
        );
        Ok(Outcome::Pass)
    })
}

fn register_taken(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, address) = new_slot(c).await?;
        let resp = c
            .json(
                Method::PUT,
                "/slots/register/",
                &json!({"id": id, "address": random_id()}),
            )
            .await?;
        let outcome = match resp.status {
            409 => Outcome::Pass,
            200 => {
                let body: Value = resp.json()?;
                ensure!(
                    body == Value::Bool(false),
                    "re-registering an existing id answered 200 {body}"
                );
                Outcome::Warn("200 false for a taken id (409 is preferred)".into())
            }
            s if (400..500).contains(&s) => {
                Outcome::Warn(format!("{s} for a taken id (409 is preferred)"))
            }
            _ => fail!(
                "re-registering an existing id: expected 409, got {}",
                resp.describe()
            ),
        };
        let state = current(c, &id).await?;
        ensure!(
            field_id(&state, "address")? == address,
            "a refused registration changed the slot: {state}"
        );
        Ok(outcome)
    })
}

fn register_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let bodies = [
            ("broken JSON", "{\"id\":".to_string()),
            ("no address", json!({"id": random_id()}).to_string()),
            (
                "a bad id",
                json!({"id": "xyz", "address": random_id()}).to_string(),
            ),
            (
                "an unknown signature kind",
                json!({"id": random_id(), "address": random_id(), "signature": {"kind": "nope"}})
                    .to_string(),
            ),
            (
                "an RSA key that is not a key",
                json!({"id": random_id(), "address": random_id(),
                       "signature": {"kind": "sha256:rsa", "key": "not a pem"}})
                .to_string(),
            ),
        ];
        for (what, body) in bodies {
            let resp = c.send(Method::PUT, "/slots/register/", body).await?;
            warnings.merge(rejected_answer(
                &resp,
                &format!("registration with {what}"),
            )?);
        }
        warnings.outcome()
    })
}

fn oversize(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, address) = (random_id(), random_id());
        let mut body = json!({"id": id, "address": address}).to_string();
        body.insert_str(1, &" ".repeat(1536 * 1024));
        let Some(resp) = c
            .send_refusable(Method::PUT, "/slots/register/", body)
            .await?
        else {
            // Refused by closing the connection: nothing may have been registered.
            c.get_after_refusal(&format!("/slots/{id}")).await?.expect(
                404,
                "after a registration refused by closing the connection",
            )?;
            return Ok(Outcome::Pass);
        };
        match resp.status {
            413 => {
                c.get_after_refusal(&format!("/slots/{id}"))
                    .await?
                    .expect(404, "after a refused registration")?;
                Ok(Outcome::Pass)
            }
            200 => {
                let state = current(c, &id).await?;
                ensure!(
                    field_id(&state, "address")? == address,
                    "a large registration was accepted but not applied: {state}"
                );
                Ok(Outcome::Pass)
            }
            s if (400..500).contains(&s) => Ok(Outcome::Warn(format!(
                "{s} for a 1.5 MiB JSON body (413 is preferred)"
            ))),
            _ => fail!("a 1.5 MiB JSON body: expected 413, got {}", resp.describe()),
        }
    })
}

fn get(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (id, address) = new_slot(c).await?;
        let resp = c.get(&format!("/slots/{id}")).await?;
        resp.expect(200, "GET /slots/:id")?;
        if resp.media_type() != "application/json" {
            warnings.add(format!(
                "Content-Type {:?}; application/json is preferred",
                resp.header("content-type").unwrap_or("")
            ));
        }
        let state: Value = resp.json()?;
        ensure!(
            field_id(&state, "address")? == address,
            "wrong address in {state}"
        );
        ensure!(
            state.get("previous") == Some(&json!("root")),
            "a new slot's previous must be \"root\": {state}"
        );
        if let Some(time) = state.get("time") {
            ensure!(
                time.is_u64(),
                "time must be milliseconds since the epoch: {state}"
            );
        }
        warnings.outcome()
    })
}

fn get_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        c.get(&format!("/slots/{}", random_id()))
            .await?
            .expect(404, "GET of an unknown slot")?;
        Ok(Outcome::Pass)
    })
}

fn update(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, first) = new_slot(c).await?;
        let second = random_id();
        let resp = update_to(c, &id, &first, &second).await?;
        resp.expect(200, "PUT /slots/:id with the current previous")?;
        let state = current(c, &id).await?;
        ensure!(
            field_id(&state, "address")? == second,
            "update not applied: {state}"
        );
        ensure!(
            field_id(&state, "previous")? == first,
            "previous must be the replaced address: {state}"
        );
        Ok(Outcome::Pass)
    })
}

fn update_stale(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, first) = new_slot(c).await?;
        let second = random_id();
        update_to(c, &id, &first, &second)
            .await?
            .expect(200, "first update")?;
        let resp = update_to(c, &id, &first, &random_id()).await?;
        let outcome = match resp.status {
            409 => Outcome::Pass,
            s if (400..500).contains(&s) => {
                Outcome::Warn(format!("{s} for a stale previous (409 is preferred)"))
            }
            _ => fail!(
                "update with a stale previous: expected 409, got {}",
                resp.describe()
            ),
        };
        let state = current(c, &id).await?;
        ensure!(
            field_id(&state, "address")? == second,
            "a refused update changed the slot: {state}"
        );
        Ok(outcome)
    })
}

fn update_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        update_to(c, &random_id(), &random_id(), &random_id())
            .await?
            .expect(404, "updating an unknown slot")?;
        Ok(Outcome::Pass)
    })
}

fn update_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (id, first) = new_slot(c).await?;
        let path = format!("/slots/{id}");
        let bodies = [
            ("broken JSON", "{\"address\"".to_string()),
            ("no previous", json!({"address": random_id()}).to_string()),
            (
                "a bad address",
                json!({"address": "xyz", "previous": first}).to_string(),
            ),
        ];
        for (what, body) in bodies {
            let resp = c.send(Method::PUT, &path, body).await?;
            warnings.merge(rejected_answer(&resp, &format!("update with {what}"))?);
        }
        let state = current(c, &id).await?;
        ensure!(
            field_id(&state, "address")? == first,
            "a malformed update changed the slot: {state}"
        );
        warnings.outcome()
    })
}

fn cas_race(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (id, first) = new_slot(c).await?;
        let candidates: Vec<Id> = (0..12).map(|_| random_id()).collect();
        let attempts = candidates.iter().map(|a| update_to(c, &id, &first, a));
        let answers = join_all(attempts).await;
        let mut winners = Vec::new();
        for (candidate, resp) in candidates.iter().zip(answers) {
            let resp = resp?;
            match resp.status {
                200 => winners.push(*candidate),
                409 => {}
                s if (400..500).contains(&s) => {
                    warnings.add(format!("a losing update got {s} (409 is preferred)"))
                }
                _ => fail!("a racing update got {}", resp.describe()),
            }
        }
        ensure!(
            winners.len() == 1,
            "{} of 12 concurrent updates with the same previous succeeded; exactly one must",
            winners.len()
        );
        let state = current(c, &id).await?;
        ensure!(
            field_id(&state, "address")? == winners[0],
            "the slot holds {state}, not the winner {}",
            winners[0]
        );
        let history = history_states(c, &id).await?.0;
        ensure!(
            history.len() == 2,
            "after one winning update the history must have 2 states, has {}",
            history.len()
        );
        warnings.outcome()
    })
}

fn config(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, _) = new_slot(c).await?;
        let resp = c.get(&format!("/slots/config/{id}")).await?;
        resp.expect(200, "GET /slots/config/:id")?;
        let body: Value = resp.json()?;
        let kind = body.pointer("/signature/kind").and_then(Value::as_str);
        ensure!(
            kind == Some("none"),
            "an unsigned slot's config must have signature.kind \"none\": {body}"
        );
        let signer = SlotSigner::ed25519_from_seed(&rand::random());
        let Some(signed) = signer.ed25519_slot() else {
            fail!("no ed25519 slot id");
        };
        let reg = signer.register_request(signed, random_id());
        c.json(Method::PUT, "/slots/register/", &reg)
            .await?
            .expect(200, "registering an ed25519 slot")?;
        let body: Value = c.get(&format!("/slots/config/{signed}")).await?.json()?;
        ensure!(
            body.pointer("/signature/kind").and_then(Value::as_str) == Some("ed25519"),
            "an ed25519 slot's config must have signature.kind \"ed25519\": {body}"
        );
        c.get(&format!("/slots/config/{}", random_id()))
            .await?
            .expect(404, "GET /slots/config/ of an unknown slot")?;
        Ok(Outcome::Pass)
    })
}

/// Parses a body of JSON values; returns them and whether every value was followed by
/// a newline (the preferred NDJSON form).
fn json_values(body: &[u8]) -> Result<(Vec<Value>, bool), Fail> {
    let mut values = Vec::new();
    let mut newline_delimited = true;
    let mut iter = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    loop {
        match iter.next() {
            Some(Ok(value)) => {
                let end = iter.byte_offset();
                if !matches!(body.get(end), Some(b'\n' | b'\r')) {
                    newline_delimited = false;
                }
                values.push(value);
            }
            Some(Err(e)) => fail!("the stream is not a sequence of JSON values: {e}"),
            None => break,
        }
    }
    Ok((values, newline_delimited))
}

/// The history of `slot`: its states and whether it was newline-delimited.
async fn history_states(c: &Ctx, slot: &Id) -> Result<(Vec<Value>, Resp), Fail> {
    let resp = c.get(&format!("/slots/history/{slot}")).await?;
    resp.expect(200, "GET /slots/history/:id")?;
    Ok((json_values(&resp.body)?.0, resp))
}

fn history(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, first) = new_slot(c).await?;
        let mut chain = vec![first];
        for _ in 0..3 {
            let next = random_id();
            let previous = chain[chain.len() - 1];
            update_to(c, &id, &previous, &next)
                .await?
                .expect(200, "update")?;
            chain.push(next);
        }
        let (states, _) = history_states(c, &id).await?;
        ensure!(
            states.len() == chain.len(),
            "history has {} states, expected {}",
            states.len(),
            chain.len()
        );
        for (state, expected) in states.iter().zip(chain.iter().rev()) {
            ensure!(
                field_id(state, "address")? == *expected,
                "history is not newest first: got {state}, expected address {expected}"
            );
        }
        for pair in states.windows(2) {
            ensure!(
                field_id(&pair[0], "previous")? == field_id(&pair[1], "address")?,
                "each state's previous must be the next (older) state's address: {} then {}",
                pair[0],
                pair[1]
            );
        }
        let last = &states[states.len() - 1];
        ensure!(
            last.get("previous") == Some(&json!("root")),
            "the oldest state must have previous \"root\": {last}"
        );
        c.get(&format!("/slots/history/{}", random_id()))
            .await?
            .expect(404, "history of an unknown slot")?;
        Ok(Outcome::Pass)
    })
}

fn stream_format(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (id, first) = new_slot(c).await?;
        update_to(c, &id, &first, &random_id())
            .await?
            .expect(200, "update")?;
        let resp = c.get(&format!("/slots/history/{id}")).await?;
        resp.expect(200, "GET /slots/history/:id")?;
        let (values, newline_delimited) = json_values(&resp.body)?;
        ensure!(values.len() == 2, "expected 2 states, got {}", values.len());
        if !newline_delimited {
            warnings.add("history values are not each followed by a newline (NDJSON is preferred)");
        }
        if resp.media_type() != "application/x-ndjson" {
            warnings.add(format!(
                "history Content-Type {:?}; application/x-ndjson is preferred",
                resp.header("content-type").unwrap_or("")
            ));
        }
        warnings.outcome()
    })
}

/// Reads JSON values from a streaming body, one at a time, with a bounded wait.
struct ValueReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
    newline_delimited: bool,
}

impl ValueReader {
    async fn next(&mut self, wait: Duration) -> Result<Value, Fail> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut iter = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
            match iter.next() {
                Some(Ok(value)) => {
                    let end = iter.byte_offset();
                    if self
                        .buffer
                        .get(end)
                        .is_some_and(|b| *b != b'\n' && *b != b'\r')
                    {
                        self.newline_delimited = false;
                    }
                    self.buffer.drain(..end);
                    return Ok(value);
                }
                Some(Err(e)) if !e.is_eof() => fail!("the watch stream is not JSON: {e}"),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => fail!("no state arrived within {} s", wait.as_secs_f32()),
                Ok(None) => fail!("the watch stream ended"),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
            }
        }
    }
}

fn watch(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (id, first) = new_slot(c).await?;
        let response = tokio::time::timeout(
            c.timeout,
            c.http.get(c.url(&format!("/slots/watch/{id}"))).send(),
        )
        .await
        .map_err(|_| Fail("GET /slots/watch/:id sent no headers in time".into()))??;
        ensure!(
            response.status().as_u16() == 200,
            "GET /slots/watch/:id: expected 200, got {}",
            response.status()
        );
        let media = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut reader = ValueReader {
            stream: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            newline_delimited: true,
        };
        let initial = reader.next(c.timeout).await?;
        ensure!(
            field_id(&initial, "address")? == first,
            "the first watch value must be the current state: {initial}"
        );
        let second = random_id();
        update_to(c, &id, &first, &second)
            .await?
            .expect(200, "update while watching")?;
        let next = reader.next(c.timeout).await?;
        ensure!(
            field_id(&next, "address")? == second,
            "the watch delivered {next}, not the update to {second}"
        );
        ensure!(
            field_id(&next, "previous")? == first,
            "the delivered state's previous must be {first}: {next}"
        );
        let third = random_id();
        update_to(c, &id, &second, &third)
            .await?
            .expect(200, "second update while watching")?;
        let after = reader.next(c.timeout).await?;
        ensure!(
            field_id(&after, "address")? == third,
            "the watch delivered {after}, not the update to {third}"
        );
        if !reader.newline_delimited {
            warnings.add("watch values are not newline-delimited (NDJSON is preferred)");
        }
        if !media.starts_with("application/x-ndjson") {
            warnings.add(format!(
                "watch Content-Type {media:?}; application/x-ndjson is preferred"
            ));
        }
        c.get(&format!("/slots/watch/{}", random_id()))
            .await?
            .expect(404, "watch of an unknown slot")?;
        warnings.outcome()
    })
}

fn ed25519(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let signer = SlotSigner::ed25519_from_seed(&rand::random());
        let Some(slot) = signer.ed25519_slot() else {
            fail!("no ed25519 slot id");
        };
        let first = random_id();
        let reg = signer.register_request(slot, first);
        let resp = c.json(Method::PUT, "/slots/register/", &reg).await?;
        resp.expect(200, "registering an ed25519 slot")?;
        let path = format!("/slots/{slot}");

        let second = random_id();
        let missing = c
            .json(
                Method::PUT,
                &path,
                &json!({"address": second, "previous": first}),
            )
            .await?;
        missing.expect(403, "an unsigned update of an ed25519 slot")?;

        let stranger = SlotSigner::ed25519_from_seed(&rand::random());
        let forged = stranger
            .update_request(&slot, &first, &second)
            .map_err(|e| Fail(e.to_string()))?;
        c.json(Method::PUT, &path, &forged)
            .await?
            .expect(403, "an update signed by another key")?;

        let other = signer
            .update_request(&slot, &first, &random_id())
            .map_err(|e| Fail(e.to_string()))?;
        let replay = json!({"address": second, "previous": first, "signature": other.signature});
        c.json(Method::PUT, &path, &replay)
            .await?
            .expect(403, "a signature made for another transition")?;

        let garbage = json!({"address": second, "previous": first, "signature": "zz"});
        c.json(Method::PUT, &path, &garbage)
            .await?
            .expect(403, "a signature that is not hex or base64")?;

        let good = signer
            .update_request(&slot, &first, &second)
            .map_err(|e| Fail(e.to_string()))?;
        c.json(Method::PUT, &path, &good)
            .await?
            .expect(200, "a correctly signed update")?;
        let state = current(c, &slot).await?;
        ensure!(
            field_id(&state, "address")? == second,
            "signed update not applied: {state}"
        );
        let shown = state.get("signature").and_then(Value::as_str).unwrap_or("");
        ensure!(
            Some(shown) == good.signature.as_deref(),
            "the state must show the accepting signature in lowercase hex: {state}"
        );

        // A badly signed request with a stale previous is refused for its signature.
        let stale = stranger
            .update_request(&slot, &first, &random_id())
            .map_err(|e| Fail(e.to_string()))?;
        c.json(Method::PUT, &path, &stale)
            .await?
            .expect(403, "a forged update with a stale previous")?;
        // A well signed one with a stale previous is a conflict.
        let late = signer
            .update_request(&slot, &first, &random_id())
            .map_err(|e| Fail(e.to_string()))?;
        let resp = c.json(Method::PUT, &path, &late).await?;
        resp.expect(409, "a correctly signed update with a stale previous")?;
        Ok(Outcome::Pass)
    })
}

/// An id that is not a usable ed25519 public key (does not decode, or a weak point).
fn not_a_key() -> Id {
    let weak = {
        let mut bytes = [0u8; 32];
        bytes[0] = 1; // the identity point: small order
        Id::from_bytes(bytes)
    };
    for _ in 0..256 {
        let candidate = Id::random();
        if SlotVerifier::new(candidate, &SignatureConfig::Ed25519).is_err() {
            return candidate;
        }
    }
    weak
}

fn ed25519_not_a_key(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let mut weak = [0u8; 32];
        weak[0] = 1;
        for id in [not_a_key(), Id::from_bytes(weak)] {
            let resp = c
                .json(
                    Method::PUT,
                    "/slots/register/",
                    &json!({"id": id, "address": random_id(), "signature": {"kind": "ed25519"}}),
                )
                .await?;
            warnings.merge(rejected_answer(
                &resp,
                "ed25519 registration with a bad key",
            )?);
            c.get(&format!("/slots/{id}"))
                .await?
                .expect(404, "after a refused registration")?;
        }
        warnings.outcome()
    })
}

fn malformed_id(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        for path in [
            "/slots/xyz",
            "/slots/config/xyz",
            "/slots/history/xyz",
            "/slots/watch/xyz",
        ] {
            let resp = c.get(path).await?;
            warnings.merge(malformed_answer(&resp, &format!("GET {path}"))?);
        }
        let resp = c
            .json(
                Method::PUT,
                "/slots/xyz",
                &json!({"address": random_id(), "previous": random_id()}),
            )
            .await?;
        warnings.merge(malformed_answer(&resp, "PUT /slots/xyz")?);
        warnings.outcome()
    })
}

fn id_case(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, first) = new_slot(c).await?;
        let resp = c.get(&format!("/slots/{}", upper(&id))).await?;
        resp.expect(200, "GET /slots/:id in upper case")?;
        let state: Value = resp.json()?;
        ensure!(field_id(&state, "address")? == first, "wrong state {state}");
        let next = random_id();
        let resp = c
            .json(
                Method::PUT,
                &format!("/slots/{}", upper(&id)),
                &json!({"address": upper(&next), "previous": upper(&first)}),
            )
            .await?;
        resp.expect(200, "an update with upper-case ids")?;
        let state = current(c, &id).await?;
        ensure!(
            state.get("address") == Some(&json!(next.to_string())),
            "ids must be emitted in lower case: {state}"
        );
        Ok(Outcome::Pass)
    })
}

fn trailing_slash(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, address) = (random_id(), random_id());
        c.json(
            Method::PUT,
            "/slots/register",
            &json!({"id": id, "address": address}),
        )
        .await?
        .expect(200, "PUT /slots/register (no slash)")?;
        c.get(&format!("/slots/{id}/"))
            .await?
            .expect(200, "GET /slots/:id/")?;
        c.get(&format!("/slots/history/{id}/"))
            .await?
            .expect(200, "GET /slots/history/:id/")?;
        Ok(Outcome::Pass)
    })
}
