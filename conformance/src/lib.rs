//! # invariant-conformance
//!
//! Checks that a server speaks one of the invariant protocols as this project's
//! normative documents (`spec/*.md`) define it, using nothing but HTTP: point it at any
//! implementation.
//!
//! Each check tests one rule, cites it by anchor (`spec/storage.md#storage-put-mismatch`)
//! and belongs to a [`Profile`]: `core` (what every implementation must do: the public
//! reference's documents with cited corrections), `full` (core plus this project's
//! extensions; the default) or `secure` (full plus the authorization rules; the
//! default when a token is given). Checks outside the run's profile are not run.
//! A check passes, fails, warns (the server's answer is allowed by the liberal-accept
//! rule or is a documented divergence of the reference, but is not the preferred form,
//! e.g. 404 instead of 400 for a malformed id) or is skipped (it needs something the
//! run does not have, such as a broker through which the server under test can reach
//! the suite's fake peers).
//!
//! - [`run`] runs the checks of a [`Role`] in a profile (or those selected by
//!   [`Options::only`]) and returns a [`Report`]; an unreachable server is one error
//!   ([`ConformanceError::Unreachable`]), and a server that stops accepting connections
//!   mid-run ends the run ([`Report::aborted`]).
//! - [`check_list`] and [`checks`] list the checks of a role.
//! - [`reserve_suite_broker`] binds the suite's broker before the server under test
//!   starts, for the checks that need the server to find a second server (storage
//!   fetch, find notify, distributor placement).
//!
//! Against a server in auth mode (`spec/security.md`), [`Options::security`] carries
//! the token (and CAs) every request sends; with a token the `auth-*` checks also run:
//! every changing route must refuse a request without a token (401) or with a token
//! lacking the right (403) and change nothing. Without a token they are skipped.
//!
//! Modules, lowest first: `verdict` (outcomes, failures, message helpers), `error`,
//! `profile` (profiles and `--only` selection), `helper` (the suite's fake peers and
//! broker), `check` (the run context and HTTP helpers), `report` (results, JSON and
//! JUnit), `auth` (authorization checks of every role), and one module of checks per
//! protocol.

mod auth;
mod broker;
mod check;
mod common;
mod distributor;
mod error;
mod files;
mod find;
mod helper;
mod names;
mod productions;
mod profile;
mod report;
mod slots;
mod storage;
mod verdict;

use std::time::{Duration, Instant, SystemTime};

pub use invariant_spec::http::ClientSecurity;

pub use error::ConformanceError;
pub use helper::reserve_suite_broker;
pub use profile::{Profile, UnknownProfile, selects};
pub use report::{CheckResult, Report, SPEC_VERSION, Status, Summary, TOOL_VERSION};

use check::{CheckDef, Ctx, Outcome};
use helper::Helper;

pub use invariant_spec::{Role, UnknownRole};

/// A role by name, also accepting `distribute` (the reference's and the broker's kind
/// name) for the distributor.
pub fn parse_role(name: &str) -> Result<Role, UnknownRole> {
    if name.trim().eq_ignore_ascii_case("distribute") {
        return Ok(Role::Distributor);
    }
    name.parse()
}

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

/// Settings of one run.
#[derive(Debug)]
pub struct Options {
    /// Run only the checks selected by this: a comma-separated list of exact check ids
    /// or glob patterns (`storage-get*`).
    pub only: Option<String>,
    /// The profile; `None` is [`Profile::Full`], or [`Profile::Secure`] when a token
    /// is given.
    pub profile: Option<Profile>,
    /// Limit of one request (and of each bounded wait). Default 10 s.
    pub request_timeout: Duration,
    /// Limit of one check. Default 30 s.
    pub check_timeout: Duration,
    /// A listener from [`reserve_suite_broker`] whose url the server under test was
    /// given as its broker: the suite serves a minimal broker there that resolves its
    /// fake peers.
    pub suite_broker: Option<std::net::TcpListener>,
    /// The broker the server under test uses (when it is not the suite's): the suite
    /// registers its fake peers there, and leaves those registrations behind (the
    /// broker protocol cannot remove one; the broker's liveness checks drop them once
    /// the fake peers stop answering at the end of the run).
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
            profile: None,
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

impl Options {
    /// The profile the run uses (see [`Options::profile`]).
    pub fn effective_profile(&self) -> Profile {
        self.profile.unwrap_or_else(|| {
            let token = self.security.token.as_deref().map(str::trim);
            if token.is_some_and(|t| !t.is_empty()) {
                Profile::Secure
            } else {
                Profile::Full
            }
        })
    }

    /// The settings as command-line style flags, for reports (never the token).
    fn flags(&self, profile: Profile) -> Vec<String> {
        let mut flags = vec![format!("--profile={profile}")];
        if let Some(only) = &self.only {
            flags.push(format!("--only={only}"));
        }
        if self.suite_broker.is_some() {
            flags.push("--suite-broker".into());
        }
        if let Some(broker) = &self.broker {
            flags.push(format!("--broker={broker}"));
        }
        if let Some(limit) = self.max_blob_size {
            flags.push(format!("--max-blob-size={limit}"));
        }
        if self.security.token.is_some() {
            flags.push("--token=<given>".into());
        }
        if self.auth_reads {
            flags.push("--auth-reads".into());
        }
        flags.push(format!("--timeout={}", self.request_timeout.as_secs()));
        flags
    }
}

/// One check as `--list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckInfo {
    /// The check id.
    pub id: &'static str,
    /// The smallest profile that runs it.
    pub profile: Profile,
    /// The cited rule: `spec/<doc>#<anchor>`.
    pub spec: String,
    /// The cited rule without the directory: `<doc>#<anchor>`.
    pub anchor: String,
    /// What it checks.
    pub title: &'static str,
}

/// The checks of `role` that run under `profile`, common ones first.
pub fn check_list(role: Role, profile: Profile) -> Vec<CheckInfo> {
    all_checks(role)
        .filter(|c| profile.includes(c.profile))
        .map(|c| CheckInfo {
            id: c.id,
            profile: c.profile,
            spec: format!("spec/{}#{}", c.doc, c.anchor),
            anchor: format!("{}#{}", c.doc, c.anchor),
            title: c.title,
        })
        .collect()
}

/// Every check of `role` (all profiles), common ones first: `(id, spec anchor, title)`.
pub fn checks(role: Role) -> Vec<(&'static str, String, &'static str)> {
    check_list(role, Profile::Secure)
        .into_iter()
        .map(|c| (c.id, c.spec, c.title))
        .collect()
}

fn check_base_url(url: &str) -> Result<reqwest::Url, ConformanceError> {
    let trimmed = url.trim().trim_end_matches('/');
    let invalid = |reason: String| ConformanceError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".into()));
    }
    if parsed.host_str().is_none() {
        return Err(invalid("the url has no host".into()));
    }
    Ok(parsed)
}

/// Whether something accepts TCP connections at the url's host and port; the error
/// says what the attempt answered.
async fn accepts_connections(url: &reqwest::Url, timeout: Duration) -> Result<(), String> {
    let host = url
        .host_str()
        .ok_or_else(|| "the url has no host".to_string())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| "the url has no port".to_string())?;
    let attempt = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {} s", timeout.as_secs_f32())),
    }
}

/// Runs the checks of `role` against the server at `base_url`.
///
/// Fails at once with [`ConformanceError::Unreachable`] when nothing accepts
/// connections there. When the server stops accepting connections during the run (it
/// crashed), the run stops: the check that was running fails, the rest are listed in
/// [`Report::not_run`] and [`Report::aborted`] says why.
pub async fn run(role: Role, base_url: &str, options: Options) -> Result<Report, ConformanceError> {
    let parsed = check_base_url(base_url)?;
    let base = parsed.as_str().trim_end_matches('/').to_string();
    let profile = options.effective_profile();
    let selected: Vec<&CheckDef> = all_checks(role)
        .filter(|c| profile.includes(c.profile))
        .filter(|c| match &options.only {
            Some(only) => selects(only, c.id),
            None => true,
        })
        .collect();
    if selected.is_empty() {
        return Err(ConformanceError::NoSuchCheck {
            role,
            profile: profile.name().to_string(),
            only: options.only.clone().unwrap_or_default(),
        });
    }
    accepts_connections(&parsed, options.request_timeout)
        .await
        .map_err(|reason| ConformanceError::Unreachable {
            url: base.clone(),
            reason,
        })?;
    let flags = options.flags(profile);
    let started_at = SystemTime::now();
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
    let mut aborted = None;
    let mut not_run = Vec::new();
    for check in selected {
        if aborted.is_some() {
            not_run.push(check.id.to_string());
            continue;
        }
        let started = Instant::now();
        let verdict = tokio::time::timeout(options.check_timeout, (check.run)(&ctx)).await;
        let (status, mut detail) = match verdict {
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
        if status == Status::Fail {
            if let Err(reason) = accepts_connections(&parsed, options.request_timeout).await {
                detail = format!("the server stopped accepting connections ({reason}); {detail}");
                aborted = Some(format!(
                    "the server at {base} stopped accepting connections during {} \
                     (did it crash?): {reason}",
                    check.id
                ));
            }
        }
        results.push(CheckResult {
            check: check.id.to_string(),
            title: check.title.to_string(),
            status,
            profile: check.profile,
            spec: format!("spec/{}#{}", check.doc, check.anchor),
            anchor: format!("{}#{}", check.doc, check.anchor),
            detail: report::clean_detail(&detail),
            cause: None,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
    let leftover = ctx.helper.finish();
    let mut notes = Vec::new();
    if leftover > 0 {
        notes.push(format!(
            "{leftover} fake registrations were made in the broker; their servers have \
             stopped, so its liveness checks drop them (spec/broker.md#broker-liveness)"
        ));
    }
    if let Some(reason) = &aborted {
        if !not_run.is_empty() {
            notes.push(format!("{reason}; {} checks not run", not_run.len()));
        }
    }
    Ok(Report::new(report::Run {
        role,
        url: base,
        profile,
        flags,
        started: started_at,
        finished: SystemTime::now(),
        results,
        aborted,
        not_run,
        notes,
    }))
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
        assert_eq!(parse_role("distribute"), Ok(Role::Distributor));
        assert_eq!(parse_role("Storage"), Ok(Role::Storage));
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
            check_base_url("http://127.0.0.1:1/")
                .expect("valid")
                .as_str()
                .trim_end_matches('/'),
            "http://127.0.0.1:1"
        );
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("nope").is_err());
    }
}
