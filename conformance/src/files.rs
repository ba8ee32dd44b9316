//! Files checks (`spec/files.md`): the parts of the files protocol that need no content
//! in the server's storage: node numbers in paths, mount request bodies, sync.

use reqwest::Method;

use crate::check::{BoxFuture, CheckDef, Ctx, Outcome, Verdict, Warnings, rejected_answer};

const DOC: &str = "files.md";

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "files-unknown-node",
        doc: DOC,
        anchor: "files-nodes",
        title: "a node number that was never handed out is 404",
        run: unknown_node,
    },
    CheckDef {
        id: "files-malformed-node",
        doc: DOC,
        anchor: "files-nodes",
        title: "a node that is not a number is 400",
        run: malformed_node,
    },
    CheckDef {
        id: "files-unknown-node-changes",
        doc: DOC,
        anchor: "files-nodes",
        title: "changes addressed to a node never handed out are 404",
        run: unknown_node_changes,
    },
    CheckDef {
        id: "files-sync",
        doc: DOC,
        anchor: "files-write",
        title: "PUT /files/sync answers 200",
        run: sync,
    },
    CheckDef {
        id: "files-mount-malformed",
        doc: DOC,
        anchor: "files-mount",
        title: "mounting a body that is not a content link is 400",
        run: mount_malformed,
    },
];

/// A node number no server hands out in a short test run.
pub(crate) const UNKNOWN_NODE: u64 = 9_007_199_254_740_000;

fn unknown_node(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        for path in [
            format!("/files/info/{UNKNOWN_NODE}"),
            format!("/files/{UNKNOWN_NODE}"),
            format!("/files/directory/{UNKNOWN_NODE}"),
            format!("/files/lookup/{UNKNOWN_NODE}/name"),
        ] {
            c.get(&path).await?.expect(404, &format!("GET {path}"))?;
        }
        Ok(Outcome::Pass)
    })
}

fn unknown_node_changes(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let n = UNKNOWN_NODE;
        for (method, path) in [
            (Method::POST, format!("/files/unmount/{n}")),
            (Method::POST, format!("/files/{n}?offset=0")),
            (Method::PUT, format!("/files/{n}/name?kind=File")),
            (Method::PUT, format!("/files/size/{n}?size=0")),
            (Method::POST, format!("/files/remove/{n}/name")),
        ] {
            let resp = c.send(method.clone(), &path, "").await?;
            resp.expect(404, &format!("{method} {path}"))?;
        }
        Ok(Outcome::Pass)
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
