//! Files checks (`spec/files.md`): the parts of the files protocol that need no content
//! in the server's storage: node numbers in paths, mount request bodies, sync.

use reqwest::Method;

use crate::check::{
    BoxFuture, CheckDef, Ctx, Fail, Outcome, Resp, Verdict, Warnings, rejected_answer,
};
use crate::profile::Profile;

const DOC: &str = "files.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "files-unknown-node",
        doc: DOC,
        anchor: "files-nodes",
        title: "a node number that was never handed out is 404",
        profile: Profile::Core,
        run: unknown_node,
    },
    CheckDef {
        id: "files-malformed-node",
        doc: DOC,
        anchor: "files-nodes",
        title: "a node that is not a number is 400",
        profile: Profile::Core,
        run: malformed_node,
    },
    CheckDef {
        id: "files-unknown-node-changes",
        doc: DOC,
        anchor: "files-nodes",
        title: "changes addressed to a node never handed out are 404",
        profile: Profile::Core,
        run: unknown_node_changes,
    },
    CheckDef {
        id: "files-sync",
        doc: DOC,
        anchor: "files-write",
        title: "PUT /files/sync answers 200",
        profile: Profile::Core,
        run: sync,
    },
    CheckDef {
        id: "files-mount-malformed",
        doc: DOC,
        anchor: "files-mount",
        title: "mounting a body that is not a content link is 400",
        profile: Profile::Core,
        run: mount_malformed,
    },
];

/// A node number no server hands out in a short test run.
pub(crate) const UNKNOWN_NODE: u64 = 9_007_199_254_740_000;

/// The verdict on the answer about a node never handed out: 404 passes; 400 (the
/// reference's answer, a recorded divergence) warns; anything else fails.
fn unknown_node_answer(resp: &Resp, what: &str) -> Result<Outcome, Fail> {
    match resp.status {
        404 => Ok(Outcome::Pass),
        400 => Ok(Outcome::Warn(format!(
            "{what}: 400 for an unknown node (the reference's answer; 404 is preferred)"
        ))),
        _ => Err(Fail(format!(
            "{what}: expected 404, got {}",
            resp.describe()
        ))),
    }
}

fn unknown_node(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        for path in [
            format!("/files/info/{UNKNOWN_NODE}"),
            format!("/files/{UNKNOWN_NODE}"),
            format!("/files/directory/{UNKNOWN_NODE}"),
            format!("/files/lookup/{UNKNOWN_NODE}/name"),
        ] {
            let resp = c.get(&path).await?;
            warnings.merge(unknown_node_answer(&resp, &format!("GET {path}"))?);
        }
        warnings.outcome()
    })
}

fn unknown_node_changes(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let n = UNKNOWN_NODE;
        for (method, path) in [
            (Method::POST, format!("/files/unmount/{n}")),
            (Method::POST, format!("/files/{n}?offset=0")),
            (Method::PUT, format!("/files/{n}/name?kind=File")),
            (Method::PUT, format!("/files/size/{n}?size=0")),
            (Method::POST, format!("/files/remove/{n}/name")),
        ] {
            let resp = c.send(method.clone(), &path, "").await?;
            warnings.merge(unknown_node_answer(&resp, &format!("{method} {path}"))?);
        }
        warnings.outcome()
    })
}

fn sync(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        c.send(Method::PUT, "/files/sync", "")
            .await?
            .expect(200, "PUT /files/sync")?;
        Ok(Outcome::Pass)
    })
}

fn malformed_node(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        for path in ["/files/info/xyz", "/files/info/-1", "/files/directory/1.5"] {
            let resp = c.get(path).await?;
            warnings.merge(rejected_answer(&resp, &format!("GET {path}"))?);
        }
        warnings.outcome()
    })
}

fn mount_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        for (what, body) in [
            ("broken JSON", "{\"address\""),
            ("no address", "{}"),
            ("a bad address", "{\"address\":\"xyz\"}"),
        ] {
            let resp = c.send(Method::POST, "/files/mount", body).await?;
            warnings.merge(rejected_answer(&resp, &format!("mount with {what}"))?);
        }
        warnings.outcome()
    })
}
