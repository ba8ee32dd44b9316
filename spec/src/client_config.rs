//! Where command-line programs (`invariant`, `ehi`) find their client settings: the
//! capability token they send and the certificate authorities they trust.
//!
//! The token is, in this order:
//! 1. `--token` (or `INVARIANT_TOKEN`);
//! 2. the file named by `--token-file` (or `INVARIANT_TOKEN_FILE`);
//! 3. the operator token `invariant up` left for the broker url in use:
//!    `<config dir>/up/<scheme>_<host>_<port>.token` (see [`up_token_path`]);
//! 4. `<config dir>/token`;
//!
//! and none otherwise. The config dir is [`default_config_dir`] unless the program
//! is given another. CAs come from `--ca-cert` (or `INVARIANT_CA_CERT`), besides the
//! system roots.

use std::path::{Path, PathBuf};

use crate::http::{ClientSecurity, read_token_file};
use crate::{ClientError, ClientResult};

/// Environment variable naming the `invariant` config dir.
pub const CONFIG_DIR_ENV: &str = "INVARIANT_CONFIG_DIR";

/// The client options a command line was given (flags already merged with their
/// environment variables).
#[derive(Clone, Debug, Default)]
pub struct ClientFlags {
    /// A capability token.
    pub token: Option<String>,
    /// A file holding a capability token.
    pub token_file: Option<PathBuf>,
    /// A PEM file of CAs to trust besides the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
}

/// Where the token came from (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `INVARIANT_TOKEN`.
    Given,
    /// `--token-file` or `INVARIANT_TOKEN_FILE`.
    File(PathBuf),
    /// The operator token `invariant up` left for this broker.
    Up(PathBuf),
    /// `<config dir>/token`.
    ConfigDir(PathBuf),
    /// No token.
    None,
}

/// The `invariant` config dir: `INVARIANT_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/invariant`, else `~/.config/invariant`.
pub fn default_config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("invariant");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".config").join("invariant"),
        None => PathBuf::from(".invariant-config"),
    }
}

/// Where `invariant up` keeps the operator token of the network whose broker is at
/// `broker_url`, under `config_dir`: `up/<scheme>_<host>_<port>.token` (characters
/// other than letters, digits, `.` and `-` in the host become `-`). `None` when the
/// url cannot be parsed.
pub fn up_token_path(config_dir: &Path, broker_url: &str) -> Option<PathBuf> {
    let url = reqwest::Url::parse(broker_url.trim()).ok()?;
    let host: String = url
        .host_str()?
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let port = url.port_or_known_default()?;
    Some(
        config_dir
            .join("up")
            .join(format!("{}_{host}_{port}.token", url.scheme())),
    )
}

impl ClientFlags {
    /// The client settings these flags give for a network whose broker is at
    /// `broker_url`, with the token found as the module docs describe.
    pub fn resolve(
        &self,
        config_dir: &Path,
        broker_url: &str,
    ) -> ClientResult<(ClientSecurity, TokenSource)> {
        let mut security = ClientSecurity::default();
        if let Some(path) = &self.ca_cert {
            security.add_ca_file(path)?;
            let certificates = security
                .ca_pems
                .last()
                .and_then(|pem| reqwest::Certificate::from_pem_bundle(pem).ok())
                .map_or(0, |certs| certs.len());
            if certificates == 0 {
                return Err(ClientError::InvalidConfig(format!(
                    "CA certificate {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        security.insecure_skip_verify = self.insecure_skip_verify;
        let given = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let source = if let Some(token) = given {
            security.token = Some(token.to_string());
            TokenSource::Given
        } else if let Some(path) = &self.token_file {
            security.token = Some(read_token_file(path)?);
            TokenSource::File(path.clone())
        } else if let Some(path) = up_token_path(config_dir, broker_url).filter(|p| p.is_file()) {
            security.token = Some(read_token_file(&path)?);
            TokenSource::Up(path)
        } else if config_dir.join("token").is_file() {
            let path = config_dir.join("token");
            security.token = Some(read_token_file(&path)?);
            TokenSource::ConfigDir(path)
        } else {
            TokenSource::None
        };
        Ok((security, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_token_paths_name_the_broker() {
        let dir = Path::new("/c");
        assert_eq!(
            up_token_path(dir, "http://127.0.0.1:3000/"),
            Some(PathBuf::from("/c/up/http_127.0.0.1_3000.token"))
        );
        assert_eq!(
            up_token_path(dir, "https://[::1]:4000"),
            Some(PathBuf::from("/c/up/https_---1-_4000.token"))
        );
        assert_eq!(
            up_token_path(dir, "https://LocalHost"),
            Some(PathBuf::from("/c/up/https_localhost_443.token"))
        );
        assert_eq!(up_token_path(dir, "not a url"), None);
    }

    #[test]
    fn tokens_are_taken_in_order() {
        let dir = std::env::temp_dir().join(format!(
            "invariant-client-config-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let broker = "http://127.0.0.1:3999";
        let up = up_token_path(&dir, broker).expect("path");
        std::fs::create_dir_all(up.parent().expect("parent")).expect("mkdir");
        let resolve = |flags: &ClientFlags| flags.resolve(&dir, broker).expect("resolve");

        let none = resolve(&ClientFlags::default());
        assert_eq!(none.1, TokenSource::None);
        assert!(none.0.token.is_none());

        std::fs::write(dir.join("token"), "default-token\n").expect("write");
        let (security, source) = resolve(&ClientFlags::default());
        assert_eq!(source, TokenSource::ConfigDir(dir.join("token")));
        assert_eq!(security.token.as_deref(), Some("default-token"));

        std::fs::write(&up, "\nup-token\n").expect("write");
        let (security, source) = resolve(&ClientFlags::default());
        assert_eq!(source, TokenSource::Up(up.clone()));
        assert_eq!(security.token.as_deref(), Some("up-token"));
        // Another broker does not get this network's token.
        let (_, other) = ClientFlags::default()
            .resolve(&dir, "http://127.0.0.1:4999")
            .expect("resolve");
        assert_eq!(other, TokenSource::ConfigDir(dir.join("token")));

        let file = dir.join("mine");
        std::fs::write(&file, "file-token").expect("write");
        let mut flags = ClientFlags {
            token_file: Some(file.clone()),
            ..ClientFlags::default()
        };
        let (security, source) = resolve(&flags);
        assert_eq!(source, TokenSource::File(file));
        assert_eq!(security.token.as_deref(), Some("file-token"));

        flags.token = Some(" given ".into());
        let (security, source) = resolve(&flags);
        assert_eq!(source, TokenSource::Given);
        assert_eq!(security.token.as_deref(), Some("given"));

        flags.token_file = Some(dir.join("missing"));
        flags.token = None;
        assert!(flags.resolve(&dir, broker).is_err());
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").expect("write");
        let flags = ClientFlags {
            ca_cert: Some(not_pem),
            ..ClientFlags::default()
        };
        let err = flags.resolve(&dir, broker).expect_err("no certificate");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
