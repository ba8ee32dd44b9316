//! `invariant-conformance`: runs the protocol checks of one role against a server and
//! prints a table (or JSON); exits non-zero when a check fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use invariant_conformance::{ClientSecurity, Options, Role, run};
use invariant_spec::http::read_token_file;

/// Checks that a server speaks an invariant protocol as spec/*.md defines it.
#[derive(Parser, Debug)]
#[command(name = "invariant-conformance", version, about)]
struct Cli {
    /// The protocol: storage, slots, broker, find, files, productions, names, distributor.
    role: Role,

    /// The server's base url, e.g. http://127.0.0.1:3001.
    base_url: String,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// Run only the check with this id (or the checks whose id starts with it).
    #[arg(long)]
    only: Option<String>,

    /// List the role's checks and exit.
    #[arg(long)]
    list: bool,

    /// Serve the suite's broker at this address (e.g. 127.0.0.1:3999); start the
    /// server under test with `--broker http://<this address>` so it can reach the
    /// suite's fake peers (storage fetch, find notify).
    #[arg(long, value_name = "ADDR")]
    suite_broker: Option<std::net::SocketAddr>,

    /// The broker the server under test uses; the suite registers its fake peers there.
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

fn main() -> anyhow::Result<ExitCode> {
    invariant_runtime::stdout::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    if cli.list {
        for (id, spec, title) in invariant_conformance::checks(cli.role) {
            println!("{id:<32} {spec:<48} {title}");
        }
        return Ok(ExitCode::SUCCESS);
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
        request_timeout: timeout,
        check_timeout: timeout * 3,
        suite_broker,
        broker: cli.broker,
        max_blob_size: cli.max_blob_size,
        security,
        auth_reads: cli.auth_reads,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(run(cli.role, &cli.base_url, options))?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
