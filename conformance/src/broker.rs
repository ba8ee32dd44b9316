//! Broker checks (`spec/broker.md`): registration in both url forms, location lookups,
//! listings by kind.

use invariant_spec::Id;
use reqwest::Method;
use serde_json::{Value, json};

use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Verdict, Warnings, ensure, lowercase_id,
    malformed_answer, random_id, rejected_answer, upper,
};
use crate::profile::Profile;

const DOC: &str = "broker.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "broker-register",
        doc: DOC,
        anchor: "broker-register",
        title: "POST /broker/register/ answers the broker's id",
        profile: Profile::Core,
        run: register,
    },
    CheckDef {
        id: "broker-register-url",
        doc: DOC,
        anchor: "broker-register",
        title: "the single-url registration form is accepted",
        profile: Profile::Full,
        run: register_url,
    },
    CheckDef {
        id: "broker-register-malformed",
        doc: DOC,
        anchor: "broker-register",
        title: "a registration without urls, with a bad id or an unknown kind is 400",
        profile: Profile::Core,
        run: register_malformed,
    },
    CheckDef {
        id: "broker-register-kind-required",
        doc: DOC,
        anchor: "broker-register",
        title: "a registration without a kind is 400",
        profile: Profile::Full,
        run: register_without_kind,
    },
    CheckDef {
        id: "broker-location",
        doc: DOC,
        anchor: "broker-location",
        title: "GET /broker/location/:id names the registered url",
        profile: Profile::Core,
        run: location,
    },
    CheckDef {
        id: "broker-location-url-and-urls",
        doc: DOC,
        anchor: "broker-location",
        title: "the location answers both `urls` and `url` (its first)",
        profile: Profile::Full,
        run: location_both,
    },
    CheckDef {
        id: "broker-location-unknown",
        doc: DOC,
        anchor: "broker-location",
        title: "the location of an unknown server is 404",
        profile: Profile::Core,
        run: location_unknown,
    },
    CheckDef {
        id: "broker-registered",
        doc: DOC,
        anchor: "broker-registered",
        title: "GET /broker/registered/:kind lists registered ids as a JSON array",
        profile: Profile::Core,
        run: registered,
    },
    CheckDef {
        id: "broker-servers",
        doc: DOC,
        anchor: "broker-servers",
        title: "GET /broker/servers/:kind lists ids one per line",
        profile: Profile::Core,
        run: servers,
    },
    CheckDef {
        id: "broker-malformed-id",
        doc: "common.md",
        anchor: "common-malformed-id",
        title: "a malformed id in the path is a client error (400 preferred)",
        profile: Profile::Core,
        run: malformed_id,
    },
    CheckDef {
        id: "broker-id-case",
        doc: "common.md",
        anchor: "common-id-case",
        title: "ids are accepted in upper case and emitted in lower case",
        profile: Profile::Full,
        run: id_case,
    },
    CheckDef {
        id: "broker-trailing-slash",
        doc: "common.md",
        anchor: "common-trailing-slash",
        title: "routes answer with and without a trailing slash",
        profile: Profile::Core,
        run: trailing_slash,
    },
];

/// The url of a fake server of the suite on its own port, which answers `/id` with
/// `id`, so liveness checks of the broker keep its registration during the run.
async fn fake_url(c: &Ctx, id: &Id) -> Result<String, Fail> {
    c.helper.fake_server(id).await
}

async fn register_id(c: &Ctx, kind: &str) -> Result<(Id, String), Fail> {
    let id = random_id();
    let url = fake_url(c, &id).await?;
    let resp = c
        .json(
            Method::POST,
            "/broker/register/",
            &json!({"id": id, "urls": [url], "kind": kind}),
        )
        .await?;
    resp.expect(200, "POST /broker/register/")?;
    Ok((id, url))
}

fn register(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let id = random_id();
        let resp = c
            .json(
                Method::POST,
                "/broker/register/",
                &json!({"id": id, "urls": [fake_url(c, &id).await?], "kind": "storage"}),
            )
            .await?;
        resp.expect(200, "POST /broker/register/")?;
        let body: Value = resp.json()?;
        let answered = match body.get("id").and_then(Value::as_str) {
            Some(text) => lowercase_id(text, "register answer id")?,
            None => return Err(Fail(format!("the answer has no id: {body}"))),
        };
        let own = lowercase_id(&c.get("/id/").await?.text(), "GET /id/")?;
        ensure!(
            answered == own,
            "the register answer's id {answered} is not the broker's id {own}"
        );
        Ok(Outcome::Pass)
    })
}

fn register_url(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let id = random_id();
        let url = fake_url(c, &id).await?;
        c.json(
            Method::POST,
            "/broker/register/",
            &json!({"id": id, "url": url, "kind": "find"}),
        )
        .await?
        .expect(200, "POST /broker/register/ with `url`")?;
        let body: Value = c.get(&format!("/broker/location/{id}")).await?.json()?;
        let urls = body.get("urls").and_then(Value::as_array);
        ensure!(
            urls.is_some_and(|u| u.contains(&json!(url))),
            "the location of a single-url registration must list it in urls: {body}"
        );
        Ok(Outcome::Pass)
    })
}

fn register_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let id = random_id();
        let url = fake_url(c, &id).await?;
        let bodies = [
            ("broken JSON", "{\"id\"".to_string()),
            ("no urls", json!({"id": id, "kind": "storage"}).to_string()),
            (
                "a bad id",
                json!({"id": "xyz", "urls": [url], "kind": "storage"}).to_string(),
            ),
            (
                "an unknown kind",
                json!({"id": id, "urls": [url], "kind": "teapot"}).to_string(),
            ),
        ];
        for (what, body) in bodies {
            let resp = c.send(Method::POST, "/broker/register/", body).await?;
            warnings.merge(rejected_answer(
                &resp,
                &format!("registration with {what}"),
            )?);
        }
        c.get(&format!("/broker/location/{id}"))
            .await?
            .expect(404, "after refused registrations")?;
        warnings.outcome()
    })
}

/// The kind is optional in the reference's documents and required by this project
/// (and by the reference's code): a `full` rule.
fn register_without_kind(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let id = random_id();
        let url = fake_url(c, &id).await?;
        let body = json!({"id": id, "urls": [url]}).to_string();
        let resp = c.send(Method::POST, "/broker/register/", body).await?;
        let outcome = rejected_answer(&resp, "registration without a kind")?;
        c.get(&format!("/broker/location/{id}"))
            .await?
            .expect(404, "after a registration without a kind")?;
        Ok(outcome)
    })
}

/// Whether `listed` names `url`, also with a trailing slash (the WHATWG serialization
/// of an origin, `http://host:port/`, is the same base url).
fn same_url(listed: Option<&Value>, url: &str) -> bool {
    listed
        .and_then(Value::as_str)
        .is_some_and(|l| l.trim_end_matches('/') == url.trim_end_matches('/'))
}

fn location(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, url) = register_id(c, "storage").await?;
        let resp = c.get(&format!("/broker/location/{id}")).await?;
        resp.expect(200, "GET /broker/location/:id")?;
        let body: Value = resp.json()?;
        ensure!(
            body.get("id") == Some(&json!(id.to_string())),
            "location id must be the lowercase id asked for: {body}"
        );
        // The reference's documents answer `url`, its code `urls`: either names it.
        let urls = body.get("urls").and_then(Value::as_array);
        let in_urls = urls.is_some_and(|u| u.len() == 1 && same_url(u.first(), &url));
        let in_url = same_url(body.get("url"), &url);
        ensure!(
            in_urls || in_url,
            "the location must name the registered url in `urls` (or `url`): {body}"
        );
        let exact = body.get("urls") == Some(&json!([url])) || body.get("url") == Some(&json!(url));
        if !exact {
            return Ok(Outcome::Warn(format!(
                "the location adds a trailing slash to the registered url {url:?} \
                 (urls are stored without one): {body}"
            )));
        }
        Ok(Outcome::Pass)
    })
}

fn location_both(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, url) = register_id(c, "storage").await?;
        let resp = c.get(&format!("/broker/location/{id}")).await?;
        resp.expect(200, "GET /broker/location/:id")?;
        let body: Value = resp.json()?;
        ensure!(
            body.get("urls") == Some(&json!([url])),
            "location urls must be the registered urls: {body}"
        );
        ensure!(
            body.get("url") == Some(&json!(url)),
            "location url must be the first url: {body}"
        );
        Ok(Outcome::Pass)
    })
}

fn location_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        c.get(&format!("/broker/location/{}", random_id()))
            .await?
            .expect(404, "location of an unknown id")?;
        Ok(Outcome::Pass)
    })
}

fn registered(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (id, _) = register_id(c, "names").await?;
        let resp = c.get("/broker/registered/names").await?;
        resp.expect(200, "GET /broker/registered/names")?;
        let ids: Vec<String> = resp.json()?;
        ensure!(
            ids.contains(&id.to_string()),
            "the registered names server {id} is not listed: {ids:?}"
        );
        let empty = c.get("/broker/registered/files").await?;
        empty.expect(200, "GET /broker/registered/files")?;
        let _: Vec<String> = empty.json()?;
        Ok(Outcome::Pass)
    })
}

fn servers(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (id, _) = register_id(c, "productions").await?;
        let resp = c.get("/broker/servers/productions").await?;
        resp.expect(200, "GET /broker/servers/productions")?;
        let text = resp.text();
        let mut found = false;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if lowercase_id(line, "a /broker/servers/ line")? == id {
                found = true;
            }
        }
        ensure!(found, "the registered server {id} is not listed: {text:?}");
        if resp.media_type() != "text/plain" {
            warnings.add("Content-Type is not text/plain");
        }
        warnings.outcome()
    })
}

fn malformed_id(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = c.get("/broker/location/xyz").await?;
        malformed_answer(&resp, "GET /broker/location/xyz")
    })
}

fn id_case(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let id = random_id();
        let url = fake_url(c, &id).await?;
        c.json(
            Method::POST,
            "/broker/register/",
            &json!({"id": upper(&id), "urls": [url], "kind": "slots"}),
        )
        .await?
        .expect(200, "registration with an upper-case id")?;
        let resp = c.get(&format!("/broker/location/{}", upper(&id))).await?;
        resp.expect(200, "GET /broker/location/ with an upper-case id")?;
        let body: Value = resp.json()?;
        ensure!(
            body.get("id") == Some(&json!(id.to_string())),
            "ids must be emitted in lower case: {body}"
        );
        Ok(Outcome::Pass)
    })
}

fn trailing_slash(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let id = random_id();
        c.json(
            Method::POST,
            "/broker/register",
            &json!({"id": id, "urls": [fake_url(c, &id).await?], "kind": "storage"}),
        )
        .await?
        .expect(200, "POST /broker/register (no slash)")?;
        c.get(&format!("/broker/location/{id}/"))
            .await?
            .expect(200, "GET /broker/location/:id/")?;
        c.get("/broker/registered/storage/")
            .await?
            .expect(200, "GET /broker/registered/storage/")?;
        Ok(Outcome::Pass)
    })
}
