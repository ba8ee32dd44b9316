//! Command-line options shared by every server binary; the role list, [`Role`], is
//! the protocol's (`invariant_spec::Role`).
//!
//! Besides where to listen and keep state, every server takes the security options
//! (TLS certificate, the network's root key for token checks, the CA and token it uses
//! for its own outgoing requests, which peer addresses it may contact) and the
//! connection limits of [`crate::conn`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use invariant_spec::auth::RootPublicKey;
use invariant_spec::http::ClientSecurity;

use crate::conn::Limits;

pub use crate::tls::TlsFiles;
pub use invariant_spec::Role;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Options every server binary accepts (flatten into the role's clap parser).
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// Address to listen on. Default: 127.0.0.1 and the role's default port.
    /// `127.0.0.1:0` picks a free port (read it from the `listening on` line).
    #[arg(long, env = "INVARIANT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Folder holding this server's state (id, blobs, database). Created if missing.
    /// Default: `.invariant/<role>` under the working directory.
    #[arg(long, env = "INVARIANT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Url of a broker to register with and to resolve other servers through.
    #[arg(long, env = "INVARIANT_BROKER")]
    pub broker: Option<String>,

    /// Url other servers should use to reach this one. Default: `http://<bound address>`.
    #[arg(long, env = "INVARIANT_ADVERTISE")]
    pub advertise: Option<String>,

    /// Seconds between re-registrations with the broker (±10% jitter).
    #[arg(long, env = "INVARIANT_REGISTER_INTERVAL", default_value_t = 30)]
    pub register_interval: u64,

    /// Log format on stderr.
    #[arg(long, env = "INVARIANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TLS, tokens and peers.
    #[command(flatten)]
    pub security: SecurityArgs,

    /// Connection limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// TLS, authorization and outgoing-connection options (part of [`CommonArgs`]).
#[derive(Clone, Debug, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain to serve HTTPS with (HTTP/1.1 and HTTP/2). Re-read on
    /// SIGHUP.
    #[arg(long, env = "INVARIANT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "INVARIANT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve plain HTTP on a non-loopback address (refused without this flag).
    #[arg(long, env = "INVARIANT_PLAINTEXT")]
    pub plaintext: bool,

    /// The network's root public key file (`invariant auth init`). With it, every
    /// mutating route requires `Authorization: Bearer <token>` carrying its right.
    #[arg(long, env = "INVARIANT_AUTH_ROOT_KEY")]
    pub auth_root_key: Option<PathBuf>,

    /// With `--auth-root-key`: reads require a `<role>:read` right too.
    #[arg(long, env = "INVARIANT_AUTH_READS", requires = "auth_root_key")]
    pub auth_reads: bool,

    /// PEM file of CAs this server trusts (besides the system roots) when it calls
    /// other servers.
    #[arg(long, env = "INVARIANT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Capability token this server sends when it calls other servers.
    #[arg(long, env = "INVARIANT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token this server sends when it calls other servers.
    #[arg(long, env = "INVARIANT_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// Accept any certificate when calling other servers. Unsafe: anyone on the path
    /// can read and change the traffic. A warning is logged at every start.
    #[arg(long)]
    pub insecure_skip_verify: bool,

    /// Peer addresses (CIDRs) this server may contact for fetches, replication and
    /// liveness checks, e.g. `198.51.100.0/24,127.0.0.1/32`. Default: any.
    #[arg(long, env = "INVARIANT_PEER_ALLOW", value_delimiter = ',')]
    pub peer_allow: Vec<ipnet::IpNet>,
}

/// Connection limits (part of [`CommonArgs`]); see [`Limits`].
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// Milliseconds a client may take to send a request's headers.
    #[arg(long, env = "INVARIANT_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Milliseconds an idle keep-alive connection is kept open.
    #[arg(long, env = "INVARIANT_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Milliseconds a request body may send nothing before the request is dropped.
    #[arg(long, env = "INVARIANT_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// Most open connections; more are closed at once (capped by the open-file
    /// limit).
    #[arg(long, env = "INVARIANT_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Bytes of request bodies all connections together may hold in memory; beyond
    /// it, reading waits.
    #[arg(long, env = "INVARIANT_BODY_BUDGET", default_value_t = 256 << 20)]
    pub body_budget: usize,
}

impl LimitArgs {
    /// The limits these options describe.
    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            body_budget: self.body_budget.max(64 << 10),
        }
    }
}

/// Token checking of incoming requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// The network's root public key; `None` is open mode (no checks).
    pub root: Option<RootPublicKey>,
    /// Reads need a `<role>:read` right too.
    pub reads: bool,
}

/// Why options could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The root key file cannot be read or parsed.
    #[error("reading the root public key {path}: {reason}")]
    RootKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client settings (CA file, token) cannot be used.
    #[error(transparent)]
    Client(#[from] invariant_spec::ClientError),
}

/// Reads a root public key file (`ed25519/<hex>`, as `invariant auth init` writes it).
pub fn read_root_key(path: &Path) -> Result<RootPublicKey, OptionsError> {
    let text = std::fs::read_to_string(path).map_err(|e| OptionsError::RootKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.trim()
        .parse()
        .map_err(|e: invariant_spec::auth::AuthError| OptionsError::RootKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Resolved options for starting one server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The server's role.
    pub role: Role,
    /// Address to bind.
    pub listen: SocketAddr,
    /// State folder.
    pub data_dir: PathBuf,
    /// Broker url, if any.
    pub broker: Option<String>,
    /// Advertised url, if set.
    pub advertise: Option<String>,
    /// How often to re-register with the broker.
    pub register_interval: std::time::Duration,
    /// Serve HTTPS with these files.
    pub tls: Option<TlsFiles>,
    /// Plain HTTP on a non-loopback address was asked for explicitly.
    pub plaintext: bool,
    /// Token checks of incoming requests.
    pub auth: AuthSettings,
    /// TLS roots and token for this server's own outgoing requests.
    pub client: ClientSecurity,
    /// Peer addresses this server may contact (empty: any).
    pub peer_allow: Vec<ipnet::IpNet>,
    /// Connection limits.
    pub limits: Limits,
}

impl ServerOptions {
    /// Options for tests: loopback, a free port, state in `data_dir`, no broker.
    pub fn ephemeral(role: Role, data_dir: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            role,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            data_dir: data_dir.into(),
            broker: None,
            advertise: None,
            register_interval: std::time::Duration::from_secs(30),
            tls: None,
            plaintext: false,
            auth: AuthSettings::default(),
            client: ClientSecurity::default(),
            peer_allow: Vec::new(),
            limits: Limits::default(),
        }
    }
}

impl CommonArgs {
    /// Fills in the role's defaults and reads the key, CA and token files named.
    pub fn resolve(&self, role: Role) -> Result<ServerOptions, OptionsError> {
        let security = &self.security;
        let root = match &security.auth_root_key {
            Some(path) => Some(read_root_key(path)?),
            None => None,
        };
        let mut client = ClientSecurity::default();
        if let Some(path) = &security.ca_cert {
            client.add_ca_file(path)?;
        }
        client.token = match (&security.token, &security.token_file) {
            (Some(token), _) => Some(token.trim().to_string()),
            (None, Some(path)) => Some(invariant_spec::http::read_token_file(path)?),
            (None, None) => None,
        };
        client.insecure_skip_verify = security.insecure_skip_verify;
        Ok(ServerOptions {
            role,
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, role.default_port()))),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".invariant").join(role.dir_name())),
            broker: self.broker.clone(),
            advertise: self.advertise.clone(),
            register_interval: std::time::Duration::from_secs(self.register_interval.max(1)),
            tls: match (&security.tls_cert, &security.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            plaintext: security.plaintext,
            auth: AuthSettings {
                root,
                reads: security.auth_reads,
            },
            client,
            peer_allow: security.peer_allow.clone(),
            limits: self.limits.limits(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn defaults_come_from_the_role() {
        let cli = Cli::try_parse_from(["x"]).expect("parse");
        let options = cli.common.resolve(Role::Storage).expect("resolve");
        assert_eq!(options.listen, "127.0.0.1:3001".parse().expect("addr"));
        assert_eq!(options.data_dir, PathBuf::from(".invariant/storage"));
        assert!(options.broker.is_none());
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "x",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/d",
            "--broker",
            "http://127.0.0.1:3000",
            "--log-format",
            "json",
        ])
        .expect("parse");
        let options = cli.common.resolve(Role::Slots).expect("resolve");
        assert_eq!(options.listen.port(), 0);
        assert_eq!(options.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(options.broker.as_deref(), Some("http://127.0.0.1:3000"));
        assert_eq!(cli.common.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["x", "--listen", "nope"]).is_err());
    }

    #[test]
    fn every_role_has_a_distinct_port() {
        let mut ports: Vec<u16> = Role::ALL.iter().map(|r| r.default_port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), Role::ALL.len());
    }
}
