//! Names checks (`spec/names.md`): registration, canonical names, lookups and
//! compare-and-swap updates (also under a concurrent race).

use futures_util::future::join_all;
use invariant_spec::Id;
use reqwest::Method;
use serde_json::{Value, json};

use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Resp, Verdict, Warnings, ensure, fail, lowercase_id,
    malformed_answer, random_id, rejected_answer,
};
use crate::profile::Profile;

const DOC: &str = "names.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "names-register",
        doc: DOC,
        anchor: "names-register",
        title: "PUT /names/register/ creates a name that lookup answers authoritatively",
        profile: Profile::Core,
        run: register,
    },
    CheckDef {
        id: "names-register-taken",
        doc: DOC,
        anchor: "names-register",
        title: "registering a taken name is refused (409 preferred) and changes nothing",
        profile: Profile::Core,
        run: register_taken,
    },
    CheckDef {
        id: "names-canonical",
        doc: DOC,
        anchor: "names-syntax",
        title: "names compare in lower case; a name without a dot is <name>.local",
        profile: Profile::Core,
        run: canonical,
    },
    CheckDef {
        id: "names-hyphen",
        doc: DOC,
        anchor: "names-syntax",
        title: "a label with an inner `-` (DNS syntax) is accepted",
        profile: Profile::Core,
        run: hyphen,
    },
    CheckDef {
        id: "names-lookup-unknown",
        doc: DOC,
        anchor: "names-lookup",
        title: "looking up an unknown name is 404",
        profile: Profile::Core,
        run: lookup_unknown,
    },
    CheckDef {
        id: "names-update",
        doc: DOC,
        anchor: "names-update",
        title: "POST /names/update/ with the current previous answers true and applies",
        profile: Profile::Core,
        run: update,
    },
    CheckDef {
        id: "names-update-stale",
        doc: DOC,
        anchor: "names-update",
        title: "an update with a stale previous answers false and changes nothing",
        profile: Profile::Core,
        run: update_stale,
    },
    CheckDef {
        id: "names-update-unknown",
        doc: DOC,
        anchor: "names-update",
        title: "updating an unknown name is 404",
        profile: Profile::Core,
        run: update_unknown,
    },
    CheckDef {
        id: "names-cas-race",
        doc: DOC,
        anchor: "names-update",
        title: "of concurrent updates with the same previous exactly one wins",
        profile: Profile::Core,
        run: cas_race,
    },
    CheckDef {
        id: "names-bad-name",
        doc: DOC,
        anchor: "names-syntax",
        title: "a name that is not DNS syntax is 400",
        profile: Profile::Core,
        run: bad_name,
    },
    CheckDef {
        id: "names-malformed",
        doc: DOC,
        anchor: "names-register",
        title: "malformed register and update bodies are 400",
        profile: Profile::Core,
        run: malformed,
    },
    CheckDef {
        id: "names-trailing-slash",
        doc: "common.md",
        anchor: "common-trailing-slash",
        title: "routes answer with and without a trailing slash",
        profile: Profile::Core,
        run: trailing_slash,
    },
];

/// A fresh name under `.test` (never registered, never in DNS). A neutral fixture:
/// letters and digits only, so only the checks about `-` depend on its handling.
fn fresh_name() -> String {
    format!("conformance{}.test", &random_id().to_string()[..16])
}

async fn register_name(c: &Ctx, name: &str, address: &Id) -> Result<Resp, Fail> {
    c.json(
        Method::PUT,
        "/names/register/",
        &json!({"name": name, "address": address}),
    )
    .await
}

async fn lookup(c: &Ctx, name: &str) -> Result<Value, Fail> {
    let resp = c.get(&format!("/names/lookup/{name}")).await?;
    resp.expect(200, &format!("GET /names/lookup/{name}"))?;
    resp.json()
}

fn address_of(record: &Value) -> Result<Id, Fail> {
    match record.get("address").and_then(Value::as_str) {
        Some(text) => lowercase_id(text, "address"),
        None => fail!("lookup answer has no address: {record}"),
    }
}

async fn update_name(c: &Ctx, name: &str, previous: &Id, address: &Id) -> Result<Resp, Fail> {
    c.json(
        Method::POST,
        "/names/update/",
        &json!({"name": name, "previous": previous, "address": address}),
    )
    .await
}

fn register(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = fresh_name();
        let address = random_id();
        let resp = c
            .json(
                Method::PUT,
                "/names/register/",
                &json!({"name": name, "address": address, "ttl": 120}),
            )
            .await?;
        resp.expect(200, "PUT /names/register/")?;
        let record = lookup(c, &name).await?;
        ensure!(
            record.get("name") == Some(&json!(name)),
            "wrong name in {record}"
        );
        ensure!(address_of(&record)? == address, "wrong address in {record}");
        ensure!(
            record.get("ttl") == Some(&json!(120)),
            "ttl must be 120: {record}"
        );
        ensure!(
            record.get("authoritative") == Some(&json!(true)),
            "a name the server holds must be authoritative: {record}"
        );
        let slot_name = fresh_name();
        let slot = random_id();
        c.json(
            Method::PUT,
            "/names/register/",
            &json!({"name": slot_name, "address": slot, "slot": true}),
        )
        .await?
        .expect(200, "registering a slot name")?;
        let record = lookup(c, &slot_name).await?;
        ensure!(
            record.get("slot") == Some(&json!(true)),
            "slot must be true: {record}"
        );
        ensure!(
            record.get("ttl").is_some_and(Value::is_u64),
            "ttl must default to a number of seconds: {record}"
        );
        Ok(Outcome::Pass)
    })
}

fn register_taken(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = fresh_name();
        let address = random_id();
        register_name(c, &name, &address)
            .await?
            .expect(200, "PUT /names/register/")?;
        let resp = register_name(c, &name.to_ascii_uppercase(), &random_id()).await?;
        let outcome = match resp.status {
            409 => Outcome::Pass,
            200 if resp.json::<Value>().ok() == Some(json!(false)) => {
                Outcome::Warn("200 false for a taken name (409 is preferred)".into())
            }
            s if (400..500).contains(&s) => {
                Outcome::Warn(format!("{s} for a taken name (409 is preferred)"))
            }
            _ => fail!(
                "registering a taken name: expected 409, got {}",
                resp.describe()
            ),
        };
        let record = lookup(c, &name).await?;
        ensure!(
            address_of(&record)? == address,
            "a refused registration changed the name: {record}"
        );
        Ok(outcome)
    })
}

fn canonical(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let label = format!("Conformance{}", &random_id().to_string()[..12]);
        let address = random_id();
        register_name(c, &label, &address)
            .await?
            .expect(200, "registering a name without a dot")?;
        let full = format!("{}.local", label.to_ascii_lowercase());
        for form in [label.clone(), full.clone(), full.to_ascii_uppercase()] {
            let record = lookup(c, &form).await?;
            ensure!(address_of(&record)? == address, "lookup {form}: {record}");
            ensure!(
                record.get("name") == Some(&json!(full)),
                "lookup {form} must answer the canonical name {full}: {record}"
            );
        }
        Ok(Outcome::Pass)
    })
}

fn hyphen(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = format!("conformance-{}.test", &random_id().to_string()[..16]);
        let address = random_id();
        register_name(c, &name, &address)
            .await?
            .expect(200, "registering a name with an inner `-`")?;
        let record = lookup(c, &name).await?;
        ensure!(address_of(&record)? == address, "wrong address in {record}");
        Ok(Outcome::Pass)
    })
}

fn lookup_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = fresh_name();
        c.get(&format!("/names/lookup/{name}"))
            .await?
            .expect(404, "lookup of an unknown name")?;
        Ok(Outcome::Pass)
    })
}

/// Reads a CAS answer: `Some(true|false)` for 200 with a JSON boolean.
fn cas_answer(resp: &Resp) -> Result<Option<bool>, Fail> {
    if resp.status != 200 {
        return Ok(None);
    }
    if silent(resp) {
        fail!("the update answer says nothing (`{{}}` or empty); expected true or false");
    }
    match resp.json::<Value>()? {
        Value::Bool(b) => Ok(Some(b)),
        other => fail!("an update answer must be true or false, got {other}"),
    }
}

/// A 200 whose body is `{}` or empty: the reference's update answer, which does not
/// say whether the update applied (a documented divergence: the name must be looked
/// up).
fn silent(resp: &Resp) -> bool {
    resp.status == 200
        && (resp.body.iter().all(u8::is_ascii_whitespace)
            || serde_json::from_slice::<Value>(&resp.body)
                .is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty())))
}

/// The warning for a silent update answer whose effect the lookup confirmed.
fn silent_warning(what: &str) -> Outcome {
    Outcome::Warn(format!(
        "the update answered 200 with nothing to say (`{{}}` or empty; true/false is \
         specified, see names-divergences); the lookup shows {what}"
    ))
}

fn update(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = fresh_name();
        let first = random_id();
        register_name(c, &name, &first)
            .await?
            .expect(200, "register")?;
        let second = random_id();
        let resp = update_name(c, &name, &first, &second).await?;
        let outcome = if silent(&resp) {
            silent_warning("it applied")
        } else {
            ensure!(
                cas_answer(&resp)? == Some(true),
                "an update with the current previous must answer 200 true, got {}",
                resp.describe()
            );
            Outcome::Pass
        };
        let record = lookup(c, &name).await?;
        ensure!(
            address_of(&record)? == second,
            "update not applied: {record}"
        );
        Ok(outcome)
    })
}

fn update_stale(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = fresh_name();
        let first = random_id();
        register_name(c, &name, &first)
            .await?
            .expect(200, "register")?;
        let resp = update_name(c, &name, &random_id(), &random_id()).await?;
        let outcome = if silent(&resp) {
            silent_warning("it did not apply")
        } else {
            match cas_answer(&resp)? {
                Some(false) => Outcome::Pass,
                Some(true) => fail!("an update with a stale previous answered true"),
                None if resp.status == 409 => {
                    Outcome::Warn("409 for a stale previous (200 false is preferred)".into())
                }
                None => fail!("stale update: expected 200 false, got {}", resp.describe()),
            }
        };
        let record = lookup(c, &name).await?;
        ensure!(
            address_of(&record)? == first,
            "a stale update applied: {record}"
        );
        Ok(outcome)
    })
}

fn update_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = update_name(c, &fresh_name(), &random_id(), &random_id()).await?;
        match resp.status {
            404 => Ok(Outcome::Pass),
            200 if cas_answer(&resp)? == Some(false) => Ok(Outcome::Warn(
                "200 false for an unknown name (404 is preferred)".into(),
            )),
            _ => fail!(
                "update of an unknown name: expected 404, got {}",
                resp.describe()
            ),
        }
    })
}

fn cas_race(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = fresh_name();
        let first = random_id();
        register_name(c, &name, &first)
            .await?
            .expect(200, "register")?;
        let candidates: Vec<Id> = (0..12).map(|_| random_id()).collect();
        let answers = join_all(candidates.iter().map(|a| update_name(c, &name, &first, a))).await;
        let mut winners = Vec::new();
        let mut silent_answers = 0;
        for (candidate, resp) in candidates.iter().zip(answers) {
            let resp = resp?;
            if silent(&resp) {
                silent_answers += 1;
                continue;
            }
            match cas_answer(&resp)? {
                Some(true) => winners.push(*candidate),
                Some(false) => {}
                None if resp.status == 409 => {}
                None => fail!("a racing update got {}", resp.describe()),
            }
        }
        if silent_answers > 0 {
            // Which update won can only be read from the name.
            ensure!(
                winners.len() <= 1,
                "{} updates answered true",
                winners.len()
            );
            let record = lookup(c, &name).await?;
            let held = address_of(&record)?;
            ensure!(
                candidates.contains(&held) && winners.iter().all(|w| *w == held),
                "the name holds {record}, not one of the racing updates"
            );
            return Ok(silent_warning("one racing update applied"));
        }
        ensure!(
            winners.len() == 1,
            "{} of 12 concurrent updates with the same previous won; exactly one must",
            winners.len()
        );
        let record = lookup(c, &name).await?;
        ensure!(
            address_of(&record)? == winners[0],
            "the name holds {record}, not the winner {}",
            winners[0]
        );
        Ok(Outcome::Pass)
    })
}

fn bad_name(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        for bad in ["bad_name.test", "-edge.test", "a..b", &"x".repeat(64)] {
            let resp = c.get(&format!("/names/lookup/{bad}")).await?;
            warnings.merge(malformed_answer(&resp, &format!("lookup {bad:?}"))?);
            let resp = register_name(c, bad, &random_id()).await?;
            warnings.merge(rejected_answer(&resp, &format!("register {bad:?}"))?);
        }
        warnings.outcome()
    })
}

fn malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let name = fresh_name();
        let first = random_id();
        register_name(c, &name, &first)
            .await?
            .expect(200, "register")?;
        for (what, body) in [
            ("broken JSON", "{\"name\"".to_string()),
            ("no address", json!({"name": fresh_name()}).to_string()),
            (
                "a bad address",
                json!({"name": fresh_name(), "address": "xyz"}).to_string(),
            ),
        ] {
            let resp = c.send(Method::PUT, "/names/register/", body).await?;
            warnings.merge(rejected_answer(&resp, &format!("register with {what}"))?);
        }
        for (what, body) in [
            ("broken JSON", "{".to_string()),
            (
                "no previous",
                json!({"name": name, "address": random_id()}).to_string(),
            ),
            (
                "a bad address",
                json!({"name": name, "previous": first, "address": "xyz"}).to_string(),
            ),
        ] {
            let resp = c.send(Method::POST, "/names/update/", body).await?;
            warnings.merge(rejected_answer(&resp, &format!("update with {what}"))?);
        }
        let record = lookup(c, &name).await?;
        ensure!(
            address_of(&record)? == first,
            "a malformed update applied: {record}"
        );
        warnings.outcome()
    })
}

fn trailing_slash(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let name = fresh_name();
        let first = random_id();
        c.json(
            Method::PUT,
            "/names/register",
            &json!({"name": name, "address": first}),
        )
        .await?
        .expect(200, "PUT /names/register (no slash)")?;
        c.get(&format!("/names/lookup/{name}/"))
            .await?
            .expect(200, "GET /names/lookup/:name/")?;
        let resp = c
            .json(
                Method::POST,
                "/names/update",
                &json!({"name": name, "previous": first, "address": random_id()}),
            )
            .await?;
        // A silent answer is a divergence the update checks report; here only the
        // route matters.
        ensure!(
            silent(&resp) || cas_answer(&resp)? == Some(true),
            "POST /names/update (no slash) must answer true, got {}",
            resp.describe()
        );
        Ok(Outcome::Pass)
    })
}
