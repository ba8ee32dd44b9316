//! Storage checks (`spec/storage.md`): blobs by SHA-256 address, their headers, ranges,
//! conditional requests, hash verification, limits, fetching from a peer, deleting and
//! listing.
//!
//! The delete checks need the run's token to carry `storage:delete` (and the listing
//! check `storage:list`); without a token they run only when the server serves deletes
//! in open mode, and are skipped with the reason when it refuses them (403).

use bytes::Bytes;
use futures_util::future::join_all;
use invariant_spec::Id;
use reqwest::Method;
use serde_json::json;

use crate::check::{
    BoxFuture, CheckDef, Ctx, Outcome, Verdict, Warnings, ensure, fail, lowercase_id,
    malformed_answer, random_bytes, random_id, rejected_answer, upper,
};
use crate::profile::Profile;

const DOC: &str = "storage.md";
const MIB: usize = 1024 * 1024;

pub(crate) static CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "storage-post",
        doc: DOC,
        anchor: "storage-post",
        title: "POST /storage/ stores a blob and answers its address",
        profile: Profile::Core,
        run: post,
    },
    CheckDef {
        id: "storage-get",
        doc: DOC,
        anchor: "storage-get",
        title: "GET /storage/:address answers the bytes with ETag and Cache-Control",
        profile: Profile::Core,
        run: get,
    },
    CheckDef {
        id: "storage-get-absent",
        doc: DOC,
        anchor: "storage-get",
        title: "GET of an absent blob is 404",
        profile: Profile::Core,
        run: get_absent,
    },
    CheckDef {
        id: "storage-head",
        doc: DOC,
        anchor: "storage-head",
        title: "HEAD answers Content-Length and ETag, 404 when absent",
        profile: Profile::Core,
        run: head,
    },
    CheckDef {
        id: "storage-put",
        doc: DOC,
        anchor: "storage-put",
        title: "PUT /storage/:address stores a matching body, idempotently",
        profile: Profile::Core,
        run: put,
    },
    CheckDef {
        id: "storage-put-mismatch",
        doc: DOC,
        anchor: "storage-put-mismatch",
        title: "PUT of a body that does not hash to the address is 400 and stores nothing",
        profile: Profile::Core,
        run: put_mismatch,
    },
    CheckDef {
        id: "storage-range",
        doc: DOC,
        anchor: "storage-range",
        title: "Range requests answer 206 with Content-Range, 416 when unsatisfiable",
        profile: Profile::Full,
        run: range,
    },
    CheckDef {
        id: "storage-if-none-match",
        doc: DOC,
        anchor: "storage-if-none-match",
        title: "If-None-Match with the blob's ETag answers 304",
        profile: Profile::Full,
        run: if_none_match,
    },
    CheckDef {
        id: "storage-id-case",
        doc: "common.md",
        anchor: "common-id-case",
        title: "addresses are accepted in upper case",
        profile: Profile::Full,
        run: id_case,
    },
    CheckDef {
        id: "storage-malformed-address",
        doc: "common.md",
        anchor: "common-malformed-id",
        title: "a malformed address in the path is a client error (400 preferred)",
        profile: Profile::Core,
        run: malformed_address,
    },
    CheckDef {
        id: "storage-trailing-slash",
        doc: "common.md",
        anchor: "common-trailing-slash",
        title: "routes answer with and without a trailing slash",
        profile: Profile::Core,
        run: trailing_slash,
    },
    CheckDef {
        id: "storage-large",
        doc: DOC,
        anchor: "storage-limits",
        title: "blobs of 1 MiB and more are accepted and read back intact",
        profile: Profile::Core,
        run: large,
    },
    CheckDef {
        id: "storage-oversize",
        doc: DOC,
        anchor: "storage-limits",
        title: "a blob above the configured limit is refused with 413 and not stored",
        profile: Profile::Core,
        run: oversize,
    },
    CheckDef {
        id: "storage-concurrent-put",
        doc: DOC,
        anchor: "storage-atomic",
        title: "concurrent uploads of one blob all succeed and leave it intact",
        profile: Profile::Core,
        run: concurrent_put,
    },
    CheckDef {
        id: "storage-fetch-supported",
        doc: DOC,
        anchor: "storage-fetch",
        title: "HEAD /storage/fetch answers 200 or 404",
        profile: Profile::Core,
        run: fetch_supported,
    },
    CheckDef {
        id: "storage-fetch",
        doc: DOC,
        anchor: "storage-fetch",
        title: "PUT and POST /storage/fetch copy a blob from a peer found through the broker",
        profile: Profile::Core,
        run: fetch,
    },
    CheckDef {
        id: "storage-fetch-unknown",
        doc: DOC,
        anchor: "storage-fetch",
        title: "fetching from a container nobody knows is 404",
        profile: Profile::Core,
        run: fetch_unknown,
    },
    CheckDef {
        id: "storage-fetch-corrupt",
        doc: DOC,
        anchor: "storage-fetch-verify",
        title: "a fetched blob that does not hash to its address is refused and not stored",
        profile: Profile::Core,
        run: fetch_corrupt,
    },
    CheckDef {
        id: "storage-delete",
        doc: DOC,
        anchor: "storage-delete",
        title: "DELETE /storage/:address answers 204 (or 200), then GET and DELETE are 404",
        profile: Profile::Full,
        run: delete,
    },
    CheckDef {
        id: "storage-delete-batch",
        doc: DOC,
        anchor: "storage-delete-batch",
        title: "POST /storage/delete deletes the held blobs of a list and reports counts and bytes",
        profile: Profile::Full,
        run: delete_batch,
    },
    CheckDef {
        id: "storage-list",
        doc: DOC,
        anchor: "storage-list",
        title: "GET /storage/ pages through held blobs in ascending address order",
        profile: Profile::Full,
        run: list,
    },
    CheckDef {
        id: "storage-fetch-malformed",
        doc: DOC,
        anchor: "storage-fetch",
        title: "a malformed fetch request is 400",
        profile: Profile::Core,
        run: fetch_malformed,
    },
];

fn path(address: &impl std::fmt::Display) -> String {
    format!("/storage/{address}")
}

/// GET of blob `address` with one request header.
async fn get_with(
    c: &Ctx,
    address: &Id,
    name: &str,
    value: impl AsRef<str>,
) -> Result<crate::check::Resp, crate::check::Fail> {
    c.call(
        c.req(Method::GET, &path(address))
            .header(name, value.as_ref()),
    )
    .await
}

/// Stores `data` with POST and checks the answered address.
async fn store(c: &Ctx, data: &[u8]) -> Result<Id, crate::check::Fail> {
    let resp = c.send(Method::POST, "/storage/", data.to_vec()).await?;
    resp.expect(200, "POST /storage/")?;
    let address = lowercase_id(&resp.text(), "POST /storage/ answer")?;
    let expected = Id::of_content(data);
    ensure!(
        address == expected,
        "POST /storage/ answered {address}, but the body hashes to {expected}"
    );
    Ok(address)
}

/// Fails unless GET answers exactly `data`.
async fn read_back(c: &Ctx, address: &Id, data: &[u8]) -> Result<(), crate::check::Fail> {
    let resp = c.get(&path(address)).await?;
    resp.expect(200, "GET of a stored blob")?;
    ensure!(
        resp.body.as_ref() == data,
        "GET {address} answered {} bytes that differ from the {} stored",
        resp.body.len(),
        data.len()
    );
    Ok(())
}

/// Fails unless HEAD says the blob is absent.
async fn absent(c: &Ctx, address: &Id, why: &str) -> Result<(), crate::check::Fail> {
    let resp = c.head(&path(address)).await?;
    ensure!(
        resp.status == 404,
        "{why}: HEAD {address} should be 404 (nothing stored), got {}",
        resp.status
    );
    Ok(())
}

fn post(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let data = random_bytes(1000);
        let resp = c.send(Method::POST, "/storage/", data.clone()).await?;
        resp.expect(200, "POST /storage/")?;
        let address = lowercase_id(&resp.text(), "POST /storage/ answer")?;
        ensure!(
            address == Id::of_content(&data),
            "POST answered {address}, not the SHA-256 of the body"
        );
        if resp.media_type() != "text/plain" {
            warnings.add(format!(
                "POST /storage/ answer has Content-Type {:?}; text/plain is required",
                resp.header("content-type").unwrap_or("")
            ));
        }
        read_back(c, &address, &data).await?;
        warnings.outcome()
    })
}

fn get(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        let data = random_bytes(4096);
        let address = store(c, &data).await?;
        let resp = c.get(&path(&address)).await?;
        resp.expect(200, "GET /storage/:address")?;
        ensure!(resp.body.as_ref() == data, "GET answered different bytes");
        let etag = resp.header("etag").unwrap_or("");
        warnings.merge(etag_verdict(etag, &address, "GET")?);
        let cache = resp
            .header("cache-control")
            .unwrap_or("")
            .to_ascii_lowercase();
        ensure!(
            cache.contains("immutable"),
            "Cache-Control must contain immutable, got {cache:?}"
        );
        if !cache.contains("max-age") {
            warnings.add(format!("Cache-Control {cache:?} has no max-age"));
        }
        if resp.media_type() != "application/octet-stream" {
            warnings.add(format!(
                "Content-Type {:?}; application/octet-stream is required",
                resp.header("content-type").unwrap_or("")
            ));
        }
        if resp.header("content-length") != Some(&data.len().to_string()) {
            warnings.add("GET answer has no Content-Length equal to the blob size");
        }
        warnings.outcome()
    })
}

/// The verdict on an ETag: the quoted address passes; the bare address (the form of
/// the reference's documents, a recorded divergence) warns; anything else fails.
fn etag_verdict(etag: &str, address: &Id, what: &str) -> Verdict {
    if etag == format!("\"{address}\"") {
        Ok(Outcome::Pass)
    } else if etag.eq_ignore_ascii_case(&address.to_string()) {
        Ok(Outcome::Warn(format!(
            "{what} ETag is the bare address (the reference documents' form); the quoted \
             address is required by RFC 9110 and preferred"
        )))
    } else {
        fail!("{what} ETag must be the quoted address, got {etag:?}")
    }
}

fn get_absent(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let resp = c.get(&path(&random_id())).await?;
        resp.expect(404, "GET of an absent blob")?;
        Ok(Outcome::Pass)
    })
}

fn head(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(777);
        let address = store(c, &data).await?;
        let resp = c.head(&path(&address)).await?;
        resp.expect(200, "HEAD of a stored blob")?;
        ensure!(resp.body.is_empty(), "HEAD answered a body");
        ensure!(
            resp.header("content-length") == Some("777"),
            "HEAD Content-Length must be the blob size 777, got {:?}",
            resp.header("content-length")
        );
        let etag = etag_verdict(resp.header("etag").unwrap_or(""), &address, "HEAD")?;
        let missing = c.head(&path(&random_id())).await?;
        missing.expect(404, "HEAD of an absent blob")?;
        Ok(etag)
    })
}

fn put(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(2048);
        let address = Id::of_content(&data);
        let first = c.send(Method::PUT, &path(&address), data.clone()).await?;
        first.expect(200, "PUT /storage/:address")?;
        read_back(c, &address, &data).await?;
        let again = c.send(Method::PUT, &path(&address), data.clone()).await?;
        again.expect(200, "PUT of a blob already held")?;
        read_back(c, &address, &data).await?;
        Ok(Outcome::Pass)
    })
}

fn put_mismatch(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(512);
        let wrong = random_id();
        let resp = c.send(Method::PUT, &path(&wrong), data.clone()).await?;
        resp.expect(400, "PUT of a body that does not hash to the address")?;
        absent(c, &wrong, "after a refused PUT").await?;
        absent(c, &Id::of_content(&data), "after a refused PUT").await?;
        Ok(Outcome::Pass)
    })
}

fn range(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(1000);
        let address = store(c, &data).await?;
        let resp = get_with(c, &address, "range", "bytes=10-19").await?;
        resp.expect(206, "GET with Range: bytes=10-19")?;
        ensure!(
            resp.body.as_ref() == &data[10..20],
            "the 206 body is not bytes 10..=19 of the blob"
        );
        ensure!(
            resp.header("content-range") == Some("bytes 10-19/1000"),
            "Content-Range must be \"bytes 10-19/1000\", got {:?}",
            resp.header("content-range")
        );
        let suffix = get_with(c, &address, "range", "bytes=-5").await?;
        suffix.expect(206, "GET with Range: bytes=-5")?;
        ensure!(
            suffix.body.as_ref() == &data[995..],
            "a suffix range answered the wrong bytes"
        );
        let outside = get_with(c, &address, "range", "bytes=5000-6000").await?;
        outside.expect(416, "GET with a Range beyond the blob")?;
        Ok(Outcome::Pass)
    })
}

fn if_none_match(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(300);
        let address = store(c, &data).await?;
        let tag = format!("\"{address}\"");
        let resp = get_with(c, &address, "if-none-match", &tag).await?;
        resp.expect(304, "GET with If-None-Match: <its ETag>")?;
        ensure!(resp.body.is_empty(), "a 304 answer has a body");
        let other = get_with(c, &address, "if-none-match", format!("\"{}\"", random_id())).await?;
        other.expect(200, "GET with If-None-Match of another tag")?;
        Ok(Outcome::Pass)
    })
}

fn id_case(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(100);
        let address = store(c, &data).await?;
        let resp = c.get(&path(&upper(&address))).await?;
        resp.expect(200, "GET with the address in upper case")?;
        ensure!(
            resp.body.as_ref() == data,
            "upper-case GET answered other bytes"
        );
        if let Some(etag) = resp.header("etag") {
            ensure!(
                etag == format!("\"{address}\""),
                "the ETag must carry the lowercase address, got {etag:?}"
            );
        }
        let more = random_bytes(100);
        let put = c
            .send(
                Method::PUT,
                &path(&upper(&Id::of_content(&more))),
                more.clone(),
            )
            .await?;
        put.expect(200, "PUT with the address in upper case")?;
        read_back(c, &Id::of_content(&more), &more).await?;
        Ok(Outcome::Pass)
    })
}

fn malformed_address(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut warnings = Warnings::default();
        for bad in ["not-an-address", "abcd", &"g".repeat(64), &"a".repeat(66)] {
            let resp = c.get(&path(&bad)).await?;
            warnings.merge(malformed_answer(&resp, &format!("GET /storage/{bad}"))?);
        }
        let resp = c.send(Method::PUT, &path(&"xyz"), "data").await?;
        warnings.merge(malformed_answer(&resp, "PUT /storage/xyz")?);
        let resp = c.head(&path(&"xyz")).await?;
        warnings.merge(malformed_answer(&resp, "HEAD /storage/xyz")?);
        warnings.outcome()
    })
}

fn trailing_slash(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(64);
        let bare = c.send(Method::POST, "/storage", data.clone()).await?;
        bare.expect(200, "POST /storage (no slash)")?;
        let address = lowercase_id(&bare.text(), "POST /storage answer")?;
        let slash = c.get(&format!("/storage/{address}/")).await?;
        slash.expect(200, "GET /storage/:address/ (trailing slash)")?;
        ensure!(
            slash.body.as_ref() == data,
            "trailing-slash GET answered other bytes"
        );
        Ok(Outcome::Pass)
    })
}

fn large(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let size = match c.max_blob_size {
            Some(limit) => usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .min(MIB + 12345),
            None => MIB + 12345,
        };
        let data = random_bytes(size);
        let address = Id::of_content(&data);
        let resp = c.send(Method::PUT, &path(&address), data.clone()).await?;
        resp.expect(200, &format!("PUT of {size} bytes"))?;
        read_back(c, &address, &data).await?;
        let other = random_bytes(MIB);
        let posted = store(c, &other).await?;
        read_back(c, &posted, &other).await?;
        Ok(Outcome::Pass)
    })
}

fn oversize(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let Some(limit) = c.max_blob_size else {
            return Ok(Outcome::Skip(
                "the server's limit is unknown (give --max-blob-size)".into(),
            ));
        };
        let Ok(size) = usize::try_from(limit + 1) else {
            return Ok(Outcome::Skip("the limit is too large to test".into()));
        };
        if size > 64 * MIB {
            return Ok(Outcome::Skip(format!(
                "the limit of {limit} bytes is too large to test quickly"
            )));
        }
        let data = random_bytes(size);
        let address = Id::of_content(&data);
        // A server may also refuse by closing the connection (see `send_refusable`).
        if let Some(resp) = c
            .send_refusable(Method::PUT, &path(&address), data.clone())
            .await?
        {
            resp.expect(413, &format!("PUT of {size} bytes (limit {limit})"))?;
        }
        absent(c, &address, "after a refused PUT").await?;
        if let Some(posted) = c.send_refusable(Method::POST, "/storage/", data).await? {
            posted.expect(413, &format!("POST of {size} bytes (limit {limit})"))?;
        }
        absent(c, &address, "after a refused POST").await?;
        Ok(Outcome::Pass)
    })
}

fn concurrent_put(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = Bytes::from(random_bytes(300 * 1024));
        let address = Id::of_content(&data);
        let target = path(&address);
        let uploads = (0..8).map(|_| c.send(Method::PUT, &target, data.clone()));
        for resp in join_all(uploads).await {
            resp?.expect(200, "one of 8 concurrent PUTs of the same blob")?;
        }
        read_back(c, &address, &data).await?;
        Ok(Outcome::Pass)
    })
}

/// Whether the server says it can fetch (HEAD /storage/fetch).
async fn can_fetch(c: &Ctx) -> Result<bool, crate::check::Fail> {
    let resp = c.head("/storage/fetch").await?;
    match resp.status {
        200 => Ok(true),
        404 => Ok(false),
        other => fail!("HEAD /storage/fetch: expected 200 or 404, got {other}"),
    }
}

fn fetch_supported(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        can_fetch(c).await?;
        Ok(Outcome::Pass)
    })
}

fn fetch_body(address: &Id, container: &Id) -> serde_json::Value {
    json!({"address": address, "container": container})
}

fn fetch(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = Bytes::from(random_bytes(5000));
        let address = Id::of_content(&data);
        if !can_fetch(c).await? {
            let resp = c
                .json(
                    Method::PUT,
                    "/storage/fetch",
                    &fetch_body(&address, &random_id()),
                )
                .await?;
            resp.expect(404, "PUT /storage/fetch on a server that cannot fetch")?;
            return Ok(Outcome::Pass);
        }
        if !c.helper.brokered() {
            return Ok(Outcome::Skip(
                "the server fetches through a broker the suite does not know \
                 (give --suite-broker or --broker)"
                    .into(),
            ));
        }
        let second = Bytes::from(random_bytes(3000));
        let second_address = Id::of_content(&second);
        let peer = c
            .helper
            .add_peer(
                "storage",
                vec![(address, data.clone()), (second_address, second.clone())],
            )
            .await?;
        let resp = c
            .json(Method::PUT, "/storage/fetch", &fetch_body(&address, &peer))
            .await?;
        resp.expect(200, "PUT /storage/fetch from a peer holding the blob")?;
        read_back(c, &address, &data).await?;
        let resp = c
            .json(
                Method::POST,
                "/storage/fetch",
                &fetch_body(&second_address, &peer),
            )
            .await?;
        resp.expect(200, "POST /storage/fetch (the documented form)")?;
        read_back(c, &second_address, &second).await?;
        Ok(Outcome::Pass)
    })
}

fn fetch_unknown(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let address = random_id();
        let resp = c
            .json(
                Method::PUT,
                "/storage/fetch",
                &fetch_body(&address, &random_id()),
            )
            .await?;
        resp.expect(404, "PUT /storage/fetch from an unknown container")?;
        absent(c, &address, "after a failed fetch").await?;
        Ok(Outcome::Pass)
    })
}

fn fetch_corrupt(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        if !can_fetch(c).await? {
            return Ok(Outcome::Skip("the server cannot fetch".into()));
        }
        if !c.helper.brokered() {
            return Ok(Outcome::Skip(
                "the server fetches through a broker the suite does not know".into(),
            ));
        }
        let claimed = random_id();
        let served = Bytes::from(random_bytes(4000));
        let peer = c
            .helper
            .add_peer("storage", vec![(claimed, served)])
            .await?;
        let resp = c
            .json(Method::PUT, "/storage/fetch", &fetch_body(&claimed, &peer))
            .await?;
        ensure!(
            resp.status != 200,
            "the server accepted a fetched blob that does not hash to its address"
        );
        ensure!(
            resp.status < 500,
            "a corrupt peer is the peer's fault: expected 404, got {}",
            resp.describe()
        );
        absent(c, &claimed, "after fetching corrupt bytes").await?;
        if resp.status != 404 {
            return Ok(Outcome::Warn(format!(
                "answered {} for a corrupt peer (404 is preferred)",
                resp.status
            )));
        }
        Ok(Outcome::Pass)
    })
}

fn fetch_malformed(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        if !can_fetch(c).await? {
            return Ok(Outcome::Skip("the server cannot fetch".into()));
        }
        let mut warnings = Warnings::default();
        let resp = c.send(Method::PUT, "/storage/fetch", "{not json").await?;
        warnings.merge(rejected_answer(
            &resp,
            "PUT /storage/fetch with broken JSON",
        )?);
        let resp = c
            .json(
                Method::PUT,
                "/storage/fetch",
                &json!({"address": "xyz", "container": random_id()}),
            )
            .await?;
        warnings.merge(rejected_answer(
            &resp,
            "PUT /storage/fetch with a bad address",
        )?);
        let resp = c
            .json(
                Method::PUT,
                "/storage/fetch",
                &json!({"address": random_id()}),
            )
            .await?;
        warnings.merge(rejected_answer(
            &resp,
            "PUT /storage/fetch without container",
        )?);
        warnings.outcome()
    })
}

/// The skip of a delete check against an open-mode server that refuses deletes, or
/// the failure when the run's token should have allowed the delete.
fn delete_refused(c: &Ctx, resp: &crate::check::Resp, what: &str) -> Verdict {
    if c.token.is_none() && resp.status == 403 {
        return Ok(Outcome::Skip(format!(
            "no token given (--token) and the server refuses deletes in open mode ({}); \
             give a token with storage:delete, or start the server so that it serves \
             deletes in open mode (this project: --allow-open-delete)",
            resp.describe()
        )));
    }
    fail!(
        "{what} should delete the blob (204 or 200), got {}",
        resp.describe()
    )
}

fn delete(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let data = random_bytes(2000);
        let address = store(c, &data).await?;
        let resp = c.call(c.req(Method::DELETE, &path(&address))).await?;
        if !matches!(resp.status, 200 | 204) {
            return delete_refused(c, &resp, "DELETE of a held blob");
        }
        let resp = c.get(&path(&address)).await?;
        resp.expect(404, "GET after DELETE")?;
        absent(c, &address, "after DELETE").await?;
        let resp = c.call(c.req(Method::DELETE, &path(&address))).await?;
        resp.expect(404, "DELETE of a blob no longer held")?;
        let resp = c.call(c.req(Method::DELETE, &path(&random_id()))).await?;
        resp.expect(404, "DELETE of a blob never stored")?;
        let resp = c
            .call(c.req(Method::DELETE, "/storage/not-an-address"))
            .await?;
        malformed_answer(&resp, "DELETE with a malformed address")
    })
}

fn delete_batch(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let first = random_bytes(1500);
        let second = random_bytes(2500);
        let a = store(c, &first).await?;
        let b = store(c, &second).await?;
        let never = random_id();
        let resp = c
            .json(Method::POST, "/storage/delete", &json!([a, b, never]))
            .await?;
        if resp.status != 200 {
            return delete_refused(c, &resp, "POST /storage/delete");
        }
        let report: serde_json::Value = resp.json()?;
        let field = |name: &str| report.get(name).and_then(serde_json::Value::as_u64);
        ensure!(
            field("deleted") == Some(2)
                && field("missing") == Some(1)
                && field("bytes") == Some(4000),
            "POST /storage/delete of two held blobs (1500 and 2500 bytes) and one unknown \
             address should report deleted 2, missing 1, bytes 4000; got {report}"
        );
        for address in [a, b] {
            c.get(&path(&address))
                .await?
                .expect(404, "GET after a batch delete")?;
        }
        let resp = c
            .json(Method::POST, "/storage/delete", &json!(["not an address"]))
            .await?;
        rejected_answer(&resp, "POST /storage/delete with a malformed address")
    })
}

/// The address just below `id` (`id` must not be all zeros).
fn predecessor(id: &Id) -> Id {
    let mut bytes = *id.as_bytes();
    for byte in bytes.iter_mut().rev() {
        if *byte > 0 {
            *byte -= 1;
            break;
        }
        *byte = 0xff;
    }
    Id::from_bytes(bytes)
}

fn list(c: &Ctx) -> BoxFuture<'_, Verdict> {
    Box::pin(async move {
        let mut stored = Vec::new();
        for len in [700usize, 800, 900] {
            let data = random_bytes(len);
            stored.push((store(c, &data).await?, len as u64));
        }
        stored.sort();
        let page = |after: Option<Id>, limit: usize| async move {
            let mut path = format!("/storage/?limit={limit}");
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let resp = c.get(&path).await?;
            if resp.status == 401 || resp.status == 403 {
                return Err(crate::check::Fail(format!(
                    "GET {path} was refused ({}): the run's token needs storage:list",
                    resp.describe()
                )));
            }
            resp.expect(200, &format!("GET {path}"))?;
            let page: invariant_spec::storage::ListPage = resp.json()?;
            ensure!(
                page.blobs.len() <= limit,
                "GET {path} answered {} blobs, more than the limit",
                page.blobs.len()
            );
            ensure!(
                page.blobs.windows(2).all(|w| w[0].address < w[1].address),
                "GET {path}: the blobs are not in ascending address order"
            );
            ensure!(
                after.is_none_or(|a| page.blobs.iter().all(|b| b.address > a)),
                "GET {path}: a blob at or before `after` was listed"
            );
            Ok::<_, crate::check::Fail>(page)
        };
        // Nothing lies between the predecessor of our smallest address and it.
        let (first, first_len) = stored[0];
        let one = page(Some(predecessor(&first)), 1).await?;
        ensure!(
            one.blobs.first().map(|b| (b.address, b.size)) == Some((first, first_len)),
            "listing after the address just below {first} should start with it ({first_len} \
             bytes), got {}",
            one.blobs.first().map_or("nothing".to_string(), |b| format!(
                "{} ({} bytes)",
                b.address, b.size
            ))
        );
        ensure!(
            one.next.is_some(),
            "a full page (limit 1) with more blobs after it must name `next`"
        );
        // Each of our blobs is found by paging from just below it.
        for (address, len) in &stored[1..] {
            let found = page(Some(predecessor(address)), 1).await?;
            ensure!(
                found.blobs.first().map(|b| (b.address, b.size)) == Some((*address, *len)),
                "listing after the address just below {address} should start with it"
            );
        }
        page(None, 10).await?;
        Ok(Outcome::Pass)
    })
}
