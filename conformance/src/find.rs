//! Find checks (`spec/find.md`): has-records, the line format of answers, notify and
//! forwarding to a nearer find server (a suite peer).

use std::time::Duration;

use invariant_spec::Id;
use reqwest::Method;
use serde_json::json;

use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Resp, Verdict, Warnings, ensure, fail,
    malformed_answer, random_id, rejected_answer, upper,
};
use crate::profile::Profile;

const DOC: &str = "find.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "find-has",
        doc: DOC,
        anchor: "find-has",
        title: "PUT /find/has/ records holders that GET /find/:id answers as HAS lines",
        profile: Profile::Core,
        run: has,
    },
    CheckDef {
        id: "find-has-items",
        doc: DOC,
        anchor: "find-has",
        title: "the `items` spelling of a has-report is accepted",
        profile: Profile::Core,
        run: has_items,
    },
    CheckDef {
        id: "find-has-malformed",
        doc: DOC,
        anchor: "find-has",
        title: "a malformed has-report is 400 and records nothing",
        profile: Profile::Core,
        run: has_malformed,
    },
    CheckDef {
        id: "find-get-unknown",
        doc: DOC,
        anchor: "find-get",
        title: "GET /find/:id of an unknown block is 200 with no HAS line",
        profile: Profile::Core,
        run: get_unknown,
    },
    CheckDef {
        id: "find-line-format",
        doc: DOC,
        anchor: "find-get",
        title: "answers are text/plain lines `HAS <id>` or `CLOSER <id>`",
        profile: Profile::Core,
        run: line_format,
    },
    CheckDef {
        id: "find-notify",
        doc: DOC,
        anchor: "find-notify",
        title: "PUT /find/notify/ makes a nearer find server show up as CLOSER",
        profile: Profile::Core,
        run: notify,
    },
    CheckDef {
        id: "find-forward",
        doc: DOC,
        anchor: "find-forward",
        title: "has-records are forwarded to a known find server nearer to the block",
        profile: Profile::Core,
        run: forward,
    },
    CheckDef {
        id: "find-notify-malformed",
        doc: DOC,
        anchor: "find-notify",
        title: "a malformed notify is 400",
        profile: Profile::Core,
        run: notify_malformed,
    },
    CheckDef {
        id: "find-malformed-id",
        doc: "common.md",
        anchor: "common-malformed-id",
        title: "a malformed id in the path is a client error (400 preferred)",
        profile: Profile::Core,
        run: malformed_id,
    },
    CheckDef {
        id: "find-id-case",
        doc: "common.md",
        anchor: "common-id-case",
        title: "ids are accepted in upper case and emitted in lower case",
        profile: Profile::Full,
        run: id_case,
    },
    CheckDef {
        id: "find-trailing-slash",
        doc: "common.md",
        anchor: "common-trailing-slash",
        title: "routes answer with and without a trailing slash",
        profile: Profile::Core,
        run: trailing_slash,
    },
];

/// A parsed answer line.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Has(Id),
    Closer(Id),
}

/// Parses a find answer strictly: every non-empty line is `HAS <id>` or `CLOSER <id>`
/// with a lowercase id.
fn parse(resp: &Resp) -> Result<Vec<Line>, Fail> {
    let mut lines = Vec::new();
    for line in resp.text().lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (keyword, id) = line
            .split_once(' ')
            .ok_or_else(|| Fail(format!("answer line {line:?} is not `KEYWORD <id>`")))?;
        let parsed = Id::parse(id).map_err(|e| Fail(format!("answer line {line:?}: {e}")))?;
        ensure!(
            id == parsed.to_string(),
            "answer line {line:?}: ids are emitted in lower case"
        );
        match keyword {
            "HAS" => lines.push(Line::Has(parsed)),
            "CLOSER" => lines.push(Line::Closer(parsed)),
            other => fail!("answer line {line:?}: unknown keyword {other:?}"),
        }
    }
    Ok(lines)
}

async fn find(c: &Ctx, block: &Id) -> Result<Vec<Line>, Fail> {
    let resp = c.get(&format!("/find/{block}")).await?;
    resp.expect(200, "GET /find/:id")?;
    parse(&resp)
}

async fn report(c: &Ctx, container: &Id, blocks: &[Id]) -> Result<(), Fail> {
    c.json(
        Method::PUT,
        "/find/has/",
        &json!({"container": container, "ids": blocks}),
    )
    .await?
    .expect(200, "PUT /find/has/")
}

fn has(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (container, other) = (random_id(), random_id());
        let blocks = [random_id(), random_id()];
        report(c, &container, &blocks).await?;
        report(c, &other, &blocks[..1]).await?;
        let lines = find(c, &blocks[0]).await?;
        ensure!(
            lines.contains(&Line::Has(container)) && lines.contains(&Line::Has(other)),
            "GET /find/ of a block held by two containers must list both: {lines:?}"
        );
        let lines = find(c, &blocks[1]).await?;
        ensure!(
            lines.contains(&Line::Has(container)),
            "missing HAS line: {lines:?}"
        );
        ensure!(
            !lines.contains(&Line::Has(other)),
            "HAS for a container that never reported the block: {lines:?}"
        );
        // Reporting again is harmless.
        report(c, &container, &blocks).await?;
        let empty = c
            .json(
                Method::PUT,
                "/find/has/",
                &json!({"container": container, "ids": []}),
            )
            .await?;
        empty.expect(200, "a has-report with no ids")?;
        Ok(Outcome::Pass)
    })
}

fn has_items(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (container, block) = (random_id(), random_id());
        let resp = c
            .json(
                Method::PUT,
                "/find/has/",
                &json!({"container": container, "items": [block]}),
            )
            .await?;
        if (400..500).contains(&resp.status) {
            return Ok(Outcome::Warn(format!(
                "PUT /find/has/ with `items` (the reference documents' name) was refused ({}); \
                 the reference's code reads `ids` only, a recorded divergence",
                resp.describe()
            )));
        }
        resp.expect(200, "PUT /find/has/ with `items`")?;
        let lines = find(c, &block).await?;
        ensure!(
            lines.contains(&Line::Has(container)),
            "missing HAS line: {lines:?}"
        );
        Ok(Outcome::Pass)
    })
}

fn has_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let block = random_id();
        let bodies = [
            ("broken JSON", "{\"container\"".to_string()),
            ("no container", json!({"ids": [block]}).to_string()),
            ("no ids", json!({"container": random_id()}).to_string()),
            (
                "a bad id in the list",
                json!({"container": random_id(), "ids": [block, "xyz"]}).to_string(),
            ),
        ];
        for (what, body) in bodies {
            let resp = c.send(Method::PUT, "/find/has/", body).await?;
            warnings.merge(rejected_answer(&resp, &format!("has-report with {what}"))?);
        }
        let lines = find(c, &block).await?;
        ensure!(
            !lines.iter().any(|l| matches!(l, Line::Has(_))),
            "a refused has-report was recorded: {lines:?}"
        );
        warnings.outcome()
    })
}

fn get_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = c.get(&format!("/find/{}", random_id())).await?;
        if resp.status == 404 {
            return Ok(Outcome::Warn(
                "404 for a block nobody reported (200 with no HAS line is preferred)".into(),
            ));
        }
        resp.expect(200, "GET /find/ of an unknown block")?;
        let lines = parse(&resp)?;
        ensure!(
            !lines.iter().any(|l| matches!(l, Line::Has(_))),
            "HAS lines for a block nobody reported: {lines:?}"
        );
        Ok(Outcome::Pass)
    })
}

fn line_format(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (container, block) = (random_id(), random_id());
        report(c, &container, &[block]).await?;
        let resp = c.get(&format!("/find/{block}")).await?;
        resp.expect(200, "GET /find/:id")?;
        parse(&resp)?;
        if resp.media_type() != "text/plain" {
            warnings.add(format!(
                "Content-Type {:?}; text/plain is required",
                resp.header("content-type").unwrap_or("")
            ));
        }
        if !resp.text().ends_with('\n') {
            warnings.add("the last line has no newline");
        }
        warnings.outcome()
    })
}

/// Adds a suite peer find server and notifies the server of it. `None` when the server
/// cannot resolve it (no shared broker).
async fn notified_peer(c: &Ctx) -> Result<Option<Id>, Fail> {
    let peer = c.helper.add_peer("find", Vec::new()).await?;
    let resp = c
        .json(Method::PUT, "/find/notify/", &json!({"find": peer}))
        .await?;
    match resp.status {
        200 => Ok(Some(peer)),
        404 if !c.helper.brokered() => Ok(None),
        _ => fail!(
            "PUT /find/notify/ of a find server the broker knows: expected 200, got {}",
            resp.describe()
        ),
    }
}

fn notify(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let Some(peer) = notified_peer(c).await? else {
            return Ok(Outcome::Skip(
                "the server resolves find servers through a broker the suite does not know \
                 (give --suite-broker or --broker)"
                    .into(),
            ));
        };
        // The peer is at distance 0 from its own id: nearer than the server itself.
        let lines = find(c, &peer).await?;
        if !lines.contains(&Line::Closer(peer)) {
            return Ok(Outcome::Warn(format!(
                "after notify, GET /find/<its id> does not answer CLOSER {peer}: {lines:?}"
            )));
        }
        Ok(Outcome::Pass)
    })
}

fn forward(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let Some(peer) = notified_peer(c).await? else {
            return Ok(Outcome::Skip(
                "the server resolves find servers through a broker the suite does not know".into(),
            ));
        };
        let container = random_id();
        // A block equal to the peer's id: the peer is as near to it as can be.
        report(c, &container, &[peer]).await?;
        let deadline = tokio::time::Instant::now() + c.timeout;
        let wanted = peer.to_string();
        loop {
            let forwarded = c.helper.received(&peer).into_iter().any(|r| {
                r.route.contains("/find/has") && String::from_utf8_lossy(&r.body).contains(&wanted)
            });
            if forwarded {
                return Ok(Outcome::Pass);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Outcome::Warn(format!(
                    "the has-record was not forwarded to the nearer find server within {} s",
                    c.timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn notify_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        for (what, body) in [
            ("broken JSON", "{".to_string()),
            ("a bad id", json!({"find": "xyz"}).to_string()),
            ("no find", json!({}).to_string()),
        ] {
            let resp = c.send(Method::PUT, "/find/notify/", body).await?;
            warnings.merge(rejected_answer(&resp, &format!("notify with {what}"))?);
        }
        warnings.outcome()
    })
}

fn malformed_id(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = c.get("/find/xyz").await?;
        malformed_answer(&resp, "GET /find/xyz")
    })
}

fn id_case(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (container, block) = (random_id(), random_id());
        c.json(
            Method::PUT,
            "/find/has/",
            &json!({"container": upper(&container), "ids": [upper(&block)]}),
        )
        .await?
        .expect(200, "has-report with upper-case ids")?;
        let resp = c.get(&format!("/find/{}", upper(&block))).await?;
        resp.expect(200, "GET /find/ with an upper-case id")?;
        let lines = parse(&resp)?;
        ensure!(
            lines.contains(&Line::Has(container)),
            "missing HAS line: {lines:?}"
        );
        Ok(Outcome::Pass)
    })
}

fn trailing_slash(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (container, block) = (random_id(), random_id());
        c.json(
            Method::PUT,
            "/find/has",
            &json!({"container": container, "ids": [block]}),
        )
        .await?
        .expect(200, "PUT /find/has (no slash)")?;
        let resp = c.get(&format!("/find/{block}/")).await?;
        resp.expect(200, "GET /find/:id/")?;
        ensure!(
            parse(&resp)?.contains(&Line::Has(container)),
            "missing HAS line"
        );
        Ok(Outcome::Pass)
    })
}
