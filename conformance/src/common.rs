//! Checks common to every role (`spec/common.md`): the server's own id.

use reqwest::Method;

use crate::check::{BoxFuture, CheckDef, Ctx, Outcome, Verdict, Warnings, ensure, lowercase_id};
use crate::profile::Profile;

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "common-id",
        doc: "common.md",
        anchor: "common-id",
        title: "GET /id/ and /id answer the server id as text/plain",
        profile: Profile::Core,
        run: id,
    },
    CheckDef {
        id: "common-id-stable",
        doc: "common.md",
        anchor: "common-id-stable",
        title: "the server id does not change between requests",
        profile: Profile::Core,
        run: id_stable,
    },
    CheckDef {
        id: "common-unknown-route",
        doc: "common.md",
        anchor: "common-errors",
        title: "a path outside the protocol gets 404, not 5xx",
        profile: Profile::Core,
        run: unknown_route,
    },
];

fn id(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let slash = c.get("/id/").await?;
        slash.expect(200, "GET /id/")?;
        let bare = c.get("/id").await?;
        bare.expect(200, "GET /id")?;
        let a = lowercase_id(&slash.text(), "GET /id/")?;
        let b = lowercase_id(&bare.text(), "GET /id")?;
        ensure!(a == b, "GET /id/ answered {a} but GET /id answered {b}");
        if slash.media_type() != "text/plain" {
            warnings.add(format!(
                "GET /id/ has Content-Type {:?}, text/plain is preferred",
                slash.header("content-type").unwrap_or("")
            ));
        }
        warnings.outcome()
    })
}

fn id_stable(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let first = lowercase_id(&c.get("/id/").await?.text(), "GET /id/")?;
        for _ in 0..3 {
            let again = lowercase_id(&c.get("/id/").await?.text(), "GET /id/")?;
            ensure!(again == first, "the id changed from {first} to {again}");
        }
        Ok(Outcome::Pass)
    })
}

fn unknown_route(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = c
            .call(c.req(Method::GET, "/no-such-protocol/conformance"))
            .await?;
        ensure!(
            resp.status == 404,
            "GET /no-such-protocol/conformance: expected 404, got {}",
            resp.describe()
        );
        Ok(Outcome::Pass)
    })
}
