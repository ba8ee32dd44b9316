//! Command-line options shared by every server binary, and the role list.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// The eight server roles, with the kind string used in broker registrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Content-addressed blobs (`/storage/`).
    Storage,
    /// Signed mutable pointers (`/slots/`).
    Slots,
    /// Server id → urls (`/broker/`).
    Broker,
    /// Who holds a blob (`/find/`).
    Find,
    /// POSIX-like file trees (`/files/`).
    Files,
    /// Task output cache (`/production/`).
    Productions,
    /// Names → addresses (`/names/`).
    Names,
    /// Keeps pinned blocks on N storage servers (`/distributor/`).
    Distributor,
}

impl Role {
    /// The broker registration kind.
    pub fn kind(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Slots => "slots",
            Role::Broker => "broker",
            Role::Find => "find",
            Role::Files => "files",
            Role::Productions => "productions",
            Role::Names => "names",
            Role::Distributor => "distribute",
        }
    }

    /// The documented default port on 127.0.0.1 (see README "Ports").
    pub fn default_port(self) -> u16 {
        match self {
            Role::Broker => 3000,
            Role::Storage => 3001,
            Role::Slots => 3002,
            Role::Find => 3003,
            Role::Files => 3004,
            Role::Productions => 3005,
            Role::Names => 3006,
            Role::Distributor => 3007,
        }
    }

    /// Directory name used under a shared data folder.
    pub fn dir_name(self) -> &'static str {
        match self {
            Role::Distributor => "distributor",
            other => other.kind(),
        }
    }
}

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
        }
    }
}

impl CommonArgs {
    /// Fills in the role's defaults.
    pub fn resolve(&self, role: Role) -> ServerOptions {
        ServerOptions {
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
        }
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
        let options = cli.common.resolve(Role::Storage);
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
        let options = cli.common.resolve(Role::Slots);
        assert_eq!(options.listen.port(), 0);
        assert_eq!(options.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(options.broker.as_deref(), Some("http://127.0.0.1:3000"));
        assert_eq!(cli.common.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["x", "--listen", "nope"]).is_err());
    }

    #[test]
    fn every_role_has_a_distinct_port() {
        let roles = [
            Role::Storage,
            Role::Slots,
            Role::Broker,
            Role::Find,
            Role::Files,
            Role::Productions,
            Role::Names,
            Role::Distributor,
        ];
        let mut ports: Vec<u16> = roles.iter().map(|r| r.default_port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), roles.len());
    }
}
