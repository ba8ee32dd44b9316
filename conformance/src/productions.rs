//! Productions checks (`spec/productions.md`): recording and reading task outputs.

use invariant_spec::Id;
use reqwest::Method;

use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Verdict, Warnings, ensure, lowercase_id,
    malformed_answer, random_id, rejected_answer, upper,
};
use crate::profile::Profile;

const DOC: &str = "productions.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "productions-put-get",
        doc: DOC,
        anchor: "productions-put",
        title: "PUT records an output that GET answers as text/plain",
        profile: Profile::Core,
        run: put_get,
    },
    CheckDef {
        id: "productions-get-unknown",
        doc: DOC,
        anchor: "productions-get",
        title: "GET of an unrecorded task and input is 404",
        profile: Profile::Core,
        run: get_unknown,
    },
    CheckDef {
        id: "productions-replace",
        doc: DOC,
        anchor: "productions-put",
        title: "recording another output for the same task and input replaces it",
        profile: Profile::Core,
        run: replace,
    },
    CheckDef {
        id: "productions-put-malformed",
        doc: DOC,
        anchor: "productions-put",
        title: "a missing or malformed output is 400 and records nothing",
        profile: Profile::Core,
        run: put_malformed,
    },
    CheckDef {
        id: "productions-malformed-id",
        doc: "common.md",
        anchor: "common-malformed-id",
        title: "a malformed task or input is a client error (400 preferred)",
        profile: Profile::Core,
        run: malformed_id,
    },
    CheckDef {
        id: "productions-id-case",
        doc: "common.md",
        anchor: "common-id-case",
        title: "ids are accepted in upper case and emitted in lower case",
        profile: Profile::Full,
        run: id_case,
    },
    CheckDef {
        id: "productions-trailing-slash",
        doc: "common.md",
        anchor: "common-trailing-slash",
        title: "routes answer with and without a trailing slash",
        profile: Profile::Core,
        run: trailing_slash,
    },
];

fn path(task: &impl std::fmt::Display, input: &impl std::fmt::Display) -> String {
    format!("/production/{task}/{input}")
}

async fn record(c: &Ctx, task: &Id, input: &Id, output: &str) -> Result<(), Fail> {
    c.call(c.req(
        Method::PUT,
        &format!("{}?output={output}", path(task, input)),
    ))
    .await?
    .expect(200, "PUT /production/:task/:input?output=")
}

async fn read(c: &Ctx, task: &Id, input: &Id) -> Result<Id, Fail> {
    let resp = c.get(&path(task, input)).await?;
    resp.expect(200, "GET /production/:task/:input")?;
    lowercase_id(&resp.text(), "the recorded output")
}

fn put_get(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (task, input, output) = (random_id(), random_id(), random_id());
        record(c, &task, &input, &output.to_string()).await?;
        let resp = c.get(&path(&task, &input)).await?;
        resp.expect(200, "GET /production/:task/:input")?;
        ensure!(
            lowercase_id(&resp.text(), "the recorded output")? == output,
            "GET answered {:?}, not {output}",
            resp.text()
        );
        if resp.media_type() != "text/plain" {
            warnings.add("Content-Type is not text/plain");
        }
        record(c, &task, &input, &output.to_string()).await?;
        ensure!(
            read(c, &task, &input).await? == output,
            "re-recording changed the output"
        );
        warnings.outcome()
    })
}

fn get_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (task, input) = (random_id(), random_id());
        c.get(&path(&task, &input))
            .await?
            .expect(404, "GET of an unrecorded production")?;
        record(c, &task, &input, &random_id().to_string()).await?;
        c.get(&path(&task, &random_id()))
            .await?
            .expect(404, "GET of a known task with another input")?;
        Ok(Outcome::Pass)
    })
}

fn replace(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (task, input, first, second) = (random_id(), random_id(), random_id(), random_id());
        record(c, &task, &input, &first.to_string()).await?;
        record(c, &task, &input, &second.to_string()).await?;
        let now = read(c, &task, &input).await?;
        ensure!(
            now == second,
            "after recording {second}, GET answered {now}"
        );
        Ok(Outcome::Pass)
    })
}

fn put_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let (task, input) = (random_id(), random_id());
        for (what, query) in [
            ("no output", String::new()),
            ("an empty output", "?output=".to_string()),
            ("a malformed output", "?output=xyz".to_string()),
            (
                "another parameter",
                "?result=".to_string() + &random_id().to_string(),
            ),
        ] {
            let resp = c
                .call(c.req(Method::PUT, &format!("{}{query}", path(&task, &input))))
                .await?;
            warnings.merge(rejected_answer(&resp, &format!("PUT with {what}"))?);
        }
        c.get(&path(&task, &input))
            .await?
            .expect(404, "after refused recordings")?;
        warnings.outcome()
    })
}

fn malformed_id(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let good = random_id();
        for p in [path(&"xyz", &good), path(&good, &"xyz")] {
            let resp = c.get(&p).await?;
            warnings.merge(malformed_answer(&resp, &format!("GET {p}"))?);
            let resp = c
                .call(c.req(Method::PUT, &format!("{p}?output={good}")))
                .await?;
            warnings.merge(malformed_answer(&resp, &format!("PUT {p}"))?);
        }
        warnings.outcome()
    })
}

fn id_case(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (task, input, output) = (random_id(), random_id(), random_id());
        c.call(c.req(
            Method::PUT,
            &format!(
                "{}?output={}",
                path(&upper(&task), &upper(&input)),
                upper(&output)
            ),
        ))
        .await?
        .expect(200, "PUT with upper-case ids")?;
        let got = read(c, &task, &input).await?;
        ensure!(got == output, "GET answered {got}, not {output}");
        Ok(Outcome::Pass)
    })
}

fn trailing_slash(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let (task, input, output) = (random_id(), random_id(), random_id());
        c.call(c.req(
            Method::PUT,
            &format!("{}/?output={output}", path(&task, &input)),
        ))
        .await?
        .expect(200, "PUT /production/:task/:input/?output=")?;
        let resp = c.get(&format!("{}/", path(&task, &input))).await?;
        resp.expect(200, "GET /production/:task/:input/")?;
        ensure!(
            lowercase_id(&resp.text(), "output")? == output,
            "wrong output"
        );
        Ok(Outcome::Pass)
    })
}
