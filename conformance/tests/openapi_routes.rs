//! Keeps `spec/openapi/<role>.yaml` and the routes our servers answer equal:
//!
//! 1. each server crate's `http::ROUTES` lists exactly the routes its router source
//!    registers (`.route(..)` calls in `src/http.rs`, read as text);
//! 2. the OpenAPI paths and methods equal those routes plus `GET /id` (trailing slashes
//!    ignored: they are optional on every route);
//! 3. a running server (started in-process) answers each route: not 405, and not the
//!    empty 404 of an unknown route;
//! 4. in auth mode, every route that is not a read (any method but GET/HEAD, except
//!    the distributor's `POST /blocks` query) refuses a request without a token (401)
//!    and with a token that is expired, from another root, lacking the role's rights,
//!    or narrowed away from them (403); reads and `GET /id` stay open;
//! 5. the OpenAPI files declare the `bearerAuth` scheme, and exactly the operations
//!    that need a right (by the runtime's table, `invariant_runtime::auth::required`)
//!    list it, next to `{}` (open mode), with 401 and 403 answers.
//!
//! The distributor's `http` module is private, so its route list comes from step 1's
//! source reading alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use tempfile::TempDir;

type Routes = BTreeSet<(String, String)>;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn normalize(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

fn set(routes: &[(&str, &str)]) -> Routes {
    routes
        .iter()
        .map(|(m, p)| (m.to_ascii_uppercase(), normalize(p)))
        .collect()
}

/// The (method, path) pairs of an OpenAPI file.
fn openapi_routes(role: &str) -> Routes {
    let path = workspace().join(format!("spec/openapi/{role}.yaml"));
    let text = std::fs::read_to_string(&path).expect("read OpenAPI file");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("OpenAPI is YAML");
    assert_eq!(
        doc.get("openapi").and_then(|v| v.as_str()),
        Some("3.1.0"),
        "{role}.yaml must be OpenAPI 3.1.0"
    );
    let paths = doc
        .get("paths")
        .and_then(|p| p.as_mapping())
        .expect("paths");
    let mut out = Routes::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path key");
        let item = item.as_mapping().expect("path item");
        for (method, _) in item {
            let method = method.as_str().expect("method key");
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method)
            {
                out.insert((method.to_ascii_uppercase(), normalize(path)));
            }
        }
    }
    out
}

/// The routes a router source registers: every `.route("<path>", <methods>)`, with
/// each `.nest("<prefix>", ..)` prefix applied when the file nests.
fn source_routes(krate: &str) -> Routes {
    let text =
        std::fs::read_to_string(workspace().join(krate).join("src/http.rs")).expect("read http.rs");
    let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
    let mut routes = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let Some(open) = rest.find('"') else { break };
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else { break };
        let path = &after[..close];
        // The method router: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in after[close + 1..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = close + 1 + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let methods = &after[close + 1..end];
        for method in ["get", "head", "put", "post", "delete", "patch", "options"] {
            let call = format!("{method}(");
            let found = methods.match_indices(&call).any(|(i, _)| {
                i == 0
                    || !methods[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if found {
                routes.push((method.to_ascii_uppercase(), path.to_string()));
            }
        }
        rest = &after[end..];
    }
    let prefixes: Vec<String> = code
        .match_indices(".nest(\"")
        .filter_map(|(i, _)| {
            let tail = &code[i + ".nest(\"".len()..];
            tail.find('"').map(|end| tail[..end].to_string())
        })
        .collect();
    let mut out = Routes::new();
    for (method, path) in routes {
        if prefixes.is_empty() {
            out.insert((method, normalize(&path)));
        } else {
            for prefix in &prefixes {
                out.insert((method.clone(), normalize(&format!("{prefix}{path}"))));
            }
        }
    }
    out
}

fn with_id(mut routes: Routes) -> Routes {
    routes.insert(("GET".into(), "/id".into()));
    routes
}

async fn start(role: Role, dir: &Path) -> Server {
    start_with(role, ServerOptions::ephemeral(role, dir)).await
}

async fn start_with(role: Role, options: ServerOptions) -> Server {
    let ctx = ServerContext::prepare(options).expect("context");
    match role {
        Role::Storage => storage_server::start(&ctx, Default::default())
            .await
            .expect("storage"),
        Role::Slots => slots_server::start(&ctx, Default::default())
            .await
            .expect("slots"),
        Role::Broker => broker_server::start(&ctx, Default::default())
            .await
            .expect("broker"),
        Role::Find => find_server::start(&ctx, Default::default())
            .await
            .expect("find"),
        Role::Names => names_server::start(&ctx, Default::default())
            .await
            .expect("names"),
        Role::Productions => productions_server::start(&ctx).await.expect("productions"),
        Role::Distributor => distributor::start(&ctx, Default::default())
            .await
            .expect("distributor"),
        Role::Files => files_server::start(&ctx, Default::default())
            .await
            .expect("files"),
    }
}

/// A concrete path for a route pattern: ids become random hex, kinds `storage`, names
/// a valid DNS name.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment {
            "{kind}" => "storage".to_string(),
            "{name}" => "conformance.test".to_string(),
            s if s.starts_with('{') => invariant_spec::Id::random().to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Fails unless the running server answers every route.
async fn probe(base: &str, routes: &Routes) {
    let http = reqwest::Client::new();
    for (method, pattern) in routes {
        let url = format!("{base}{}", concrete(pattern));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = http
            .request(method.clone(), &url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        assert_ne!(
            status, 405,
            "{method} {pattern}: the server has no such method"
        );
        if method != reqwest::Method::HEAD {
            assert!(
                !(status == 404 && body.is_empty()),
                "{method} {pattern}: the server has no such route (bare 404)"
            );
        }
    }
}

async fn check(role: Role, name: &str, krate: &str, exported: Option<&[(&str, &str)]>) {
    let from_source = source_routes(krate);
    assert!(
        !from_source.is_empty(),
        "no routes found in {krate}/src/http.rs"
    );
    if let Some(exported) = exported {
        assert_eq!(
            set(exported),
            from_source,
            "{krate}: http::ROUTES differs from the routes its router registers"
        );
    }
    let served = with_id(from_source);
    let documented = openapi_routes(name);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "{name}: routes served but not in spec/openapi/{name}.yaml: {undocumented:?}; \
         documented but not served: {unserved:?}"
    );
    let dir: TempDir = tempfile::tempdir().expect("tempdir");
    let server = start(role, dir.path()).await;
    probe(server.url(), &served).await;
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn storage() {
    check(
        Role::Storage,
        "storage",
        "storage-server",
        Some(storage_server::http::ROUTES),
    )
    .await;
}

#[tokio::test]
async fn slots() {
    check(
        Role::Slots,
        "slots",
        "slots-server",
        Some(slots_server::http::ROUTES),
    )
    .await;
}

#[tokio::test]
async fn broker() {
    check(
        Role::Broker,
        "broker",
        "broker-server",
        Some(broker_server::http::ROUTES),
    )
    .await;
}

#[tokio::test]
async fn find() {
    check(
        Role::Find,
        "find",
        "find-server",
        Some(find_server::http::ROUTES),
    )
    .await;
}

#[tokio::test]
async fn names() {
    check(
        Role::Names,
        "names",
        "names-server",
        Some(names_server::http::ROUTES),
    )
    .await;
}

#[tokio::test]
async fn productions() {
    check(
        Role::Productions,
        "productions",
        "productions-server",
        Some(productions_server::http::ROUTES),
    )
    .await;
}

#[tokio::test]
async fn distributor() {
    check(Role::Distributor, "distributor", "distributor", None).await;
}

#[tokio::test]
async fn files() {
    check(
        Role::Files,
        "files",
        "files-server",
        Some(files_server::http::ROUTES),
    )
    .await;
}

/// Whether a route of `role` is a read that stays open without `--auth-reads`, by the
/// runtime's table (a `GET` may need a right of its own, such as `storage:list`).
fn is_read(role: Role, method: &str, pattern: &str) -> bool {
    use invariant_runtime::auth::{Access, required};
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return false;
    };
    matches!(
        required(role, &method, &normalize(&concrete(pattern))),
        Access::Open | Access::Read
    )
}

#[tokio::test]
async fn every_mutating_route_requires_a_token() {
    use invariant_test_support::TestAuth;
    let auth = TestAuth::new();
    let roles = [
        (Role::Storage, "storage-server"),
        (Role::Slots, "slots-server"),
        (Role::Broker, "broker-server"),
        (Role::Find, "find-server"),
        (Role::Names, "names-server"),
        (Role::Productions, "productions-server"),
        (Role::Distributor, "distributor"),
        (Role::Files, "files-server"),
    ];
    let anonymous = reqwest::Client::new();
    for (role, krate) in roles {
        let right = role.right_name();
        let own = auth.token("owner", &format!("{right}:*"));
        let other = if role == Role::Names {
            "productions"
        } else {
            "names"
        };
        let refused = [
            ("expired", auth.expired("x", &format!("{right}:*"))),
            ("foreign root", auth.foreign("x")),
            (
                "another role's rights",
                auth.token("x", &format!("{other}:*,*:read")),
            ),
            ("read only", auth.token("x", &format!("{right}:read"))),
            (
                "narrowed away",
                auth.attenuated(&own, &format!("{right}:read")),
            ),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = ServerOptions::ephemeral(role, dir.path());
        options.auth.root = Some(auth.public());
        let server = start_with(role, options).await;
        let routes = with_id(source_routes(krate));
        let mut protected = 0;
        for (method, pattern) in &routes {
            let url = format!("{}{}", server.url(), concrete(pattern));
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let send = |client: &reqwest::Client| {
                client
                    .request(m.clone(), &url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
            };
            let status = send(&anonymous).await.expect("send").status().as_u16();
            if is_read(role, method, pattern) {
                assert_ne!(
                    status, 401,
                    "{krate}: {method} {pattern} is a read and stays open"
                );
                continue;
            }
            protected += 1;
            assert_eq!(status, 401, "{krate}: {method} {pattern} without a token");
            for (what, token) in &refused {
                let status = send(&TestAuth::client(token)).await.expect("send").status();
                assert_eq!(
                    status.as_u16(),
                    403,
                    "{krate}: {method} {pattern} with a token {what}"
                );
            }
        }
        assert!(protected > 0, "{krate}: no mutating route was tried");
        server.stop().await.expect("stop");
    }
}

/// The security requirement names of an operation (`""` for the empty one).
fn requirements(operation: &serde_yaml_ng::Value) -> Vec<String> {
    operation
        .get("security")
        .and_then(|s| s.as_sequence())
        .map(|alternatives| {
            alternatives
                .iter()
                .map(|a| {
                    a.as_mapping()
                        .and_then(|m| m.keys().next())
                        .and_then(|k| k.as_str())
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn operations_that_need_a_right_declare_the_bearer_scheme() {
    use invariant_runtime::auth::{Access, required};
    for role in Role::ALL {
        let name = match role {
            Role::Distributor => "distributor",
            other => other.kind(),
        };
        let path = workspace().join(format!("spec/openapi/{name}.yaml"));
        let text = std::fs::read_to_string(&path).expect("read OpenAPI file");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
        let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!(scheme["type"].as_str(), Some("http"), "{name}: bearerAuth");
        assert_eq!(
            scheme["scheme"].as_str(),
            Some("bearer"),
            "{name}: bearerAuth"
        );
        let paths = doc["paths"].as_mapping().expect("paths");
        let mut secured = 0;
        for (pattern, item) in paths {
            let pattern = pattern.as_str().expect("path");
            let concrete = normalize(&concrete(pattern));
            for (method, operation) in item.as_mapping().expect("path item") {
                let method = method.as_str().expect("method").to_ascii_uppercase();
                let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
                    continue;
                };
                if operation.get("responses").is_none() {
                    continue;
                }
                let needs_right = matches!(required(role, &m, &concrete), Access::Action(_));
                let names = requirements(operation);
                if needs_right {
                    secured += 1;
                    assert_eq!(
                        names,
                        ["", "bearerAuth"],
                        "{name}: {method} {pattern} must list {{}} and bearerAuth"
                    );
                    for status in ["401", "403"] {
                        assert!(
                            !operation["responses"][status].is_null(),
                            "{name}: {method} {pattern} must document {status}"
                        );
                    }
                } else {
                    assert!(
                        names.is_empty(),
                        "{name}: {method} {pattern} is a read and lists no security"
                    );
                }
            }
        }
        assert!(secured > 0, "{name}: no operation needs a right");
    }
}

#[test]
fn files_description_is_openapi() {
    let routes = openapi_routes("files");
    assert!(routes.contains(&("POST".to_string(), "/files/mount".to_string())));
    assert!(routes.contains(&("GET".to_string(), "/id".to_string())));
}

#[test]
fn source_reader_understands_method_chains() {
    let storage = source_routes("storage-server");
    assert!(storage.contains(&("HEAD".to_string(), "/storage/fetch".to_string())));
    assert!(storage.contains(&("POST".to_string(), "/storage/fetch".to_string())));
    assert!(storage.contains(&("GET".to_string(), "/storage/{address}".to_string())));
    assert!(!storage.contains(&("GET".to_string(), "/storage/fetch".to_string())));
}
