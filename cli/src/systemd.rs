//! `invariant systemd`: systemd units for the network `invariant up` would start.
//!
//! The network is read exactly as `up` reads it (the same config file, `--data-dir`,
//! `--bin-dir`, `--tls`, `--open`; [`crate::up::launches`] and
//! [`crate::up::server_args`]), and the security material is prepared the same way:
//! the root key, one token per server and the operator token under
//! `<data-dir>/auth/`, the local CA and server certificates under `<data-dir>/tls/`.
//! Each server's folder `<data-dir>/<name>` is created too, since a unit may write only
//! there. Then one unit per server is written, `<prefix>-<name>.service`, and one
//! `<prefix>.target` that wants them all:
//!
//! - `ExecStart=` is the absolute path of the role's binary with the arguments `up`
//!   would give it; the broker url is fixed (scheme, host and port of the config; an
//!   unspecified host becomes loopback), so the broker's port may not be 0.
//! - `Restart=on-failure`; each unit is `PartOf=` and `WantedBy=` the target, and
//!   ordered after the servers `up` starts before it.
//! - Hardening: no new privileges, a read-only system (`ProtectSystem=strict`) where
//!   only the server's own folder is writable, a private `/tmp`, no devices, kernel or
//!   clock access, an `@system-service` system call filter, internet and unix sockets
//!   only, no capabilities (but `CAP_NET_BIND_SERVICE` below port 1024). The network's
//!   secrets a server does not use — the root key, the CA key, the operator token,
//!   the other servers' tokens and TLS keys — are made inaccessible to it. Homes are
//!   hidden, or read-only when a path the units use lies under one.
//! - With TLS, `systemctl reload` sends SIGHUP, on which servers re-read their
//!   certificate.
//!
//! Units run as root unless `--user` names the account (`User=`); that account must
//! own the data dir.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use invariant_runtime::Role;

use crate::config::NetworkConfig;
use crate::up::{self, Security};

/// Where the systemd binaries of `ExecReload=` live.
const KILL: &str = "/bin/kill";

/// Folders systemd services see as private, empty `/tmp`s (`PrivateTmp=yes`).
const PRIVATE_TMP: [&str; 2] = ["/tmp", "/var/tmp"];

/// Folders hidden from services by `ProtectHome=yes`.
const HOMES: [&str; 3] = ["/home", "/root", "/run/user"];

/// How the units are named and whom they run as.
#[derive(Clone, Debug)]
pub struct UnitOptions {
    /// Unit names start with `<prefix>-`; the target is `<prefix>.target`.
    pub prefix: String,
    /// The account the services run as (`User=`); root when `None`.
    pub user: Option<String>,
}

/// One server's unit, resolved: everything but the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The server's name (`broker`, `storage-1`, ...).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The port it binds.
    pub port: u16,
    /// Absolute path of its binary.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its own folder, the one place it writes.
    pub data_dir: PathBuf,
    /// Private files of its own (token, TLS key).
    pub private: Vec<PathBuf>,
}

/// The whole network, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The servers, in `up`'s start order (the broker first).
    pub services: Vec<Service>,
    /// Files no server needs (root key, CA key, operator token).
    pub secrets: Vec<PathBuf>,
    /// The broker's url, as servers and clients reach it.
    pub broker_url: String,
    /// The data dir (absolute), holding every server's folder.
    pub data_dir: PathBuf,
    /// The operator token clients use (with token checks on).
    pub operator_token: Option<PathBuf>,
    /// The CA certificate clients trust (with TLS).
    pub ca_cert: Option<PathBuf>,
    /// Whether servers serve HTTPS.
    pub tls: bool,
    /// Whether servers bind a specific non-loopback address (the units then wait for
    /// the network to be online).
    pub needs_network: bool,
}

/// A unit file: its name and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// File name (`invariant-broker.service`).
    pub file_name: String,
    /// Contents.
    pub text: String,
}

/// The url servers and clients use for the broker of `config`. An unspecified host
/// (`0.0.0.0`, `::`) is reached on loopback; port 0 is refused, as the other servers
/// need to know the broker's port before it starts.
pub fn broker_url(config: &NetworkConfig) -> anyhow::Result<String> {
    let port = config.broker.port.unwrap_or(Role::Broker.default_port());
    if port == 0 {
        bail!(
            "the broker's port is 0 (any free port): services need a fixed broker url; \
             set [broker] port in the config"
        );
    }
    let host = match config.host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        host => host,
    };
    let scheme = if config.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{}", SocketAddr::new(host, port)))
}

/// Resolves the network of `config` with data under `data_dir` and binaries in
/// `bin_dir` (both made absolute), preparing its security material and every
/// server's folder as `up` would.
pub fn plan(config: &NetworkConfig, data_dir: &Path, bin_dir: &Path) -> anyhow::Result<Network> {
    let data_dir = std::path::absolute(data_dir)
        .with_context(|| format!("locating {}", data_dir.display()))?;
    let bin_dir =
        std::path::absolute(bin_dir).with_context(|| format!("locating {}", bin_dir.display()))?;
    for (what, path) in [("data dir", &data_dir), ("bin dir", &bin_dir)] {
        if let Some(tmp) = PRIVATE_TMP.iter().find(|tmp| path.starts_with(tmp)) {
            bail!(
                "the {what} {} is under {tmp}, which every service sees as its own empty \
                 folder (PrivateTmp=yes): choose one elsewhere",
                path.display()
            );
        }
    }
    let broker_url = broker_url(config)?;
    let launches = up::launches(config);
    let mut missing = Vec::new();
    for launch in &launches {
        let binary = bin_dir.join(up::binary_name(launch.role));
        if !binary.is_file() {
            missing.push(binary.display().to_string());
        }
    }
    if !missing.is_empty() {
        bail!(
            "server binaries missing: {} (build them: cargo build --release --workspace, \
             or give --bin-dir)",
            missing.join(", ")
        );
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let security = Security::prepare(config, &data_dir)?;
    let mut secrets = Vec::new();
    let mut operator_token = None;
    if let Some(auth) = security.auth() {
        let token = auth.operator_token()?;
        secrets.push(auth.root_key_path());
        secrets.push(token.clone());
        operator_token = Some(token);
    }
    let mut ca_cert = None;
    if let Some(ca) = security.tls() {
        secrets.push(ca.ca_key_path());
        ca_cert = Some(ca.ca_path());
    }
    let mut services = Vec::new();
    for launch in &launches {
        let server_security = security.server(launch)?;
        let broker = (launch.role != Role::Broker).then_some(broker_url.as_str());
        let args = up::server_args(launch, config, &data_dir, broker, &server_security);
        let own = data_dir.join(&launch.name);
        create_private_dir(&own)?;
        services.push(Service {
            name: launch.name.clone(),
            role: launch.role,
            port: launch.port,
            binary: bin_dir.join(up::binary_name(launch.role)),
            args,
            data_dir: own,
            private: server_security.private,
        });
    }
    let host = config.host;
    Ok(Network {
        services,
        secrets,
        broker_url,
        data_dir,
        operator_token,
        ca_cert,
        tls: config.tls,
        needs_network: !(host.is_loopback() || host.is_unspecified()),
    })
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The server would create it so; a folder that exists keeps its mode.
    let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    Ok(())
}

/// Checks a unit name prefix: letters, digits, `-`, `_`, `.`, `:`.
pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        bail!("unit prefix {prefix:?}: use letters, digits, '-', '_', '.' or ':'");
    }
    Ok(())
}

/// Checks a `User=` value: a user name or a numeric id.
pub fn check_user(user: &str) -> anyhow::Result<()> {
    let mut bytes = user.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok
        || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        || user.len() > 32
    {
        bail!("user {user:?} is not a valid user name");
    }
    Ok(())
}

/// The unit file name of server `name`.
pub fn service_file(options: &UnitOptions, name: &str) -> String {
    format!("{}-{name}.service", options.prefix)
}

/// The target's file name.
pub fn target_file(options: &UnitOptions) -> String {
    format!("{}.target", options.prefix)
}

/// Where a quoted word goes: a command line expands `$VARIABLES`, a path list does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quoting {
    /// `ExecStart=` and the like.
    Command,
    /// `ReadWritePaths=` and the like.
    Paths,
}

/// One word of a command line or path list, written so systemd reads it back as is:
/// `%` becomes `%%` (no specifier expansion); a word with other characters than
/// letters, digits and `/._:,=@+-[]` is put in double quotes, with `\` and `"`
/// escaped and, on a command line, `$` written `$$` (no variable expansion).
pub fn quote(word: &OsStr, context: Quoting) -> anyhow::Result<String> {
    let Some(text) = word.to_str() else {
        bail!("{:?} is not UTF-8", word.to_string_lossy());
    };
    if text.chars().any(char::is_control) {
        bail!("{text:?} holds a control character");
    }
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._:,=@+-[]%".contains(&b));
    if plain {
        return Ok(text.replace('%', "%%"));
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if context == Quoting::Command => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn quote_path(path: &Path, context: Quoting) -> anyhow::Result<String> {
    quote(path.as_os_str(), context)
}

fn under_home(path: &Path) -> bool {
    HOMES.iter().any(|home| path.starts_with(home))
}

/// The unit of one server.
pub fn service_unit(
    network: &Network,
    service: &Service,
    options: &UnitOptions,
) -> anyhow::Result<String> {
    let target = target_file(options);
    let mut text = String::new();
    let w = &mut text;
    writeln!(
        w,
        "# Written by `invariant systemd`: server {} ({} role) of the invariant network\n\
         # at {}. Re-run `invariant systemd` rather than editing this file.",
        service.name,
        service.role.name(),
        network.broker_url
    )?;
    writeln!(w, "[Unit]")?;
    writeln!(w, "Description=invariant {} server", service.name)?;
    writeln!(w, "PartOf={target}")?;
    let earlier: Vec<String> = network
        .services
        .iter()
        .take_while(|other| other.name != service.name)
        .map(|other| service_file(options, &other.name))
        .collect();
    let mut after = earlier;
    if network.needs_network {
        after.insert(0, "network-online.target".into());
        writeln!(w, "Wants=network-online.target")?;
    }
    if !after.is_empty() {
        writeln!(w, "After={}", after.join(" "))?;
    }

    writeln!(w, "\n[Service]")?;
    writeln!(w, "Type=exec")?;
    let mut exec = quote_path(&service.binary, Quoting::Command)?;
    for arg in &service.args {
        exec.push(' ');
        exec.push_str(&quote(arg, Quoting::Command)?);
    }
    writeln!(w, "ExecStart={exec}")?;
    if network.tls {
        writeln!(w, "# servers re-read their TLS certificate on SIGHUP")?;
        writeln!(w, "ExecReload={KILL} -HUP $MAINPID")?;
    }
    writeln!(w, "Restart=on-failure")?;
    writeln!(w, "RestartSec=2s")?;
    writeln!(w, "# in-flight requests finish after SIGTERM")?;
    writeln!(w, "TimeoutStopSec=30s")?;
    if let Some(user) = &options.user {
        writeln!(w, "User={user}")?;
    }
    writeln!(w, "UMask=0077")?;
    writeln!(w, "LimitNOFILE=65536")?;

    writeln!(w, "\n# Hardening")?;
    writeln!(
        w,
        "ReadWritePaths={}",
        quote_path(&service.data_dir, Quoting::Paths)?
    )?;
    let mut hidden: Vec<&PathBuf> = network.secrets.iter().collect();
    for other in &network.services {
        if other.name != service.name {
            hidden.extend(other.private.iter());
        }
    }
    if !hidden.is_empty() {
        writeln!(w, "# the network's secrets this server does not use")?;
    }
    for path in hidden {
        // `-`: a file that does not exist (yet) is fine.
        let mut word = OsString::from("-");
        word.push(path);
        writeln!(w, "InaccessiblePaths={}", quote(&word, Quoting::Paths)?)?;
    }
    let mut used: Vec<&Path> = vec![&service.binary, &service.data_dir];
    used.extend(service.private.iter().map(PathBuf::as_path));
    let homes = if used.iter().any(|path| under_home(path)) {
        "read-only"
    } else {
        "yes"
    };
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        &format!("ProtectHome={homes}"),
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RemoveIPC=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
    ] {
        writeln!(w, "{line}")?;
    }
    if service.port != 0 && service.port < 1024 {
        writeln!(w, "CapabilityBoundingSet=CAP_NET_BIND_SERVICE")?;
        writeln!(w, "AmbientCapabilities=CAP_NET_BIND_SERVICE")?;
    } else {
        writeln!(w, "CapabilityBoundingSet=")?;
        writeln!(w, "AmbientCapabilities=")?;
    }

    writeln!(w, "\n[Install]")?;
    writeln!(w, "WantedBy={target}")?;
    Ok(text)
}

/// The target grouping every server's unit.
pub fn target_unit(network: &Network, options: &UnitOptions) -> String {
    let wants: Vec<String> = network
        .services
        .iter()
        .map(|service| service_file(options, &service.name))
        .collect();
    format!(
        "# Written by `invariant systemd`: the invariant network at {broker}.\n\
         # Re-run `invariant systemd` rather than editing this file.\n\
         [Unit]\n\
         Description=invariant network ({count} servers, broker {broker})\n\
         Wants={wants}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        broker = network.broker_url,
        count = network.services.len(),
        wants = wants.join(" "),
    )
}

/// Every unit of `network`: the target first, then one service per server.
pub fn units(network: &Network, options: &UnitOptions) -> anyhow::Result<Vec<Unit>> {
    let mut units = vec![Unit {
        file_name: target_file(options),
        text: target_unit(network, options),
    }];
    for service in &network.services {
        units.push(Unit {
            file_name: service_file(options, &service.name),
            text: service_unit(network, service, options)?,
        });
    }
    Ok(units)
}

/// `invariant systemd`: resolves the network, writes its units into `out`, and says
/// how to install them and reach the network.
pub fn run(
    config: &NetworkConfig,
    data_dir: &Path,
    bin_dir: &Path,
    out: &Path,
    options: &UnitOptions,
) -> anyhow::Result<()> {
    check_prefix(&options.prefix)?;
    if let Some(user) = &options.user {
        check_user(user)?;
    }
    let network = plan(config, data_dir, bin_dir)?;
    let units = units(&network, options)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for unit in &units {
        let path = out.join(&unit.file_name);
        std::fs::write(&path, &unit.text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let target = target_file(options);
    println!("\ninstall and start them (as root):");
    println!(
        "  cp {}/{}-*.service {}/{target} /etc/systemd/system/",
        out.display(),
        options.prefix,
        out.display()
    );
    println!("  systemctl daemon-reload && systemctl enable --now {target}");
    match &options.user {
        Some(user) => println!(
            "the servers run as {user}, who must own the data: chown -R {user}: {}",
            network.data_dir.display()
        ),
        None => println!(
            "the servers run as root (confined to their data folders); --user names an \
             account instead"
        ),
    }
    println!("\nclients reach the network with:");
    println!("  export INVARIANT_BROKER={}", network.broker_url);
    if let Some(token) = &network.operator_token {
        println!("  export INVARIANT_TOKEN_FILE={}", token.display());
    }
    if let Some(ca) = &network.ca_cert {
        println!("  export INVARIANT_CA_CERT={}", ca.display());
        println!(
            "certificates last a year: re-run this command to renew them, then \
             `systemctl reload '{}-*'`",
            options.prefix
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::ServerSecurity;

    const DATA: &str = "/srv/invariant";
    const BIN: &str = "/opt/invariant/bin";

    fn options(user: Option<&str>) -> UnitOptions {
        UnitOptions {
            prefix: "invariant".into(),
            user: user.map(str::to_string),
        }
    }

    /// The network of `config` as [`plan`] resolves it, without touching the disk:
    /// every server but the broker has a token file.
    fn network(config: &NetworkConfig, bin: &str) -> Network {
        let data = Path::new(DATA);
        let broker_url = broker_url(config).expect("broker url");
        let services = up::launches(config)
            .iter()
            .map(|launch| {
                let mut security = ServerSecurity::default();
                if launch.role != Role::Broker {
                    let token = data.join("auth").join(format!("{}.token", launch.name));
                    security.args = vec!["--token-file".into(), token.clone().into()];
                    security.private = vec![token];
                }
                let broker = (launch.role != Role::Broker).then_some(broker_url.as_str());
                Service {
                    name: launch.name.clone(),
                    role: launch.role,
                    port: launch.port,
                    binary: Path::new(bin).join(up::binary_name(launch.role)),
                    args: up::server_args(launch, config, data, broker, &security),
                    data_dir: data.join(&launch.name),
                    private: security.private,
                }
            })
            .collect();
        Network {
            services,
            secrets: vec![data.join("auth/root.key"), data.join("auth/operator.token")],
            broker_url,
            data_dir: data.to_path_buf(),
            operator_token: Some(data.join("auth/operator.token")),
            ca_cert: None,
            tls: config.tls,
            needs_network: false,
        }
    }

    fn unit_of(network: &Network, name: &str, options: &UnitOptions) -> String {
        let service = network
            .services
            .iter()
            .find(|service| service.name == name)
            .expect("service");
        service_unit(network, service, options).expect("unit")
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn a_service_runs_its_binary_with_ups_arguments_in_a_sandbox() {
        let config = NetworkConfig::default();
        let net = network(&config, BIN);
        let unit = unit_of(&net, "storage-1", &options(Some("invariant")));
        let lines = lines(&unit);
        for expected in [
            "[Unit]",
            "Description=invariant storage-1 server",
            "PartOf=invariant.target",
            "After=invariant-broker.service invariant-find.service invariant-slots.service \
             invariant-names.service invariant-productions.service",
            "[Service]",
            "Type=exec",
            "ExecStart=/opt/invariant/bin/storage-server --listen 127.0.0.1:3001 \
             --data-dir /srv/invariant/storage-1 \
             --token-file /srv/invariant/auth/storage-1.token \
             --broker http://127.0.0.1:3000",
            "Restart=on-failure",
            "User=invariant",
            "ReadWritePaths=/srv/invariant/storage-1",
            "InaccessiblePaths=-/srv/invariant/auth/root.key",
            "InaccessiblePaths=-/srv/invariant/auth/operator.token",
            "InaccessiblePaths=-/srv/invariant/auth/distributor.token",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "SystemCallFilter=@system-service",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "[Install]",
            "WantedBy=invariant.target",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{unit}"
            );
        }
        assert!(
            !lines.contains(&"InaccessiblePaths=-/srv/invariant/auth/storage-1.token"),
            "a server keeps its own token:\n{unit}"
        );
        assert!(!unit.contains("ExecReload"), "no SIGHUP without TLS");
        assert!(
            !unit.contains("network-online"),
            "loopback needs no network"
        );
        // Every line is a section, a comment, a blank or a `Key=value` setting.
        for line in lines {
            assert!(
                line.is_empty()
                    || line.starts_with('#')
                    || (line.starts_with('[') && line.ends_with(']'))
                    || line.split_once('=').is_some_and(|(key, _)| {
                        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric())
                    }),
                "malformed line {line:?}"
            );
        }
    }

    #[test]
    fn the_broker_starts_first_and_registers_with_no_one() {
        let net = network(&NetworkConfig::default(), BIN);
        let unit = unit_of(&net, "broker", &options(None));
        assert!(!unit.contains("After="), "{unit}");
        assert!(!unit.contains("--broker"), "{unit}");
        assert!(!unit.contains("User="), "root without --user: {unit}");
        assert!(
            unit.contains("ExecStart=/opt/invariant/bin/broker-server --listen 127.0.0.1:3000 ")
        );
        // The broker has no token; the others' tokens are hidden from it.
        assert!(unit.contains("InaccessiblePaths=-/srv/invariant/auth/storage-3.token"));
    }

    #[test]
    fn the_target_wants_every_server_in_start_order() {
        let config: NetworkConfig =
            toml::from_str("[storage]\ncount = 2\n[files]\nenabled = false").expect("config");
        let net = network(&config, BIN);
        let target = target_unit(&net, &options(None));
        assert!(
            target.lines().any(|l| l
                == "Wants=invariant-broker.service invariant-find.service \
                    invariant-slots.service invariant-names.service \
                    invariant-productions.service invariant-storage-1.service \
                    invariant-storage-2.service invariant-distributor.service"),
            "{target}"
        );
        assert!(target.contains("WantedBy=multi-user.target"));
        let all = units(&net, &options(None)).expect("units");
        let names: Vec<&str> = all.iter().map(|u| u.file_name.as_str()).collect();
        assert_eq!(names.len(), 9);
        assert_eq!(names[0], "invariant.target");
        assert!(names.contains(&"invariant-storage-2.service"));
        assert!(!names.iter().any(|n| n.contains("files")));
    }

    #[test]
    fn tls_adds_reload_and_a_public_host_waits_for_the_network() {
        let config: NetworkConfig =
            toml::from_str("host = \"192.0.2.7\"\ntls = true").expect("config");
        let mut net = network(&config, BIN);
        net.needs_network = true;
        let unit = unit_of(&net, "names", &options(None));
        assert!(
            unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
            "{unit}"
        );
        assert!(unit.contains("--listen 192.0.2.7:3006"), "{unit}");
        assert!(unit.contains("--broker https://192.0.2.7:3000"), "{unit}");
        assert!(unit.contains("\nWants=network-online.target\n"), "{unit}");
        assert!(unit.contains("\nAfter=network-online.target invariant-broker.service"));
    }

    #[test]
    fn a_port_below_1024_keeps_only_the_bind_capability() {
        let config: NetworkConfig = toml::from_str("[broker]\nport = 443").expect("config");
        let net = network(&config, BIN);
        let unit = unit_of(&net, "broker", &options(None));
        assert!(unit.contains("\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"));
        assert!(unit.contains("\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"));
        let other = unit_of(&net, "slots", &options(None));
        assert!(other.contains("\nCapabilityBoundingSet=\n"), "{other}");
    }

    #[test]
    fn homes_stay_readable_when_a_binary_lives_there() {
        let net = network(
            &NetworkConfig::default(),
            "/home/ada/invariant/target/release",
        );
        let unit = unit_of(&net, "find", &options(None));
        assert!(unit.contains("\nProtectHome=read-only\n"), "{unit}");
    }

    #[test]
    fn words_are_quoted_as_systemd_reads_them() {
        let q = |word: &str, context| quote(OsStr::new(word), context).expect("quotable");
        assert_eq!(
            q("/srv/inv-1/data_2", Quoting::Command),
            "/srv/inv-1/data_2"
        );
        assert_eq!(q("[::1]:3000", Quoting::Command), "[::1]:3000");
        assert_eq!(q("/srv/100%", Quoting::Paths), "/srv/100%%");
        assert_eq!(q("/srv/my data", Quoting::Paths), "\"/srv/my data\"");
        assert_eq!(q("/srv/$HOME", Quoting::Command), "\"/srv/$$HOME\"");
        assert_eq!(q("/srv/$HOME", Quoting::Paths), "\"/srv/$HOME\"");
        assert_eq!(q("a\"b\\c", Quoting::Command), "\"a\\\"b\\\\c\"");
        assert_eq!(q("", Quoting::Command), "\"\"");
        assert!(quote(OsStr::new("a\nb"), Quoting::Command).is_err());
        let not_utf8 = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/srv/\xff");
        assert!(quote(not_utf8, Quoting::Paths).is_err());
    }

    #[test]
    fn the_broker_url_is_fixed_and_reachable() {
        let config = |text: &str| toml::from_str::<NetworkConfig>(text).expect("config");
        assert_eq!(
            broker_url(&NetworkConfig::default()).expect("url"),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            broker_url(&config("host = \"0.0.0.0\"\ntls = true")).expect("url"),
            "https://127.0.0.1:3000"
        );
        assert_eq!(
            broker_url(&config("host = \"::\"\n[broker]\nport = 4000")).expect("url"),
            "http://[::1]:4000"
        );
        let zero = broker_url(&config("[broker]\nport = 0")).expect_err("port 0");
        assert!(zero.to_string().contains("fixed broker url"), "{zero}");
    }

    #[test]
    fn names_and_folders_are_checked() {
        assert!(check_prefix("invariant").is_ok());
        assert!(check_prefix("inv_test.2").is_ok());
        for bad in ["", "a b", "a/b", "a@b", "ä"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(check_user("invariant").is_ok());
        assert!(check_user("1001").is_ok());
        for bad in ["", "-x", "a b", "a\nb", "a:b"] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
        let config = NetworkConfig::default();
        let refused = plan(&config, Path::new("/tmp/invariant-data"), Path::new(BIN))
            .expect_err("data in /tmp");
        assert!(refused.to_string().contains("PrivateTmp"), "{refused}");
    }
}
