//! # invariant-conformance
//!
//! Checks that a server speaks one of the invariant protocols as this project's
//! normative documents (`spec/*.md`) define it, using nothing but HTTP: point it at any
//! implementation.
//!
//! Each check tests one rule and cites it by anchor (`spec/storage.md#storage-put-mismatch`).
//! A check passes, fails, warns (the server's answer is allowed by the liberal-accept
//! rule but is not the preferred form, e.g. 404 instead of 400 for a malformed id) or
//! is skipped (it needs something the run does not have, such as a broker through which
//! the server under test can reach the suite's fake peers).
//!
//! - [`run`] runs every check of a [`Role`] (or those selected by [`Options::only`]) and
//!   returns a [`Report`].
//! - [`checks`] lists the checks of a role.
//! - [`reserve_suite_broker`] binds the suite's broker before the server under test
//!   starts, for the checks that need the server to find a second server (storage
//!   fetch, find notify).
//!
//! Against a server in auth mode (`spec/security.md`), [`Options::security`] carries
//! the token (and CAs) every request sends; with a token the `auth-*` checks also run:
//! every changing route must refuse a request without a token (401) or with a token
//! lacking the right (403) and change nothing. Without a token they are skipped.
//!
//! Modules: `check` (context and helpers), `helper` (the suite's fake peers and broker),
//! `report` (results), `auth` (authorization checks of every role), and one module of
//! checks per protocol.

mod auth;
mod broker;
mod check;
mod common;
mod distributor;
mod files;
mod find;
mod helper;
mod names;
mod productions;
mod report;
mod slots;
mod storage;

use std::time::{Duration, Instant};

pub use invariant_spec::http::ClientSecurity;

pub use helper::reserve_suite_broker;
pub use report::{CheckResult, Report, Status};

use check::{CheckDef, Ctx, Outcome};
use helper::Helper;

pub use invariant_spec::{Role, UnknownRole};

/// The checks of `role` alone (without the common and auth checks).
fn own_checks(role: Role) -> &'static [CheckDef] {
    match role {
        Role::Storage => storage::CHECKS,
        Role::Slots => slots::CHECKS,
        Role::Broker => broker::CHECKS,
        Role::Find => find::CHECKS,
        Role::Files => files::CHECKS,
        Role::Productions => productions::CHECKS,
        Role::Names => names::CHECKS,
        Role::Distributor => distributor::CHECKS,
    }
}

/// Every check that runs against a server of `role`.
fn all_checks(role: Role) -> impl Iterator<Item = &'static CheckDef> {
    common::CHECKS
        .iter()
        .chain(own_checks(role))
        .chain(auth::CHECKS)
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// The base url is not an absolute http(s) url.
    #[error("invalid base url {url:?}: {reason}")]
    InvalidUrl {
        /// The url as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// `--only` selects no check of the role.
    #[error("no {role} check is named or starts with {only:?}")]
    NoSuchCheck {
        /// The role.
        role: Role,
        /// The selector.
        only: String,
    },
    /// The suite's helper server could not be started.
    #[error("starting the suite's helper server: {0}")]
    Helper(#[source] std::io::Error),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The client settings (CA certificates, token) cannot be used.
    #[error("client settings: {0}")]
    Client(#[from] invariant_spec::ClientError),
}

/// Settings of one run.
#[derive(Debug)]
pub struct Options {
    /// Run only the check with this id, or those whose id starts with it.
    pub only: Option<String>,
    /// Limit of one request (and of each bounded wait). Default 10 s.
    pub request_timeout: Duration,
    /// Limit of one check. Default 30 s.
    pub check_timeout: Duration,
    /// A listener from [`reserve_suite_broker`] whose url the server under test was
    /// given as its broker: the suite serves a minimal broker there that resolves its
    /// fake peers.
    pub suite_broker: Option<std::net::TcpListener>,
    /// The broker the server under test uses (when it is not the suite's): the suite
    /// registers its fake peers there.
    pub broker: Option<String>,
    /// The server's configured blob size limit (storage): enables the oversize check.
    pub max_blob_size: Option<u64>,
    /// CAs to trust besides the system roots, and the token sent with every request.
    /// The token must carry every right the role's checks use (an operator token
    /// does); with one, the `auth-*` checks run (see `spec/security.md`).
    pub security: ClientSecurity,
    /// The server runs with `--auth-reads`: reads need a `<role>:read` right.
    pub auth_reads: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            only: None,
            request_timeout: Duration::from_secs(10),
            check_timeout: Duration::from_secs(30),
            suite_broker: None,
            broker: None,
            max_blob_size: None,
            security: ClientSecurity::default(),
            auth_reads: false,
        }
    }
}

/// The checks of `role`, common ones first: `(id, spec anchor, title)`.
pub fn checks(role: Role) -> Vec<(&'static str, String, &'static str)> {
    all_checks(role)
        .map(|c| (c.id, format!("spec/{}#{}", c.doc, c.anchor), c.title))
        .collect()
}

fn check_base_url(url: &str) -> Result<String, ConformanceError> {
    let trimmed = url.trim().trim_end_matches('/');
    let invalid = |reason: String| ConformanceError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".into()));
    }
    Ok(trimmed.to_string())
}

/// Runs the checks of `role` against the server at `base_url`.
pub async fn run(role: Role, base_url: &str, options: Options) -> Result<Report, ConformanceError> {
    let base = check_base_url(base_url)?;
    let selected: Vec<&CheckDef> = all_checks(role)
        .filter(|c| match &options.only {
            Some(only) => c.id == only || c.id.starts_with(only.as_str()),
            None => true,
        })
        .collect();
    if selected.is_empty() {
        return Err(ConformanceError::NoSuchCheck {
            role,
            only: options.only.clone().unwrap_or_default(),
        });
    }
    let token = options
        .security
        .token
        .clone()
        .filter(|t| !t.trim().is_empty());
    let http = ClientSecurity {
        token: token.clone(),
        ..options.security.clone()
    }
    .http_client()?;
    let anon = ClientSecurity {
        token: None,
        ..options.security.clone()
    }
    .http_client()?;
    let helper = Helper::start(options.suite_broker, options.broker, http.clone()).await?;
    let ctx = Ctx {
        role,
        base: base.clone(),
        http,
        anon,
        token,
        auth_reads: options.auth_reads,
        timeout: options.request_timeout,
        helper,
        max_blob_size: options.max_blob_size,
    };
    let mut results = Vec::with_capacity(selected.len());
    for check in selected {
        let started = Instant::now();
        let verdict = tokio::time::timeout(options.check_timeout, (check.run)(&ctx)).await;
        let (status, detail) = match verdict {
            Ok(Ok(Outcome::Pass)) => (Status::Pass, String::new()),
            Ok(Ok(Outcome::Warn(note))) => (Status::Warn, note),
            Ok(Ok(Outcome::Skip(note))) => (Status::Skip, note),
            Ok(Err(fail)) => (Status::Fail, fail.0),
            Err(_) => (
                Status::Fail,
                format!(
                    "did not finish within {} s",
                    options.check_timeout.as_secs_f32()
                ),
            ),
        };
        results.push(CheckResult {
            check: check.id.to_string(),
            title: check.title.to_string(),
            status,
            spec: format!("spec/{}#{}", check.doc, check.anchor),
            detail,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(Report {
        role: role.name().to_string(),
        url: base,
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn roles_parse_by_name() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
        }
        assert!("nope".parse::<Role>().is_err());
    }

    #[test]
    fn check_ids_are_unique_and_cite_an_anchor() {
        for role in Role::ALL {
            let mut seen = HashSet::new();
            for check in all_checks(role) {
                assert!(seen.insert(check.id), "duplicate check {}", check.id);
                assert!(check.doc.ends_with(".md"));
                assert!(!check.anchor.is_empty());
            }
        }
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            check_base_url("http://127.0.0.1:1/").expect("valid"),
            "http://127.0.0.1:1"
        );
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("nope").is_err());
    }
}
