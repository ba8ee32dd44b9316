//! `ehi`: the patient's command line over the ehi-layer library.
//!
//! The keystore lives at `$XDG_CONFIG_HOME/ehi/keystore.json` (else
//! `$HOME/.config/ehi/keystore.json`; `--keystore` overrides). The passphrase comes from
//! `EHI_PASSPHRASE` or is prompted on the terminal. The network is found through the
//! broker at `--broker` / `INVARIANT_BROKER` (default `http://127.0.0.1:3000`).
//! Output is FHIR JSON unless `--table` asks for a compact table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ehi_layer::audit::{AuditAction, AuditRecord};
use ehi_layer::vault::Stage;
use ehi_layer::{Input, KdfParams, Keystore, Network, Progress, Vault, export, present};
use indicatif::{ProgressBar, ProgressStyle};
use zeroize::Zeroizing;

#[derive(Parser, Debug)]
#[command(
    name = "ehi",
    version,
    about = "Your health records, encrypted, in the invariant network"
)]
struct Cli {
    /// The keystore file.
    #[arg(long, global = true, env = "EHI_KEYSTORE")]
    keystore: Option<PathBuf>,
    /// Broker of the invariant network.
    #[arg(
        long,
        global = true,
        env = "INVARIANT_BROKER",
        default_value = "http://127.0.0.1:3000"
    )]
    broker: String,
    /// Print a compact table instead of FHIR JSON.
    #[arg(long, global = true)]
    table: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum AppCommand {
    /// Create an app keystore (`--app-keystore`, default `<config>/ehi/apps/<name>.json`)
    /// and print the app's public card (JSON) on stdout.
    New {
        /// The app's name.
        name: String,
        /// Where to write the app keystore.
        #[arg(long)]
        app_keystore: Option<PathBuf>,
    },
    /// Print the card of an existing app keystore.
    Card {
        /// The app keystore file.
        app_keystore: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check every signature and the hash chain end to end; names the first bad entry.
    Verify,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a keystore and an empty vault.
    Init,
    /// Import FHIR Bundles (transaction, batch, collection, searchset, document,
    /// history), resources, or Bulk Data NDJSON files, atomically.
    Import {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// FHIR search: `ehi search Observation code=http://loinc.org|8302-2 date=ge2020`.
    Search {
        /// The resource type.
        resource_type: String,
        /// Search parameters (`name=value`, joined with `&`).
        params: Vec<String>,
    },
    /// Show a resource: `Type/id` or `Type/id/_history/n`.
    Show {
        /// The reference.
        reference: String,
    },
    /// Every version of a resource, newest first.
    History {
        /// `Type/id`.
        reference: String,
    },
    /// Everything in the compartment of a Patient.
    Patient {
        /// The Patient id.
        id: String,
    },
    /// Export everything: `<dir>/bundle.json` and `<dir>/ndjson/<Type>.ndjson`.
    Export {
        /// The directory.
        dir: PathBuf,
        /// Include every version (the Bundle becomes a history Bundle).
        #[arg(long)]
        history: bool,
    },
    /// Remove the vault: tombstone its slots, unpin its blocks, destroy the keystore.
    Delete {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// The vault's counts and ids.
    Status,
    /// App identities (for app developers): `ehi app new <name>`.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Grant scopes to an app: `ehi grant card.json --scopes medications,allergies
    /// --access read --expires 30d --purpose TREAT`. Prints the ticket for the app.
    Grant {
        /// The app's card (JSON file from `ehi app new`).
        card: PathBuf,
        /// Scopes, comma-separated (demographics, clinical, medications,
        /// immunizations, allergies, documents, financial, sensitive).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// `read` or `contribute`.
        #[arg(long, default_value = "read")]
        access: String,
        /// Lifetime (`30d`, `12h`, `2w`).
        #[arg(long, default_value = "30d")]
        expires: String,
        /// HL7 v3 PurposeOfUse code (TREAT, ETREAT, HPAYMT, HOPERAT, PATRQT, ...).
        #[arg(long, default_value = "TREAT")]
        purpose: String,
    },
    /// List the grants (scopes, purpose, expiry, SMART scopes).
    Grants,
    /// The audit log as FHIR AuditEvents (`--type grant`, `--app <name>`, `--since
    /// 2026-01-01`), or `ehi audit verify` to check signatures and the hash chain.
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only entries of this type (import, grant, revoke, export, remove, read, search).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only entries mentioning this app name.
        #[arg(long)]
        app: Option<String>,
        /// Only entries recorded at or after this date/instant (UTC, `2026-01-01`).
        #[arg(long)]
        since: Option<String>,
        /// Only entries recorded before this date/instant (UTC).
        #[arg(long)]
        until: Option<String>,
    },
    /// Revoke a grant: rotate the keys of its scopes, re-seal for the other grantees.
    Revoke {
        /// The grant id (from `ehi grants`).
        grant: String,
        /// Also re-encrypt every stored version of those scopes and unpin the old blobs.
        #[arg(long)]
        reencrypt: bool,
    },
    /// Serve the vault as a FHIR R4 REST API on this device (prints
    /// `listening on http://<addr>` on stdout and the patient's token on stderr).
    Serve {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// How long the printed patient token stays valid (`12h`, `30m`, `7d`).
        #[arg(long, default_value = "12h")]
        token_expires: String,
        /// Pre-authorize an OAuth client for a grant: `<client_id>=<grant id>`
        /// (repeatable). `/authorize` approves it at once (PKCE S256 required), so treat
        /// the client id as a secret.
        #[arg(long = "client", value_name = "CLIENT_ID=GRANT")]
        clients: Vec<String>,
    },
    /// Mint a bearer token for `ehi serve`: one bound to a grant (`ehi token <grant>`:
    /// the grant's scopes, refused once the grant is revoked or expired), the patient's
    /// own (`--patient`) or an app's with SMART v2 scopes (`--scopes
    /// "patient/Observation.rs patient/*.r"`). Prints the token on stdout and its id
    /// (`jti`) on stderr. `ehi token revoke <jti|token>` revokes one token.
    #[command(args_conflicts_with_subcommands = true)]
    Token {
        #[command(subcommand)]
        action: Option<TokenAction>,
        /// The grant id (from `ehi grants`).
        #[arg(conflicts_with_all = ["patient", "scopes"])]
        grant: Option<String>,
        /// The patient's own token (everything allowed).
        #[arg(long, conflicts_with = "scopes")]
        patient: bool,
        /// SMART scopes, space-separated (with a grant: narrow the grant's scopes).
        #[arg(long)]
        scopes: Option<String>,
        /// Lifetime (`90s`, `30m`, `1h`, `7d`).
        #[arg(long, default_value = "1h")]
        expires: String,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Revoke one token before it expires: its id is added to the revocation file
    /// beside the keystore (`<keystore>.revoked-tokens`), which `ehi serve` watches.
    Revoke {
        /// The token's id (`jti`, printed by `ehi token`) or the token itself.
        token: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let keystore_path = match &cli.keystore {
        Some(path) => path.clone(),
        None => default_keystore()?,
    };
    let command = match cli.command {
        Command::Init => return init(&cli.broker, &keystore_path).await,
        Command::App { command } => return app_command(command).await,
        Command::Token {
            action: Some(TokenAction::Revoke { token }),
            ..
        } => return token_revoke(&keystore_path, &token),
        Command::Token {
            action: None,
            grant: None,
            patient,
            scopes,
            expires,
        } => return token(&keystore_path, patient, scopes.as_deref(), &expires).await,
        command => command,
    };
    let passphrase = passphrase(false)?;
    let keystore = {
        let path = keystore_path.clone();
        tokio::task::spawn_blocking(move || Keystore::open(&path, &passphrase)).await??
    };
    let net = Network::connect(&cli.broker, Some(keystore.slots_server())).await?;
    let vault = Vault::open(net, &keystore).await?;
    match command {
        Command::Init => {}
        Command::Import { files } => import(&vault, &files).await?,
        Command::Search {
            resource_type,
            params,
        } => {
            let hits = vault.search(&resource_type, &params.join("&")).await?;
            log_read(
                &vault,
                AuditAction::Search,
                vec![format!("{resource_type}?{}", params.join("&"))],
            )
            .await;
            if cli.table {
                print!("{}", present::table(&hits.resources));
                eprintln!("{} match(es)", hits.total);
            } else {
                print_json(&present::searchset(&hits))?;
            }
        }
        Command::Show { reference } => {
            let (resource_type, id, version) = parse_reference(&reference)?;
            let resource = match version {
                Some(v) => vault.read_version(&resource_type, &id, v).await?,
                None => vault.read(&resource_type, &id).await?,
            };
            log_read(&vault, AuditAction::Read, vec![reference.clone()]).await;
            if cli.table {
                print!("{}", present::table(&[resource]));
            } else {
                print_json(&resource)?;
            }
        }
        Command::History { reference } => {
            let (resource_type, id, _) = parse_reference(&reference)?;
            let history = vault.history(&resource_type, &id).await?;
            log_read(&vault, AuditAction::Read, vec![reference.clone()]).await;
            if cli.table {
                print!("{}", present::history_table(&resource_type, &id, &history));
            } else {
                print_json(&present::history_bundle(&resource_type, &id, &history))?;
            }
        }
        Command::Patient { id } => {
            let resources = vault.patient_compartment(&id).await?;
            log_read(
                &vault,
                AuditAction::Read,
                vec![format!("Patient/{id}/$everything")],
            )
            .await;
            if cli.table {
                print!("{}", present::table(&resources));
            } else {
                let entries: Vec<serde_json::Value> = resources
                    .into_iter()
                    .map(|r| serde_json::json!({ "resource": r }))
                    .collect();
                print_json(&serde_json::json!({
                    "resourceType": "Bundle", "type": "collection", "entry": entries
                }))?;
            }
        }
        Command::Export { dir, history } => {
            let summary = export::to_dir(&vault, &dir, history).await?;
            log_read(
                &vault,
                AuditAction::Export,
                vec![format!("{} entries", summary.bundle_entries)],
            )
            .await;
            eprintln!(
                "wrote {} ({} entries) and {} NDJSON file(s) under {}",
                summary.bundle.display(),
                summary.bundle_entries,
                summary.ndjson.len(),
                dir.join("ndjson").display()
            );
        }
        Command::Delete { yes } => {
            if !yes && !confirm_delete()? {
                bail!("not deleted");
            }
            log_read(&vault, AuditAction::Remove, Vec::new()).await;
            let report = vault.remove(Some(&keystore_path)).await?;
            eprintln!(
                "vault removed: slots point at the tombstone, {} of {} blocks unpinned{}, keystore {} destroyed.\n\
                 note: the storage protocol has no delete; the ciphertext stays on storage servers \
                 until they collect unpinned blocks, and cannot be decrypted without the keys.",
                report.unpinned,
                report.blocks,
                if report.distributor {
                    ""
                } else {
                    " (no distributor)"
                },
                keystore_path.display(),
            );
            for note in report.notes {
                eprintln!("note: {note}");
            }
        }
        Command::Serve {
            listen,
            token_expires,
            clients,
        } => {
            serve(
                vault,
                &keystore,
                &keystore_path,
                listen,
                &token_expires,
                &clients,
            )
            .await?
        }
        Command::Token {
            grant: Some(grant),
            scopes,
            expires,
            ..
        } => token_grant(&vault, &keystore, &grant, scopes.as_deref(), &expires).await?,
        Command::Token { .. } => {}
        Command::App { .. } => {}
        Command::Grant {
            card,
            scopes,
            access,
            expires,
            purpose,
        } => {
            let bytes =
                std::fs::read(&card).with_context(|| format!("reading {}", card.display()))?;
            let app = ehi_layer::AppCard::parse(&bytes)?;
            let mut parsed = Vec::new();
            for scope in &scopes {
                parsed.push(
                    scope
                        .trim()
                        .parse::<ehi_layer::Scope>()
                        .map_err(anyhow::Error::msg)?,
                );
            }
            let request = ehi_layer::GrantRequest {
                app,
                scopes: parsed,
                access: access.parse()?,
                duration_ms: ehi_layer::grant::parse_duration_ms(&expires)?,
                purpose,
            };
            let (info, ticket) = vault.grant(request).await?;
            eprintln!(
                "granted {} to {} until {} (grant {}); hand the ticket below to the app",
                info.scopes
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(","),
                info.app_name,
                ehi_layer::time::instant(info.expires_ms),
                info.id
            );
            print_json(&serde_json::to_value(&ticket)?)?;
        }
        Command::Audit {
            command: Some(AuditCommand::Verify),
            ..
        } => {
            let count = vault.audit_verify().await?;
            eprintln!("audit log verified: {count} entries, every signature and link checks out");
        }
        Command::Audit {
            command: None,
            kind,
            app,
            since,
            until,
        } => {
            let kind = match kind {
                Some(k) => Some(k.parse::<AuditAction>()?.code().to_string()),
                None => None,
            };
            let mut events = Vec::new();
            for entry in vault.audit_entries().await? {
                let event = entry.event()?;
                let recorded = entry.recorded().unwrap_or_default();
                if kind
                    .as_ref()
                    .is_some_and(|k| entry.action().as_ref() != Some(k))
                    || app
                        .as_ref()
                        .is_some_and(|a| !entry.event.contains(a.as_str()))
                    || since
                        .as_ref()
                        .is_some_and(|s| recorded.as_str() < s.as_str())
                    || until
                        .as_ref()
                        .is_some_and(|u| recorded.as_str() >= u.as_str())
                {
                    continue;
                }
                if cli.table {
                    println!(
                        "{:>5}  {}  {:8}  {}",
                        entry.seq,
                        recorded,
                        entry.action().unwrap_or_default(),
                        event["outcomeDesc"].as_str().unwrap_or_default()
                    );
                }
                events.push(serde_json::json!({ "resource": event }));
            }
            if !cli.table {
                print_json(&serde_json::json!({
                    "resourceType": "Bundle", "type": "collection",
                    "total": events.len(), "entry": events
                }))?;
            }
        }
        Command::Grants => {
            let grants = vault.grants().await;
            if cli.table {
                for g in &grants {
                    println!(
                        "{}  {:20}  {:30}  {:10}  {:8}  expires {}{}  last use {}",
                        g.id,
                        g.app_name,
                        g.scopes
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(","),
                        g.access,
                        g.purpose,
                        ehi_layer::time::instant(g.expires_ms),
                        if g.expired { " (expired)" } else { "" },
                        g.last_use_ms
                            .map(ehi_layer::time::instant)
                            .unwrap_or_else(|| "unknown".into())
                    );
                }
            } else {
                print_json(&serde_json::to_value(&grants)?)?;
            }
        }
        Command::Revoke { grant, reencrypt } => {
            let report = vault.revoke(&grant, reencrypt).await?;
            eprintln!(
                "revoked {}: {} scope(s) moved to a new key epoch, {} other grant(s) re-sealed, \
                 {} version(s) re-encrypted, {} block(s) unpinned.\n\
                 note: revocation cannot take back what the app already read or copied.",
                report.grant,
                report.rotated.len(),
                report.resealed.len(),
                report.reencrypted,
                report.unpinned
            );
        }
        Command::Status => {
            let status = vault.status().await?;
            if cli.table {
                print!("{}", present::status_table(&status));
            } else {
                print_json(&present::status_json(&status))?;
            }
        }
    }
    Ok(())
}

async fn init(broker: &str, path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "a keystore already exists at {}; use --keystore for another one",
            path.display()
        );
    }
    let passphrase = passphrase(true)?;
    let net = Network::connect(broker, None).await?;
    let keystore = Keystore::generate(net.slots_server())?;
    {
        let keystore = keystore.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            keystore.save(&path, &passphrase, KdfParams::default())
        })
        .await??;
    }
    match Vault::create(net, &keystore).await {
        Ok(vault) => {
            eprintln!(
                "created vault {} (keystore {})",
                vault.slot(),
                path.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = Keystore::destroy(path);
            Err(e.into())
        }
    }
}

async fn serve(
    vault: Vault,
    keystore: &Keystore,
    keystore_path: &Path,
    listen: std::net::SocketAddr,
    token_expires: &str,
    clients: &[String],
) -> anyhow::Result<()> {
    use ehi_layer::serve::{self, ServeOptions, TokenKey};
    let ttl = serve::token::parse_duration(token_expires).map_err(anyhow::Error::msg)?;
    let grants = vault.grants().await;
    let mut registered = Vec::new();
    for client in clients {
        let Some((client_id, grant)) = client.split_once('=') else {
            bail!("--client {client}: expected <client_id>=<grant id>");
        };
        if client_id.is_empty() {
            bail!("--client {client}: empty client id");
        }
        if !grants.iter().any(|g| g.id == grant) {
            bail!("--client {client}: no grant {grant:?} in this vault (see ehi grants)");
        }
        registered.push((client_id.to_string(), grant.to_string()));
    }
    let key = TokenKey::from_keystore(keystore);
    let now = ehi_layer::time::now_ms() / 1000;
    let patient_token = key.mint_patient(now, ttl)?;
    let options = ServeOptions {
        revoked_tokens: Some(serve::token::revoked_tokens_path(keystore_path)),
        clients: registered,
        ..ServeOptions::default()
    };
    let server = serve::start_with(Arc::new(vault), key, listen, options).await?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{}", server.local_addr())?;
        stdout.flush()?;
    }
    eprintln!("patient token (valid {token_expires}): {patient_token}");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.stop().await?;
    Ok(())
}

async fn token(
    path: &Path,
    patient: bool,
    scopes: Option<&str>,
    expires: &str,
) -> anyhow::Result<()> {
    use ehi_layer::serve::{self, TokenKey};
    let ttl = serve::token::parse_duration(expires).map_err(anyhow::Error::msg)?;
    let passphrase = passphrase(false)?;
    let keystore = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Keystore::open(&path, &passphrase)).await??
    };
    let key = TokenKey::from_keystore(&keystore);
    let now = ehi_layer::time::now_ms() / 1000;
    let token = match (patient, scopes) {
        (true, _) => key.mint_patient(now, ttl)?,
        (false, Some(scopes)) => key.mint_app(scopes, now, ttl)?,
        (false, None) => bail!("give a grant id, --patient or --scopes"),
    };
    println!("{token}");
    if let Some(jti) = serve::token::jti_of(&token) {
        eprintln!("token id (jti): {jti}");
    }
    Ok(())
}

/// `ehi token <grant>`: a token bound to the grant, its scopes narrowed by `scopes`.
async fn token_grant(
    vault: &Vault,
    keystore: &Keystore,
    grant: &str,
    scopes: Option<&str>,
    expires: &str,
) -> anyhow::Result<()> {
    use ehi_layer::serve::{self, TokenKey};
    let ttl = serve::token::parse_duration(expires).map_err(anyhow::Error::msg)?;
    let Some(info) = vault.grants().await.into_iter().find(|g| g.id == grant) else {
        bail!("no grant {grant:?} in this vault (see ehi grants)");
    };
    let key = TokenKey::from_keystore(keystore);
    let now = ehi_layer::time::now_ms() / 1000;
    let (token, claims) = key.mint_grant(&info, scopes, now, ttl)?;
    println!("{token}");
    eprintln!(
        "token {} for {} (grant {}): {}",
        claims.jti, info.app_name, info.id, claims.scope
    );
    Ok(())
}

/// `ehi token revoke <jti|token>`.
fn token_revoke(keystore_path: &Path, token: &str) -> anyhow::Result<()> {
    use ehi_layer::serve::token;
    let jti = if token::valid_jti(token) {
        token.to_string()
    } else {
        token::jti_of(token).context("expected a token id (32 hex digits) or a token")?
    };
    let path = token::revoked_tokens_path(keystore_path);
    token::revoke_token(&path, &jti)?;
    eprintln!("revoked token {jti} (listed in {})", path.display());
    Ok(())
}

async fn import(vault: &Vault, files: &[PathBuf]) -> anyhow::Result<()> {
    let mut inputs = Vec::with_capacity(files.len());
    for file in files {
        inputs.push(Input::from_path(file)?);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::default_bar()
            .template("{spinner} {msg:12} [{bar:30}] {pos}/{len} {per_sec} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let handle = bar.clone();
    let progress: ehi_layer::ProgressFn = Arc::new(move |p: Progress| match p.stage {
        Stage::Parsing => handle.set_message("reading"),
        Stage::Storing => {
            handle.set_message("storing");
            handle.set_length(p.total);
            handle.set_position(p.done);
        }
        Stage::Committing => handle.set_message("committing"),
        _ => {}
    });
    let result = vault.import_with_progress(inputs, Some(progress)).await;
    bar.finish_and_clear();
    let report = result?;
    eprintln!(
        "imported: {} created, {} updated, {} deleted, {} unchanged (generation {}, {} attempt(s))",
        report.created,
        report.updated,
        report.deleted,
        report.unchanged,
        report.generation,
        report.attempts
    );
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

fn parse_reference(reference: &str) -> anyhow::Result<(String, String, Option<u64>)> {
    let parts: Vec<&str> = reference.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [t, id] => Ok((t.to_string(), id.to_string(), None)),
        [t, id, "_history", v] => Ok((
            t.to_string(),
            id.to_string(),
            Some(v.parse().with_context(|| format!("version {v:?}"))?),
        )),
        _ => bail!("expected Type/id or Type/id/_history/n, got {reference:?}"),
    }
}

fn default_keystore() -> anyhow::Result<PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .context("HOME is not set; pass --keystore")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(config.join("ehi").join("keystore.json"))
}

fn passphrase(new: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(value) = std::env::var("EHI_PASSPHRASE") {
        return Ok(Zeroizing::new(value));
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("Keystore passphrase: ").context("reading the passphrase")?,
    );
    if new {
        if first.chars().count() < 8 {
            bail!("choose a passphrase of at least 8 characters");
        }
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat the passphrase: ")
                .context("reading the passphrase")?,
        );
        if *first != *again {
            bail!("the passphrases differ");
        }
    }
    Ok(first)
}

fn confirm_delete() -> anyhow::Result<bool> {
    eprint!("This removes the vault and destroys the keystore. Type DELETE to confirm: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    Ok(line.trim() == "DELETE")
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

async fn app_command(command: AppCommand) -> anyhow::Result<()> {
    match command {
        AppCommand::New { name, app_keystore } => {
            let path = match app_keystore {
                Some(path) => path,
                None if name.contains(['/', '\\']) || name.starts_with('.') => {
                    bail!("the name {name:?} cannot be a file name; pass --app-keystore")
                }
                None => default_keystore()?
                    .with_file_name("apps")
                    .join(format!("{name}.json")),
            };
            let app = ehi_layer::AppKeystore::generate(&name)?;
            let passphrase = passphrase(true)?;
            {
                let app = app.clone();
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    app.save(&path, &passphrase, KdfParams::default())
                })
                .await??;
            }
            eprintln!("created app keystore {}", path.display());
            println!("{}", app.card().to_json()?);
        }
        AppCommand::Card { app_keystore } => {
            let passphrase = passphrase(false)?;
            let app = tokio::task::spawn_blocking(move || {
                ehi_layer::AppKeystore::open(&app_keystore, &passphrase)
            })
            .await??;
            println!("{}", app.card().to_json()?);
        }
    }
    Ok(())
}

/// Appends a read/search/export/removal entry to the audit log; a failure is reported
/// but does not undo what was shown.
async fn log_read(vault: &Vault, action: AuditAction, entities: Vec<String>) {
    let record = AuditRecord::new(action, "by the patient with the ehi command line")
        .with_entities(entities);
    if let Err(e) = vault.audit(record).await {
        eprintln!("warning: the audit entry could not be written: {e}");
    }
}
