//! `invariant-conformance`: runs the protocol checks of one role against a server and
//! prints a table (or JSON, or JUnit XML to a file).
//!
//! Exit status: 0 every check passed (warnings allowed); 1 a check failed; 2 a usage
//! error, or the server is unreachable or stopped answering during the run; 3 no
//! check failed but some were skipped and `--strict` asks for none.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use invariant_conformance::{
    ClientSecurity, Options, Profile, Role, Status, check_list, parse_role, run,
};
use invariant_spec::http::read_token_file;

/// Checks that a server speaks an invariant protocol as spec/*.md defines it.
#[derive(Parser, Debug)]
#[command(name = "invariant-conformance", version, about)]
struct Cli {
    /// The protocol: storage, slots, broker, find, files, productions, names,
    /// distributor (or distribute).
    #[arg(value_parser = parse_role)]
    role: Role,

    /// The server's base url, e.g. http://127.0.0.1:3001.
    base_url: String,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// Run only these checks: a comma-separated list of exact ids or glob patterns
    /// (`storage-get*`, `*-id-case`).
    #[arg(long)]
    only: Option<String>,

    /// The rules to hold the server to: core (the reference's documents), full (core
    /// plus this project's extensions), secure (full plus the authorization rules).
    /// Default: full, or secure when a token is given.
    #[arg(long, value_name = "PROFILE")]
    profile: Option<Profile>,

    /// Exit with status 3 when no check failed but some were skipped.
    #[arg(long)]
    strict: bool,

    /// Also write the report as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,

    /// List the role's checks (with --profile, those of that profile) and exit.
    #[arg(long)]
    list: bool,

    /// Serve the suite's broker at this address (e.g. 127.0.0.1:3999); start the
    /// server under test with `--broker http://<this address>` so it can reach the
    /// suite's fake peers (storage fetch, find notify).
    #[arg(long, value_name = "ADDR")]
    suite_broker: Option<std::net::SocketAddr>,

    /// The broker the server under test uses; the suite registers its fake peers there.
    /// These registrations stay behind after the run: the broker protocol has no way
    /// to remove one. The fake peers stop answering when the run ends, so the broker's
    /// liveness checks drop them (spec/broker.md#broker-liveness; about 30 s for a
    /// broker of this project).
    #[arg(long, value_name = "URL", conflicts_with = "suite_broker")]
    broker: Option<String>,

    /// The server's blob size limit in bytes (storage): enables the 413 check.
    #[arg(long)]
    max_blob_size: Option<u64>,

    /// Capability token sent with every request, for a server in auth mode
    /// (spec/security.md). It must carry every right the checks use (an operator
    /// token does). With a token the auth-* checks run; the tokens they need refused
    /// are derived from it offline (attenuation), so no key is needed.
    #[arg(long, env = "INVARIANT_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// File holding the token (its first non-empty line).
    #[arg(long, env = "INVARIANT_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,

    /// PEM file of CA certificates to trust (besides the system roots) for https urls.
    #[arg(long, env = "INVARIANT_CA_CERT")]
    ca_cert: Option<PathBuf>,

    /// The server runs with --auth-reads: the auth-reads check expects reads without a
    /// token to be refused (401) instead of open.
    #[arg(long)]
    auth_reads: bool,

    /// Seconds one request (or one bounded wait) may take.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Exit status of a usage error or an unreachable server.
const USAGE_OR_UNREACHABLE: u8 = 2;
/// Exit status of a run without failures but with skips, under `--strict`.
const STRICT_SKIPS: u8 = 3;

fn main() -> ExitCode {
    invariant_runtime::stdout::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("invariant-conformance: error: {e:#}");
            ExitCode::from(USAGE_OR_UNREACHABLE)
        }
    }
}

fn list(cli: &Cli) -> anyhow::Result<ExitCode> {
    let checks = check_list(cli.role, cli.profile.unwrap_or(Profile::Secure));
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in checks {
            println!(
                "{:<32} {:<7} {:<48} {}",
                c.id,
                c.profile.name(),
                c.spec,
                c.title
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_cli(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.list {
        return list(&cli);
    }
    let suite_broker = match cli.suite_broker {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the suite broker at {addr}"))?,
        ),
        None => None,
    };
    let mut security = ClientSecurity::default();
    if let Some(path) = &cli.ca_cert {
        security.add_ca_file(path)?;
    }
    security.token = match (cli.token, &cli.token_file) {
        (Some(token), _) => Some(token.trim().to_string()).filter(|t| !t.is_empty()),
        (None, Some(path)) => Some(read_token_file(path)?),
        (None, None) => None,
    };
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let options = Options {
        only: cli.only,
        profile: cli.profile,
        request_timeout: timeout,
        check_timeout: timeout * 3,
        suite_broker,
        broker: cli.broker,
        max_blob_size: cli.max_blob_size,
        security,
        auth_reads: cli.auth_reads,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut report = runtime.block_on(run(cli.role, &cli.base_url, options))?;
    if cli.strict {
        report.flags.push("--strict".into());
    }
    if let Some(path) = &cli.junit {
        report.flags.push(format!("--junit={}", path.display()));
        std::fs::write(path, report.junit())
            .with_context(|| format!("writing the JUnit report {}", path.display()))?;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(reason) = &report.aborted {
        eprintln!("invariant-conformance: error: {reason}");
        return Ok(ExitCode::from(USAGE_OR_UNREACHABLE));
    }
    Ok(if !report.passed() {
        ExitCode::FAILURE
    } else if cli.strict && report.count(Status::Skip) > 0 {
        ExitCode::from(STRICT_SKIPS)
    } else {
        ExitCode::SUCCESS
    })
}
