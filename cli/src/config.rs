//! The configuration file (TOML) of `invariant up` and `invariant systemd`.
//!
//! Every field is optional; an absent file means the defaults below:
//!
//! ```toml
//! host = "127.0.0.1"          # address every server binds
//! auth = true                 # token checks on (a root key under <data>/auth); `up --open` turns them off
//! tls = false                 # HTTPS with a local CA under <data>/tls; `up --tls` turns it on
//! [broker]
//! port = 3000                 # 0 = any free port
//! [storage]
//! count = 3                   # storage servers to start
//! ports = [3001, 3011, 3021]  # one per server; missing entries pick free ports
//! [slots]
//! port = 3002
//! enabled = true              # set false to leave a role out
//! ```
//!
//! Other roles (`find`, `files`, `productions`, `names`, `distributor`) take `port` and
//! `enabled` like `slots`; their default ports are the roles' documented defaults.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context;
use invariant_runtime::Role;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Address every server binds.
    pub host: IpAddr,
    /// Capability-token checks on every server (default true).
    pub auth: bool,
    /// HTTPS with certificates from a local CA (default false).
    pub tls: bool,
    /// The broker.
    pub broker: RoleConfig,
    /// The storage servers.
    pub storage: StorageConfig,
    /// The find server.
    pub find: RoleConfig,
    /// The slots server.
    pub slots: RoleConfig,
    /// The names server.
    pub names: RoleConfig,
    /// The productions server.
    pub productions: RoleConfig,
    /// The files server.
    pub files: RoleConfig,
    /// The distributor.
    pub distributor: RoleConfig,
}

/// One single-instance role.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// Port to bind; `None` = the role's default port, `0` = any free port.
    pub port: Option<u16>,
    /// Whether to start it (default true).
    pub enabled: Option<bool>,
}

impl RoleConfig {
    /// Whether the role is started.
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// The storage servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// How many to start.
    pub count: usize,
    /// Ports, one per server; servers beyond the list pick free ports.
    pub ports: Vec<u16>,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            count: 3,
            ports: vec![3001, 3011, 3021],
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            auth: true,
            tls: false,
            broker: RoleConfig::default(),
            storage: StorageConfig::default(),
            find: RoleConfig::default(),
            slots: RoleConfig::default(),
            names: RoleConfig::default(),
            productions: RoleConfig::default(),
            files: RoleConfig::default(),
            distributor: RoleConfig::default(),
        }
    }
}

impl NetworkConfig {
    /// Reads `path` when it exists; defaults otherwise.
    pub fn load(path: Option<&Path>) -> anyhow::Result<NetworkConfig> {
        let Some(path) = path else {
            return Ok(NetworkConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    /// The single-instance roles in start order after the broker, with their config.
    pub fn single_roles(&self) -> Vec<(Role, &RoleConfig)> {
        vec![
            (Role::Find, &self.find),
            (Role::Slots, &self.slots),
            (Role::Names, &self.names),
            (Role::Productions, &self.productions),
            (Role::Files, &self.files),
            (Role::Distributor, &self.distributor),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config: NetworkConfig = toml::from_str(
            r#"
            [broker]
            port = 0
            [storage]
            count = 5
            ports = [4000]
            [files]
            enabled = false
            "#,
        )
        .expect("parse");
        assert_eq!(config.broker.port, Some(0));
        assert_eq!(config.storage.count, 5);
        assert_eq!(config.storage.ports, vec![4000]);
        assert!(!config.files.enabled());
        assert!(config.slots.enabled());
        assert!(config.auth && !config.tls, "auth on and TLS off by default");
        let secure: NetworkConfig = toml::from_str("auth = false\ntls = true").expect("keys");
        assert!(!secure.auth && secure.tls);
        assert!(toml::from_str::<NetworkConfig>("bogus = 1").is_err());
        let empty: NetworkConfig = toml::from_str("").expect("empty");
        assert_eq!(empty.storage.count, 3);
    }
}
