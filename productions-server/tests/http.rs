//! In-process HTTP tests of the productions server: every route, every error path.
//!
//! Each test starts its own server on `127.0.0.1:0` over a fresh temporary data
//! directory. Success paths go through the typed [`ProductionsClient`]; status codes,
//! headers and error answers are checked with raw `reqwest`.

use std::path::Path;

use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::{Id, ProductionsClient};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tempfile::TempDir;

struct TestServer {
    dir: TempDir,
    server: Server,
    client: ProductionsClient,
    http: reqwest::Client,
}

impl TestServer {
    async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("create temp data dir");
        let server = launch(dir.path()).await;
        let client = ProductionsClient::new(server.url()).expect("productions client");
        TestServer {
            dir,
            server,
            client,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// Stops the server and starts a new one over the same data directory.
    async fn restart(self) -> TestServer {
        let TestServer { dir, server, .. } = self;
        server.stop().await.expect("stop server");
        let server = launch(dir.path()).await;
        let client = ProductionsClient::new(server.url()).expect("productions client");
        TestServer {
            dir,
            server,
            client,
            http: reqwest::Client::new(),
        }
    }
}

async fn launch(data_dir: &Path) -> Server {
    let options = ServerOptions::ephemeral(Role::Productions, data_dir);
    let ctx = ServerContext::prepare(options).expect("prepare server context");
    productions_server::start(&ctx)
        .await
        .expect("start productions server")
}

fn random_id(rng: &mut StdRng) -> Id {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    Id::from_bytes(bytes)
}

async fn status_and_text(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.expect("read body");
    (status, content_type, text)
}

#[tokio::test]
async fn put_then_get_returns_the_output_as_plain_text() {
    let t = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(1);
    let (task, input, output) = (
        random_id(&mut rng),
        random_id(&mut rng),
        random_id(&mut rng),
    );
    assert_eq!(t.client.get(&task, &input).await.expect("get"), None);
    t.client.put(&task, &input, &output).await.expect("put");
    assert_eq!(
        t.client.get(&task, &input).await.expect("get"),
        Some(output)
    );

    let response = t
        .http
        .get(t.url(&format!("/production/{task}/{input}")))
        .send()
        .await
        .expect("raw get");
    let (status, content_type, text) = status_and_text(response).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(text, output.to_string());

    // Ids are accepted in any case and with a trailing slash.
    let upper = format!(
        "/production/{}/{}/",
        task.to_string().to_uppercase(),
        input.to_string().to_uppercase()
    );
    let response = t.http.get(t.url(&upper)).send().await.expect("raw get");
    let (status, _, text) = status_and_text(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, output.to_string());

    // Task and input are not interchangeable.
    assert_eq!(t.client.get(&input, &task).await.expect("get"), None);
}

#[tokio::test]
async fn raw_put_with_uppercase_output_is_stored_lowercase() {
    let t = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(2);
    let (task, input, output) = (
        random_id(&mut rng),
        random_id(&mut rng),
        random_id(&mut rng),
    );
    let url = t.url(&format!(
        "/production/{task}/{input}/?output={}",
        output.to_string().to_uppercase()
    ));
    let response = t.http.put(url).send().await.expect("raw put");
    assert_eq!(response.status(), StatusCode::OK);
    let response = t
        .http
        .get(t.url(&format!("/production/{task}/{input}")))
        .send()
        .await
        .expect("raw get");
    assert_eq!(response.text().await.expect("body"), output.to_string());
}

#[tokio::test]
async fn unknown_production_is_404_with_a_reason() {
    let t = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(3);
    let (task, input) = (random_id(&mut rng), random_id(&mut rng));
    let response = t
        .http
        .get(t.url(&format!("/production/{task}/{input}")))
        .send()
        .await
        .expect("raw get");
    let (status, content_type, text) = status_and_text(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(text.contains(&task.to_string()), "{text}");
}

#[tokio::test]
async fn same_output_again_is_fine_and_a_different_one_replaces_it() {
    let t = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(4);
    let (task, input) = (random_id(&mut rng), random_id(&mut rng));
    let (first, second) = (random_id(&mut rng), random_id(&mut rng));
    t.client.put(&task, &input, &first).await.expect("put");
    t.client
        .put(&task, &input, &first)
        .await
        .expect("same again");
    assert_eq!(t.client.get(&task, &input).await.expect("get"), Some(first));
    t.client
        .put(&task, &input, &second)
        .await
        .expect("different output");
    assert_eq!(
        t.client.get(&task, &input).await.expect("get"),
        Some(second),
        "last write wins"
    );
}

#[tokio::test]
async fn malformed_input_is_400_and_writes_nothing() {
    let t = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(5);
    let (task, input, output) = (
        random_id(&mut rng),
        random_id(&mut rng),
        random_id(&mut rng),
    );
    let good = format!("/production/{task}/{input}");
    let cases = [
        // (method is PUT?, path, what the reason mentions)
        (
            true,
            format!("/production/nothex/{input}?output={output}"),
            "64",
        ),
        (
            true,
            format!(
                "/production/{task}/{}?output={output}",
                &input.to_string()[..63]
            ),
            "64",
        ),
        (true, good.clone(), "output"),
        (true, format!("{good}?other={output}"), "output"),
        (true, format!("{good}?output="), "output"),
        (true, format!("{good}?output=xyz"), "output"),
        (true, format!("{good}?output={output}0"), "output"),
        (true, format!("{good}?output=%zz"), ""),
        (false, format!("/production/{task}/nothex"), "64"),
        (
            false,
            format!("/production/{}g/{input}", &task.to_string()[..63]),
            "hex",
        ),
    ];
    for (put, path, mention) in cases {
        let url = t.url(&path);
        let request = if put {
            t.http.put(&url)
        } else {
            t.http.get(&url)
        };
        let response = request.send().await.expect("send");
        let (status, content_type, text) = status_and_text(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
        assert!(content_type.starts_with("text/plain"), "{path}");
        assert!(!text.trim().is_empty(), "{path}: a reason is given");
        assert!(text.contains(mention), "{path}: {text}");
    }
    assert_eq!(t.client.get(&task, &input).await.expect("get"), None);
}

#[tokio::test]
async fn other_methods_and_paths_are_refused() {
    let t = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(6);
    let (task, input) = (random_id(&mut rng), random_id(&mut rng));
    let response = t
        .http
        .post(t.url(&format!("/production/{task}/{input}")))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = t
        .http
        .get(t.url(&format!("/production/{task}")))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn restart_keeps_productions_and_the_server_id() {
    let t = TestServer::start().await;
    let id = t.client.id().await.expect("server id");
    let mut rng = StdRng::seed_from_u64(7);
    let mut recorded = Vec::new();
    for _ in 0..20 {
        let entry = (
            random_id(&mut rng),
            random_id(&mut rng),
            random_id(&mut rng),
        );
        t.client
            .put(&entry.0, &entry.1, &entry.2)
            .await
            .expect("put");
        recorded.push(entry);
    }
    let t = t.restart().await;
    assert_eq!(t.client.id().await.expect("server id"), id);
    for (task, input, output) in &recorded {
        assert_eq!(t.client.get(task, input).await.expect("get"), Some(*output));
    }
    assert!(t.dir.path().join("productions.redb").is_file());
}

#[tokio::test]
async fn concurrent_puts_are_all_recorded() {
    let t = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(8);
    let entries: Vec<(Id, Id, Id)> = (0..64)
        .map(|_| {
            (
                random_id(&mut rng),
                random_id(&mut rng),
                random_id(&mut rng),
            )
        })
        .collect();
    let puts = entries.iter().map(|(task, input, output)| {
        let client = t.client.clone();
        async move { client.put(task, input, output).await }
    });
    for result in futures_util::future::join_all(puts).await {
        result.expect("concurrent put");
    }
    for (task, input, output) in &entries {
        assert_eq!(t.client.get(task, input).await.expect("get"), Some(*output));
    }
}
