//! Authorization checks (`spec/security.md`), run against a server in auth mode.
//!
//! The run's token (`--token`) is the only credential the suite needs: it must carry
//! every right the role's checks use (an operator token does). From it the suite derives
//! the tokens a server must refuse, offline, as any holder could: the token narrowed by
//! attenuation to `<role>:read` (it lacks every changing right), and the token with an
//! expiry in the past. It also mints a token of a root key of its own (a foreign
//! network) and sends a value that is no token at all.
//!
//! Each refusal check sends every changing route of the role without a token (401 with
//! `WWW-Authenticate: Bearer`) or with one of those tokens (403), then reads the state
//! back with the run's token where the protocol allows (a blob still absent, a slot or
//! name unchanged, a pin count unchanged) to show that nothing changed.
//!
//! Without a token the server is taken to run in open mode and these checks are
//! skipped.

use std::time::{Duration, SystemTime};

use invariant_spec::Id;
use invariant_spec::auth::{Grant, Right, RootKey, attenuate_unverified};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};

use crate::Role;
use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Resp, Verdict, ensure, fail, lowercase_id,
    random_bytes, random_id,
};
use crate::distributor::json_list;
use crate::files::UNKNOWN_NODE;
use crate::profile::Profile;

const DOC: &str = "security.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "auth-no-token",
        doc: DOC,
        anchor: "security-401",
        title: "every changing route refuses a request without a token: 401, Bearer, nothing changed",
        profile: Profile::Secure,
        run: no_token,
    },
    CheckDef {
        id: "auth-narrowed-token",
        doc: DOC,
        anchor: "security-403",
        title: "a token narrowed to <role>:read (lacking the right) is 403 and changes nothing",
        profile: Profile::Secure,
        run: narrowed_token,
    },
    CheckDef {
        id: "auth-expired-token",
        doc: DOC,
        anchor: "security-403",
        title: "an expired token is 403 and changes nothing",
        profile: Profile::Secure,
        run: expired_token,
    },
    CheckDef {
        id: "auth-foreign-token",
        doc: DOC,
        anchor: "security-403",
        title: "a token of another root, or a value that is no token, is 403 and changes nothing",
        profile: Profile::Secure,
        run: foreign_token,
    },
    CheckDef {
        id: "auth-reads",
        doc: DOC,
        anchor: "security-reads",
        title: "reads need no token (or <role>:read with --auth-reads)",
        profile: Profile::Secure,
        run: reads,
    },
    CheckDef {
        id: "auth-id-open",
        doc: DOC,
        anchor: "security-id-open",
        title: "GET /id answers without a token",
        profile: Profile::Secure,
        run: id_open,
    },
];

/// What a refused request carries.
#[derive(Clone, Debug)]
enum Credential {
    /// No `Authorization` header: 401.
    Missing,
    /// `Authorization: Bearer <token>` with a token the server must refuse: 403.
    Bearer { token: String, what: &'static str },
}

impl Credential {
    fn describe(&self) -> String {
        match self {
            Credential::Missing => "without a token".to_string(),
            Credential::Bearer { what, .. } => format!("with {what}"),
        }
    }
}

/// The run's token, or the reason the auth checks are skipped.
fn run_token(c: &Ctx) -> Result<&str, Outcome> {
    c.token.as_deref().ok_or_else(|| {
        Outcome::Skip(
            "no token given (--token): the server is taken to run in open mode".to_string(),
        )
    })
}

/// The right that covers reads of the role under test.
fn read_right(c: &Ctx) -> Result<Right, Fail> {
    Right::new(c.role.name(), "read").map_err(|e| Fail(e.to_string()))
}

fn derived(e: impl std::fmt::Display) -> Fail {
    Fail(format!(
        "cannot derive a narrower token from the given token (is it a capability token?): {e}"
    ))
}

/// The run's token narrowed to `<role>:read`.
fn narrowed(c: &Ctx, token: &str) -> Result<String, Fail> {
    attenuate_unverified(token, Some(&[read_right(c)?]), None).map_err(derived)
}

/// Sends `method path` with `credential` and fails unless it is refused as
/// `spec/security.md` requires.
async fn refused(
    c: &Ctx,
    credential: &Credential,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    json: bool,
) -> Result<(), Fail> {
    let mut request = c.anon_req(method.clone(), path);
    if json {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    if let Credential::Bearer { token, .. } = credential {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = c.call(request).await?;
    let what = format!("{method} {path} {}", credential.describe());
    match credential {
        Credential::Missing => {
            resp.expect(401, &what)?;
            let challenge = resp.header(WWW_AUTHENTICATE.as_str()).unwrap_or("");
            ensure!(
                challenge
                    .split_whitespace()
                    .next()
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer")),
                "{what}: the 401 must carry WWW-Authenticate: Bearer, got {challenge:?}"
            );
        }
        Credential::Bearer { .. } => resp.expect(403, &what)?,
    }
    Ok(())
}

/// A refused request with a JSON body.
async fn refused_json(
    c: &Ctx,
    credential: &Credential,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<(), Fail> {
    refused(
        c,
        credential,
        method,
        path,
        Some(body.to_string().into_bytes()),
        true,
    )
    .await
}

/// A refused request with a raw body.
async fn refused_raw(
    c: &Ctx,
    credential: &Credential,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(), Fail> {
    refused(c, credential, method, path, Some(body), false).await
}

/// Sends every changing route of the role under test with `credential`, then reads the
/// state back.
async fn every_write(c: &Ctx, credential: Credential) -> Verdict {
    match c.role {
        Role::Storage => storage(c, &credential).await?,
        Role::Slots => slots(c, &credential).await?,
        Role::Broker => broker(c, &credential).await?,
        Role::Find => find(c, &credential).await?,
        Role::Files => files(c, &credential).await?,
        Role::Productions => productions(c, &credential).await?,
        Role::Names => names(c, &credential).await?,
        Role::Distributor => distributor(c, &credential).await?,
    }
    Ok(Outcome::Pass)
}

fn no_token(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        if let Err(skip) = run_token(c) {
            return Ok(skip);
        }
        every_write(c, Credential::Missing).await
    })
}

fn narrowed_token(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let token = match run_token(c) {
            Ok(token) => token,
            Err(skip) => return Ok(skip),
        };
        let credential = Credential::Bearer {
            token: narrowed(c, token)?,
            what: "the run's token narrowed to <role>:read",
        };
        every_write(c, credential).await
    })
}

fn expired_token(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let token = match run_token(c) {
            Ok(token) => token,
            Err(skip) => return Ok(skip),
        };
        let past = SystemTime::now() - Duration::from_secs(3600);
        let credential = Credential::Bearer {
            token: attenuate_unverified(token, None, Some(past)).map_err(derived)?,
            what: "the run's token expired an hour ago",
        };
        every_write(c, credential).await
    })
}

fn foreign_token(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        if let Err(skip) = run_token(c) {
            return Ok(skip);
        }
        let foreign = RootKey::generate()
            .issue(&Grant {
                subject: "conformance-foreign".into(),
                rights: vec![Right::all()],
                expires: None,
                quota: None,
            })
            .map_err(|e| Fail(format!("minting a foreign token: {e}")))?;
        every_write(
            c,
            Credential::Bearer {
                token: foreign,
                what: "an operator token of another root key",
            },
        )
        .await?;
        every_write(
            c,
            Credential::Bearer {
                token: "not-a-capability-token".into(),
                what: "a value that is not a token",
            },
        )
        .await
    })
}

/// A read request of the role under test: (method, path, JSON body).
fn read_requests(c: &Ctx) -> Vec<(Method, String, Option<Value>)> {
    let id = random_id();
    let get = |path: String| (Method::GET, path, None);
    match c.role {
        Role::Storage => vec![
            get(format!("/storage/{id}")),
            (Method::HEAD, format!("/storage/{id}"), None),
            (Method::HEAD, "/storage/fetch".into(), None),
        ],
        Role::Slots => vec![
            get(format!("/slots/{id}")),
            get(format!("/slots/config/{id}")),
            get(format!("/slots/history/{id}")),
        ],
        Role::Broker => vec![
            get(format!("/broker/location/{id}")),
            get("/broker/registered/storage".into()),
            get("/broker/servers/storage".into()),
        ],
        Role::Find => vec![get(format!("/find/{id}"))],
        Role::Files => vec![
            get(format!("/files/info/{UNKNOWN_NODE}")),
            get(format!("/files/directory/{UNKNOWN_NODE}")),
        ],
        Role::Productions => vec![get(format!("/production/{id}/{}", random_id()))],
        Role::Names => vec![get("/names/lookup/conformance-unknown.test".into())],
        Role::Distributor => vec![
            get("/distributor/status".into()),
            (
                Method::POST,
                "/distributor/blocks".into(),
                Some(json!([id.to_string()])),
            ),
        ],
    }
}

fn reads(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let token = match run_token(c) {
            Ok(token) => token,
            Err(skip) => return Ok(skip),
        };
        let reader = narrowed(c, token)?;
        for (method, path, body) in read_requests(c) {
            let build = || {
                let mut request = c.anon_req(method.clone(), &path);
                if let Some(body) = &body {
                    request = request
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.to_string());
                }
                request
            };
            let anonymous = c.call(build()).await?;
            let what = format!("{method} {path}");
            if c.auth_reads {
                anonymous.expect(401, &format!("{what} without a token (--auth-reads)"))?;
                let with_read = c
                    .call(build().header(AUTHORIZATION, format!("Bearer {reader}")))
                    .await?;
                ensure!(
                    !matches!(with_read.status, 401 | 403),
                    "{what} with a <role>:read token (--auth-reads): refused with {}",
                    with_read.describe()
                );
            } else {
                ensure!(
                    !matches!(anonymous.status, 401 | 403),
                    "{what} without a token: reads are open without --auth-reads, got {}",
                    anonymous.describe()
                );
            }
        }
        Ok(Outcome::Pass)
    })
}

fn id_open(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        if let Err(skip) = run_token(c) {
            return Ok(skip);
        }
        let own = lowercase_id(&c.get("/id").await?.text(), "GET /id with the token")?;
        for path in ["/id", "/id/"] {
            let resp = c.call(c.anon_req(Method::GET, path)).await?;
            resp.expect(200, &format!("GET {path} without a token"))?;
            let answered = lowercase_id(&resp.text(), &format!("GET {path}"))?;
            ensure!(
                answered == own,
                "GET {path} without a token answered {answered}, with one {own}"
            );
        }
        Ok(Outcome::Pass)
    })
}

// ----- per role: every changing route, then the state read back -----

/// `resp` when it is a 200.
fn ok(resp: Resp, what: &str) -> Result<Resp, Fail> {
    resp.expect(200, what)?;
    Ok(resp)
}

async fn storage(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let blob = random_bytes(1000);
    let address = Id::of_content(&blob);
    refused_raw(c, credential, Method::POST, "/storage", blob.clone()).await?;
    refused_raw(
        c,
        credential,
        Method::PUT,
        &format!("/storage/{address}"),
        blob,
    )
    .await?;
    let fetch = json!({"address": address, "container": random_id()});
    for method in [Method::PUT, Method::POST] {
        refused_json(c, credential, method, "/storage/fetch", &fetch).await?;
    }
    let resp = c.get(&format!("/storage/{address}")).await?;
    ensure!(
        resp.status == 404,
        "after refused writes, GET /storage/{address} should be 404 (nothing stored), got {}",
        resp.describe()
    );
    // Deletes and the listing need rights of their own: a held blob stays held.
    let kept = random_bytes(1000);
    let resp = c.send(Method::POST, "/storage/", kept.clone()).await?;
    ok(resp, "POST /storage/ with the run's token")?;
    let kept_address = Id::of_content(&kept);
    let kept_path = format!("/storage/{kept_address}");
    refused(c, credential, Method::DELETE, &kept_path, None, false).await?;
    refused_json(
        c,
        credential,
        Method::POST,
        "/storage/delete",
        &json!([kept_address]),
    )
    .await?;
    refused(c, credential, Method::GET, "/storage/?limit=1", None, false).await?;
    let resp = c.get(&kept_path).await?;
    ensure!(
        resp.status == 200 && resp.body.as_ref() == kept.as_slice(),
        "after refused deletes, GET {kept_path} should still answer the blob, got {}",
        resp.describe()
    );
    Ok(())
}

async fn slot_address(c: &Ctx, slot: &Id) -> Result<Id, Fail> {
    let resp = ok(c.get(&format!("/slots/{slot}")).await?, "GET /slots/:id")?;
    let state: Value = resp.json()?;
    match state.get("address").and_then(Value::as_str) {
        Some(text) => lowercase_id(text, "the slot's address"),
        None => fail!("slot state {state} has no address"),
    }
}

async fn slots(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let (slot, address) = (random_id(), random_id());
    ok(
        c.json(
            Method::PUT,
            "/slots/register",
            &json!({"id": slot, "address": address}),
        )
        .await?,
        "PUT /slots/register with the run's token",
    )?;
    let fresh = random_id();
    for method in [Method::PUT, Method::POST] {
        refused_json(
            c,
            credential,
            method,
            "/slots/register",
            &json!({"id": fresh, "address": random_id()}),
        )
        .await?;
    }
    refused_json(
        c,
        credential,
        Method::PUT,
        &format!("/slots/{slot}"),
        &json!({"address": random_id(), "previous": address}),
    )
    .await?;
    let resp = c.get(&format!("/slots/{fresh}")).await?;
    ensure!(
        resp.status == 404,
        "after refused registrations, GET /slots/{fresh} should be 404, got {}",
        resp.describe()
    );
    let now = slot_address(c, &slot).await?;
    ensure!(
        now == address,
        "after a refused update the slot points at {now}, not {address}"
    );
    Ok(())
}

async fn broker(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let owned = random_id();
    let url = c.helper.fake_server(&owned).await?;
    ok(
        c.json(
            Method::POST,
            "/broker/register",
            &json!({"id": owned, "urls": [url], "kind": "storage"}),
        )
        .await?,
        "POST /broker/register with the run's token",
    )?;
    let fresh = random_id();
    let fresh_url = c.helper.fake_server(&fresh).await?;
    refused_json(
        c,
        credential,
        Method::POST,
        "/broker/register",
        &json!({"id": fresh, "urls": [fresh_url], "kind": "storage"}),
    )
    .await?;
    let elsewhere = c.helper.fake_server(&random_id()).await?;
    refused_json(
        c,
        credential,
        Method::POST,
        "/broker/register",
        &json!({"id": owned, "urls": [elsewhere], "kind": "find"}),
    )
    .await?;
    let resp = c.get(&format!("/broker/location/{fresh}")).await?;
    ensure!(
        resp.status == 404,
        "after a refused registration, the location of {fresh} should be 404, got {}",
        resp.describe()
    );
    let resp = ok(
        c.get(&format!("/broker/location/{owned}")).await?,
        "GET /broker/location/:id",
    )?;
    let location: Value = resp.json()?;
    let urls: Vec<&str> = location
        .get("urls")
        .and_then(Value::as_array)
        .map(|urls| urls.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(
        urls == [url.as_str()],
        "after a refused re-registration the location of {owned} is {location}, not [{url}]"
    );
    Ok(())
}

/// `GET /find/:id`'s answer lines.
async fn find_lines(c: &Ctx, id: &Id) -> Result<Vec<String>, Fail> {
    let resp = ok(c.get(&format!("/find/{id}")).await?, "GET /find/:id")?;
    Ok(resp
        .text()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

async fn find(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let (container, block, finder) = (random_id(), random_id(), random_id());
    for method in [Method::PUT, Method::POST] {
        refused_json(
            c,
            credential,
            method.clone(),
            "/find/has",
            &json!({"container": container, "ids": [block]}),
        )
        .await?;
        refused_json(
            c,
            credential,
            method,
            "/find/notify",
            &json!({"find": finder}),
        )
        .await?;
    }
    let lines = find_lines(c, &block).await?;
    ensure!(
        !lines.contains(&format!("HAS {container}")),
        "after refused has-reports, GET /find/{block} lists {container}: {lines:?}"
    );
    let lines = find_lines(c, &finder).await?;
    ensure!(
        !lines.contains(&format!("CLOSER {finder}")),
        "after refused notifies, GET /find/{finder} lists {finder}: {lines:?}"
    );
    Ok(())
}

async fn files(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let n = UNKNOWN_NODE;
    refused_json(
        c,
        credential,
        Method::POST,
        "/files/mount",
        &json!({"address": random_id()}),
    )
    .await?;
    let attributes = json!({"mode": 420});
    for (method, path, body) in [
        (Method::POST, format!("/files/unmount/{n}"), json!(null)),
        (
            Method::POST,
            format!("/files/attributes/{n}"),
            attributes.clone(),
        ),
        (Method::PUT, format!("/files/attributes/{n}"), attributes),
        (Method::PUT, format!("/files/size/{n}?size=0"), json!(null)),
        (Method::PUT, format!("/files/size/{n}/0"), json!(null)),
        (
            Method::PUT,
            format!("/files/rename/{n}/old?newParent={n}&newName=new"),
            json!(null),
        ),
        (
            Method::PUT,
            format!("/files/link/{n}/name"),
            json!({"address": random_id()}),
        ),
        (Method::POST, format!("/files/remove/{n}/name"), json!(null)),
        (Method::PUT, "/files/sync".to_string(), json!(null)),
        (
            Method::PUT,
            format!("/files/{n}/name?kind=File"),
            json!(null),
        ),
    ] {
        refused_json(c, credential, method, &path, &body).await?;
    }
    refused_raw(
        c,
        credential,
        Method::POST,
        &format!("/files/{n}?offset=0"),
        b"hello".to_vec(),
    )
    .await?;
    for path in [
        format!("/files/info/{n}"),
        format!("/files/lookup/{n}/name"),
        format!("/files/lookup/{n}/new"),
    ] {
        let resp = c.get(&path).await?;
        ensure!(
            resp.status == 404,
            "after refused changes, GET {path} should still be 404, got {}",
            resp.describe()
        );
    }
    Ok(())
}

fn production(task: &Id, input: &Id) -> String {
    format!("/production/{task}/{input}")
}

async fn productions(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let (task, input, output) = (random_id(), random_id(), random_id());
    ok(
        c.call(c.req(
            Method::PUT,
            &format!("{}?output={output}", production(&task, &input)),
        ))
        .await?,
        "PUT /production/:task/:input with the run's token",
    )?;
    let fresh = random_id();
    for (t, i) in [(task, input), (task, fresh)] {
        refused(
            c,
            credential,
            Method::PUT,
            &format!("{}?output={}", production(&t, &i), random_id()),
            None,
            false,
        )
        .await?;
    }
    let resp = ok(
        c.get(&production(&task, &input)).await?,
        "GET /production/:task/:input",
    )?;
    let now = lowercase_id(&resp.text(), "the recorded output")?;
    ensure!(
        now == output,
        "after a refused overwrite the output is {now}, not {output}"
    );
    let resp = c.get(&production(&task, &fresh)).await?;
    ensure!(
        resp.status == 404,
        "after a refused recording, GET should be 404, got {}",
        resp.describe()
    );
    Ok(())
}

async fn names(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let stem = &random_id().to_string()[..16];
    let (name, fresh) = (
        format!("conformance-{stem}.test"),
        format!("conformance-{stem}-new.test"),
    );
    let address = random_id();
    ok(
        c.json(
            Method::PUT,
            "/names/register",
            &json!({"name": name, "address": address}),
        )
        .await?,
        "PUT /names/register with the run's token",
    )?;
    refused_json(
        c,
        credential,
        Method::PUT,
        "/names/register",
        &json!({"name": fresh, "address": random_id()}),
    )
    .await?;
    refused_json(
        c,
        credential,
        Method::POST,
        "/names/update",
        &json!({"name": name, "previous": address, "address": random_id()}),
    )
    .await?;
    let resp = c.get(&format!("/names/lookup/{fresh}")).await?;
    ensure!(
        resp.status == 404,
        "after a refused registration, looking up {fresh} should be 404, got {}",
        resp.describe()
    );
    let resp = ok(
        c.get(&format!("/names/lookup/{name}")).await?,
        "GET /names/lookup/:name",
    )?;
    let record: Value = resp.json()?;
    let now = match record.get("address").and_then(Value::as_str) {
        Some(text) => lowercase_id(text, "the name's address")?,
        None => fail!("lookup answer has no address: {record}"),
    };
    ensure!(
        now == address,
        "after a refused update {name} points at {now}, not {address}"
    );
    Ok(())
}

/// `PUT /distributor/<route>` with the run's token; returns the status.
async fn distributor_put(c: &Ctx, route: &str, ids: &[Id]) -> Result<u16, Fail> {
    Ok(c.send(
        Method::PUT,
        &format!("/distributor/{route}"),
        json_list(ids),
    )
    .await?
    .status)
}

async fn distributor(c: &Ctx, credential: &Credential) -> Result<(), Fail> {
    let (pinned, storage) = (random_id(), random_id());
    let (fresh_block, fresh_storage) = (random_id(), random_id());
    for (route, id) in [("pin", pinned), ("register/storage", storage)] {
        let status = distributor_put(c, route, &[id]).await?;
        ensure!(
            status == 200,
            "PUT /distributor/{route} with the run's token answered {status}"
        );
    }
    for prefix in ["/distributor", "/distribute"] {
        for (route, id) in [
            ("pin", fresh_block),
            ("unpin", pinned),
            ("register/storage", fresh_storage),
            ("unregister/storage", storage),
        ] {
            refused_raw(
                c,
                credential,
                Method::PUT,
                &format!("{prefix}/{route}"),
                json_list(&[id]).into_bytes(),
            )
            .await?;
        }
    }
    // Read back through the reference counts: exactly one pin and one registration
    // remain of what the run's token added, and nothing of what was refused.
    for (route, id, expected, what) in [
        ("unpin", pinned, 200, "the pin made with the run's token"),
        ("unpin", pinned, 409, "a second pin (none was added)"),
        ("unpin", fresh_block, 409, "a pin of the refused request"),
        (
            "unregister/storage",
            storage,
            200,
            "the registration made with the run's token",
        ),
        (
            "unregister/storage",
            storage,
            409,
            "a second registration (none was added)",
        ),
        (
            "unregister/storage",
            fresh_storage,
            409,
            "a registration of the refused request",
        ),
    ] {
        let status = distributor_put(c, route, &[id]).await?;
        ensure!(
            status == expected,
            "after refused changes, removing {what} answered {status}, expected {expected}"
        );
    }
    Ok(())
}
