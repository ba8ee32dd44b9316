//! `ehi`: the patient's command line over the ehi-layer library.
//!
//! The keystore lives at `$XDG_CONFIG_HOME/ehi/keystore.json` (else
//! `$HOME/.config/ehi/keystore.json`; `--keystore` overrides). The passphrase comes from
//! `EHI_PASSPHRASE` or is prompted on the terminal. The network is found through the
//! broker at `--broker` / `INVARIANT_BROKER` (default `http://127.0.0.1:3000`).
//! Requests to it carry the capability token and trust the CAs of the global client
//! options (`--token`, `--token-file`, `--ca-cert`, `--insecure-skip-verify`, with the
//! `INVARIANT_*` variables), found as the `invariant` command finds them
//! ([`invariant_spec::client_config`]: a network started by `invariant up` on this
//! machine needs none of them).
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
    /// Capability token for the invariant network (not an `ehi serve` token). Without
    /// it or `--token-file`: the operator token `invariant up` left for this broker,
    /// else `<invariant config dir>/token`.
    #[arg(
        long = "token",
        id = "network_token",
        global = true,
        env = "INVARIANT_TOKEN",
        hide_env_values = true
    )]
    network_token: Option<String>,
    /// File holding the capability token for the invariant network.
    #[arg(long, global = true, env = "INVARIANT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust besides the system roots.
    #[arg(long, global = true, env = "INVARIANT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Accept any server certificate. Unsafe: anyone on the path can read and change
    /// the traffic. Prints a warning every run.
    #[arg(long, global = true)]
    insecure_skip_verify: bool,
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

// ---- break-glass and devices (subcommands) ---------------------------------------------

#[derive(Subcommand, Debug)]
enum EmergencyCommand {
    /// Set the break-glass policy: the holder (an app or organisation, by its card) may
    /// read the emergency scopes without you. Prints the ticket to hand to the holder.
    Set {
        /// The holder's card (JSON file from `ehi app new`).
        card: PathBuf,
        /// Scopes (default allergies,medications,clinical,immunizations; Condition
        /// lives in clinical, so the whole clinical scope is included).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Show the policy and every logged use.
    Show,
    /// Acknowledge the pending emergency accesses (copies them into the audit log).
    Ack,
    /// Remove the policy (revokes the holder's grant, rotating those scopes' keys).
    Clear,
    /// For the holder: use the emergency access (logged, flagged ETREAT/BTG) and print
    /// what it gives as a FHIR Bundle. Needs the holder's app keystore, not the patient.
    Open {
        /// The emergency ticket (JSON from `ehi emergency set`).
        ticket: PathBuf,
        /// The holder's app keystore.
        #[arg(long)]
        app_keystore: PathBuf,
        /// Why (recorded in the log the patient sees).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeystoreCommand {
    /// Write a recovery kit: a second copy of the keystore's keys sealed under a
    /// recovery code that is printed once (on stdout). Keep the kit and the code apart;
    /// together they restore the keystore with `ehi keystore recover`.
    Backup {
        /// Where to write the kit (must not exist).
        kit: PathBuf,
    },
    /// On a new device (or after losing the keystore or its passphrase): restore the
    /// keystore from a recovery kit. Asks for the recovery code (or reads
    /// `EHI_RECOVERY_CODE`) and for a new passphrase (or `EHI_PASSPHRASE`).
    Recover {
        /// The kit written by `ehi keystore backup`.
        kit: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Print a one-time invite code, then wait (until it expires) for the new device.
    Invite {
        /// Lifetime of the code (`90s`, `10m`; at most 1h).
        #[arg(long, default_value = "10m")]
        expires: String,
    },
    /// On the new device: join the vault with an invite code; writes this device's
    /// keystore (`--keystore`, default location) with a new passphrase.
    Join {
        /// The code printed by `ehi device invite`.
        code: String,
    },
    /// The vault's devices.
    List,
    /// Remove a device: rotates the root key and every scope key; the removed device
    /// cannot open anything written afterwards.
    Remove {
        /// The device id (from `ehi device list`).
        id: String,
    },
}

// ---- end of break-glass and devices -----------------------------------------------------

#[derive(Subcommand, Debug)]
enum RequestsCommand {
    /// Print the inbox card (JSON) to give to apps, creating the inbox on first use.
    Card {
        /// Also register this name for the card on the names server (apps then find
        /// the inbox by name; the card becomes public under it).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a keystore and an empty vault. Losing the keystore or its passphrase
    /// loses the vault: write a recovery kit (`--recovery-kit`, or later with `ehi
    /// keystore backup`).
    Init {
        /// Also write a recovery kit to this file (the code to open it is printed once).
        #[arg(long)]
        recovery_kit: Option<PathBuf>,
    },
    /// The keystore's recovery kit: `ehi keystore backup|recover`.
    Keystore {
        #[command(subcommand)]
        command: KeystoreCommand,
    },
    /// Import FHIR Bundles (transaction, batch, collection, searchset, document,
    /// history), resources, or Bulk Data NDJSON files, atomically.
    ///
    /// Every resource is checked against the FHIR R4 structure (known type and
    /// elements, datatypes, required elements); an invalid one refuses the whole import.
    /// A vault keeps one patient's records: records of another Patient are refused.
    Import {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Store resources that break the R4 structure rules, with a warning for each.
        #[arg(long)]
        lenient: bool,
        /// Accept records of other Patients (a guardian's or household vault); the
        /// decision is recorded in the audit log.
        #[arg(long)]
        allow_other_patients: bool,
    },
    /// FHIR search: `ehi search Observation code=http://loinc.org|8302-2 date=ge2020`.
    ///
    /// The same search as `ehi serve` answers (`_summary`, `_elements`, `_include`,
    /// `_revinclude`, `_sort`, `_total`, ...); every match is printed unless `_count` asks
    /// for one page. Unknown parameters are an error unless `--lenient`.
    Search {
        /// The resource type.
        resource_type: String,
        /// Search parameters (`name=value`, joined with `&`).
        params: Vec<String>,
        /// Ignore unknown search parameters (FHIR's `handling=lenient`); the Bundle
        /// reports them in an OperationOutcome entry.
        #[arg(long)]
        lenient: bool,
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
    /// Export everything: `<dir>/bundle.json` and `<dir>/ndjson/<Type>.ndjson`, into a
    /// new or empty directory (`--force` for any).
    Export {
        /// The directory.
        dir: PathBuf,
        /// Include every version (the Bundle becomes a history Bundle).
        #[arg(long)]
        history: bool,
        /// Write into a directory that is not empty (files of the same names are
        /// replaced).
        #[arg(long)]
        force: bool,
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
        /// Only entries recorded at or after this UTC date or instant (`2026-01-01`,
        /// `2026-01-01T08:30:00Z`).
        #[arg(long, value_parser = audit_bound)]
        since: Option<String>,
        /// Only entries recorded before this UTC date or instant.
        #[arg(long, value_parser = audit_bound)]
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
    /// Consent requests from apps waiting for a decision (`ehi requests card` prints
    /// the inbox card apps send requests to).
    Requests {
        #[command(subcommand)]
        command: Option<RequestsCommand>,
    },
    /// Approve a consent request: grant what it asks, keep a FHIR Consent, tell the app.
    Approve {
        /// The request id (from `ehi requests`).
        id: String,
    },
    /// Deny a consent request: keep a FHIR Consent (rejected), tell the app.
    Deny {
        /// The request id (from `ehi requests`).
        id: String,
        /// A note for the app.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Contributions from apps waiting for review (nothing enters the vault before
    /// `ehi accept`).
    Inbox,
    /// Accept a contribution: import its resources with a FHIR Provenance naming the app.
    Accept {
        /// The contribution id (from `ehi inbox`).
        id: String,
    },
    /// Reject a contribution: nothing is imported.
    Reject {
        /// The contribution id (from `ehi inbox`).
        id: String,
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
        /// Exit (status 0, after a line on stderr) once the vault is removed
        /// (`ehi delete` on any device); without it the server keeps answering every
        /// request with 410 Gone.
        #[arg(long)]
        exit_on_removal: bool,
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
    /// Break-glass emergency access: `ehi emergency set|show|ack|clear|open`.
    Emergency {
        #[command(subcommand)]
        command: EmergencyCommand,
    },
    /// This patient's devices: `ehi device invite|join|list|remove`.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Keep this device in sync: follow the vault slot and print each change (Ctrl-C
    /// stops).
    Watch,
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

/// `--since`/`--until`: a UTC date or instant, refused as a usage error otherwise.
fn audit_bound(text: &str) -> Result<String, ehi_layer::time::InvalidBound> {
    ehi_layer::time::parse_bound(text)
}

fn main() -> anyhow::Result<()> {
    invariant_runtime::stdout::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A reader that closed the pipe (`ehi search … | head -2`) ends the command quietly.
    invariant_runtime::stdout::quiet(runtime.block_on(run(cli)))
}

/// Installs the client options as the process default, before any client is built.
fn install_client_security(cli: &Cli) -> anyhow::Result<()> {
    use invariant_spec::client_config::{ClientFlags, default_config_dir};
    if cli.insecure_skip_verify {
        eprintln!(
            "warning: --insecure-skip-verify: server certificates are not checked; anyone on \
             the path can read and change this traffic, tokens included"
        );
    }
    let flags = ClientFlags {
        token: cli.network_token.clone(),
        token_file: cli.token_file.clone(),
        ca_cert: cli.ca_cert.clone(),
        insecure_skip_verify: cli.insecure_skip_verify,
    };
    let (security, _) = flags
        .resolve(&default_config_dir(), &cli.broker)
        .context("client options")?;
    security.install();
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    install_client_security(&cli)?;
    let keystore_path = match &cli.keystore {
        Some(path) => path.clone(),
        None => default_keystore()?,
    };
    let command = match cli.command {
        Command::Init { recovery_kit } => {
            return init(&cli.broker, &keystore_path, recovery_kit.as_deref()).await;
        }
        Command::Keystore {
            command: KeystoreCommand::Backup { kit },
        } => return keystore_backup(&keystore_path, &kit).await,
        Command::Keystore {
            command: KeystoreCommand::Recover { kit },
        } => return keystore_recover(&cli.broker, &keystore_path, &kit).await,
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
        Command::Device {
            command: DeviceCommand::Join { code },
        } => return device_join(&cli.broker, &keystore_path, &code).await,
        Command::Emergency {
            command:
                EmergencyCommand::Open {
                    ticket,
                    app_keystore,
                    reason,
                },
        } => return emergency_open(&cli.broker, &ticket, &app_keystore, &reason).await,
        command => command,
    };
    if let Command::Export {
        dir, force: false, ..
    } = &command
    {
        // Checked before unlocking anything, so a mistyped folder costs nothing.
        refuse_non_empty(dir)?;
    }
    let passphrase = passphrase(false)?;
    let keystore = {
        let path = keystore_path.clone();
        tokio::task::spawn_blocking(move || Keystore::open(&path, &passphrase)).await??
    };
    let net = Network::connect(&cli.broker, Some(keystore.slots_server())).await?;
    let vault = Arc::new(Vault::open(net, &keystore).await?);
    // Rollback detection: refuse a root older than one this device saw.
    let seen_file = seen_generation_file(&keystore_path);
    vault.check_rollback(&seen_file).await?;
    match command {
        Command::Init { .. } | Command::Keystore { .. } => {}
        Command::Import {
            files,
            lenient,
            allow_other_patients,
        } => {
            let options = ehi_layer::ImportOptions {
                lenient,
                allow_other_patients,
            };
            import(&vault, &files, &options).await?
        }
        Command::Search {
            resource_type,
            params,
            lenient,
        } => {
            let query = params.join("&");
            let bundle = search(vault.clone(), &keystore, &resource_type, &query, lenient).await?;
            if cli.table {
                let resources: Vec<serde_json::Value> = bundle["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["search"]["mode"] != "outcome")
                    .map(|e| e["resource"].clone())
                    .collect();
                print!("{}", present::table(&resources));
                match bundle["total"].as_u64() {
                    Some(total) => eprintln!("{total} match(es)"),
                    None => eprintln!("{} resource(s)", resources.len()),
                }
            } else {
                print_json(&bundle)?;
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
        Command::Export { dir, history, .. } => {
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
            let vault = Arc::into_inner(vault).context("the vault is still in use")?;
            let report = vault.remove(Some(&keystore_path)).await?;
            eprintln!(
                "vault removed: slots point at the tombstone, {} of {} blocks unpinned{}, keystore {} destroyed.\n\
                 the data cannot be decrypted from now on: every key is gone (crypto-shredded).\n\
                 note: {}.",
                report.unpinned,
                report.blocks,
                if report.distributor {
                    ""
                } else {
                    " (no distributor)"
                },
                keystore_path.display(),
                collection_note(report.collection.as_ref()),
            );
            for note in report.notes {
                eprintln!("note: {note}");
            }
            return Ok(());
        }
        Command::Serve {
            listen,
            token_expires,
            clients,
            exit_on_removal,
        } => {
            return serve(
                vault,
                &keystore,
                &keystore_path,
                listen,
                &token_expires,
                &clients,
                exit_on_removal,
            )
            .await;
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
            let (app, parsed) = card_and_scopes(&card, &scopes)?;
            let request = ehi_layer::GrantRequest {
                app,
                scopes: parsed,
                access: access.parse()?,
                duration_ms: ehi_layer::grant::parse_duration_ms(&expires)?,
                purpose,
            };
            let (info, ticket) = vault.grant(request).await?;
            vault.publish_channel(&info.id).await?;
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
            merge_app_audit(&vault).await;
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
            if report.unpinned > 0 {
                eprintln!(
                    "note: the old ciphertext: {}.",
                    collection_note(report.collection.as_ref())
                );
            }
        }
        Command::Status => {
            let status = vault.status().await?;
            // A log the holder wrote badly must not hide the vault's status.
            let pending = match ehi_layer::emergency::pending(&vault, &keystore).await {
                Ok(pending) => pending,
                Err(e) => {
                    eprintln!("warning: the emergency access log could not be checked: {e}");
                    Vec::new()
                }
            };
            if cli.table {
                print!("{}", present::status_table(&status));
            } else {
                let mut json = present::status_json(&status);
                if !pending.is_empty() {
                    json["emergencyAccess"] = serde_json::to_value(&pending)?;
                }
                print_json(&json)?;
            }
            for use_ in &pending {
                eprintln!("{} (acknowledge with `ehi emergency ack`)", use_.notice());
            }
        }
        Command::Emergency { command } => emergency(&vault, &keystore, command).await?,
        Command::Device { command } => device(&vault, &keystore, command, cli.table).await?,
        Command::Watch => {
            eprintln!("watching vault {} (Ctrl-C stops)", vault.slot());
            let watch = vault.watch(|event| {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(
                    stdout,
                    "synced generation {} (root {})",
                    event.generation, event.root
                );
                let _ = stdout.flush();
            });
            tokio::select! {
                result = watch => result?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        command => consent_command(&vault, command, cli.table).await?,
    }
    if let Err(e) = vault.check_rollback(&seen_file).await {
        eprintln!("warning: could not record the vault generation: {e}");
    }
    Ok(())
}

/// Where this device remembers the highest vault generation it saw.
fn seen_generation_file(keystore: &Path) -> PathBuf {
    let mut name = keystore.as_os_str().to_owned();
    name.push(".generation");
    PathBuf::from(name)
}

/// The app card in the file `card` (its signature checked) and the `--scope` names parsed.
fn card_and_scopes(
    card: &std::path::Path,
    scopes: &[String],
) -> anyhow::Result<(ehi_layer::app::VerifiedCard, Vec<ehi_layer::Scope>)> {
    let bytes = std::fs::read(card).with_context(|| format!("reading {}", card.display()))?;
    let app = ehi_layer::AppCard::parse(&bytes)?;
    let parsed = scopes
        .iter()
        .map(|scope| {
            scope
                .trim()
                .parse::<ehi_layer::Scope>()
                .map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((app, parsed))
}

/// Merges the apps' audit chains (for "last use"); a failure is reported, not fatal.
async fn merge_app_audit(vault: &Vault) {
    if let Err(e) = vault.publish_channels().await {
        eprintln!("warning: could not open the grant channels: {e}");
    }
    match vault.merge_app_audit().await {
        Ok(report) => {
            for (grant, reason) in report.broken {
                eprintln!(
                    "warning: the audit chain of the app of grant {grant} is broken: {reason}"
                );
            }
        }
        Err(e) => eprintln!("warning: could not merge the apps' audit reports: {e}"),
    }
}

/// Consent requests and contributions.
async fn consent_command(vault: &Vault, command: Command, table: bool) -> anyhow::Result<()> {
    use ehi_layer::time::instant;
    match command {
        Command::Requests {
            command: Some(RequestsCommand::Card { name }),
        } => {
            let card = match name {
                Some(name) => {
                    let (card, name) = vault.publish_inbox_name(&name).await?;
                    eprintln!("apps find this inbox under the name {name}");
                    card
                }
                None => vault.inbox_card().await?,
            };
            println!("{}", card.to_json()?);
        }
        Command::Requests { command: None } => {
            let list = vault.requests().await?;
            if table {
                for r in &list.pending {
                    println!(
                        "{}  {:20}  {:30}  {:10}  {:8}  {} .. {}  {}",
                        r.id,
                        r.app_name,
                        r.scopes
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(","),
                        r.access,
                        r.purpose,
                        instant(r.start_ms),
                        instant(r.end_ms),
                        r.note
                    );
                }
                for u in &list.unreadable {
                    println!("{}  REFUSED: {}", u.id, u.reason);
                }
            } else {
                print_json(&serde_json::to_value(&list)?)?;
            }
        }
        Command::Approve { id } => {
            let outcome = vault.approve_request(&id).await?;
            eprintln!(
                "approved request {} of {}: Consent/{} recorded, the app was told",
                outcome.request, outcome.app_name, outcome.consent_id
            );
            if let Some((info, ticket)) = outcome.grant {
                eprintln!("grant {} until {}", info.id, instant(info.expires_ms));
                print_json(&serde_json::to_value(&ticket)?)?;
            }
        }
        Command::Deny { id, note } => {
            let outcome = vault.deny_request(&id, &note).await?;
            eprintln!(
                "denied request {} of {}: Consent/{} recorded, the app was told",
                outcome.request, outcome.app_name, outcome.consent_id
            );
        }
        Command::Inbox => {
            if let Err(e) = vault.publish_channels().await {
                eprintln!("warning: could not open the grant channels: {e}");
            }
            let list = vault.contributions().await?;
            if table {
                for c in &list {
                    match &c.refused {
                        None => println!(
                            "{}  {:20}  {}  {}",
                            c.id,
                            c.app_name,
                            c.resources.join(","),
                            c.note
                        ),
                        Some(reason) => println!("{}  {:20}  REFUSED: {reason}", c.id, c.app_name),
                    }
                }
            } else {
                print_json(&serde_json::to_value(&list)?)?;
            }
        }
        Command::Accept { id } => {
            let info = vault.accept_contribution(&id).await?;
            eprintln!(
                "accepted {} resource(s) from {} with Provenance/contribution-{}",
                info.resources.len(),
                info.app_name,
                info.id
            );
        }
        Command::Reject { id } => {
            vault.reject_contribution(&id).await?;
            eprintln!("rejected contribution {id}: nothing was imported");
        }
        other => bail!("unexpected command {other:?}"),
    }
    Ok(())
}

async fn init(broker: &str, path: &Path, recovery_kit: Option<&Path>) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "a keystore already exists at {}; use --keystore for another one",
            path.display()
        );
    }
    if let Some(kit) = recovery_kit
        && kit.exists()
    {
        bail!(
            "{} exists; choose a new file for the recovery kit",
            kit.display()
        );
    }
    let passphrase = passphrase(true)?;
    let net = Network::connect(broker, None).await?;
    let keystore = Keystore::generate(net.slots_server())?;
    save_keystore(&keystore, path, passphrase).await?;
    match Vault::create(net, &keystore).await {
        Ok(vault) => {
            eprintln!(
                "created vault {} (keystore {})",
                vault.slot(),
                path.display()
            );
            eprintln!(
                "Keep the keystore and its passphrase: losing either loses the vault, because \
                 nothing else can decrypt it (not the servers, not us)."
            );
            match recovery_kit {
                Some(kit) => write_recovery_kit(&keystore, kit).await?,
                None => eprintln!(
                    "Write a recovery kit now: `ehi keystore backup <file>` (kept apart from its \
                     code, it restores the keystore with `ehi keystore recover`)."
                ),
            }
            Ok(())
        }
        Err(e) => {
            let _ = Keystore::destroy(path);
            Err(e.into())
        }
    }
}

/// Saves `keystore` to a new file at `path` under `passphrase` (Argon2id, off the
/// async workers).
async fn save_keystore(
    keystore: &Keystore,
    path: &Path,
    passphrase: Zeroizing<String>,
) -> anyhow::Result<()> {
    let keystore = keystore.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || keystore.save(&path, &passphrase, KdfParams::default()))
        .await??;
    Ok(())
}

/// `ehi search`: the search `ehi serve` runs, answered in process, as the patient;
/// every page is fetched (one Bundle) unless the query names `_count`. Logged in the
/// audit log like any read of the patient's.
async fn search(
    vault: Arc<Vault>,
    keystore: &Keystore,
    resource_type: &str,
    query: &str,
    lenient: bool,
) -> anyhow::Result<serde_json::Value> {
    use ehi_layer::serve::{self, TokenKey};
    let key = TokenKey::from_keystore(keystore);
    let prefer = lenient.then_some("handling=lenient");
    let base = format!("ehi://{}/", vault.slot());
    let one_page = query.split('&').any(|p| p.starts_with("_count="));
    let mut path = format!("{resource_type}?{query}");
    let mut bundle: Option<serde_json::Value> = None;
    loop {
        let (status, page) =
            serve::answer_locally(vault.clone(), key.clone(), &path, prefer).await?;
        if !status.is_success() {
            let why = page["issue"][0]["diagnostics"]
                .as_str()
                .map_or_else(|| page.to_string(), str::to_string);
            bail!("{why}");
        }
        let next = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .and_then(|url| url.strip_prefix(&base))
            .map(str::to_string);
        match bundle.as_mut() {
            None => bundle = Some(page),
            Some(all) => {
                let more = page["entry"].as_array().cloned().unwrap_or_default();
                if let Some(entries) = all["entry"].as_array_mut() {
                    // One OperationOutcome is enough: later pages repeat it.
                    entries.extend(
                        more.into_iter()
                            .filter(|e| e["search"]["mode"] != "outcome"),
                    );
                }
            }
        }
        match next {
            Some(next) if !one_page => path = next,
            _ => break,
        }
    }
    let mut bundle = bundle.unwrap_or_default();
    if !one_page && let Some(obj) = bundle.as_object_mut() {
        // Every page is in this one Bundle: paging links would mislead.
        obj.remove("link");
    }
    log_read(
        &vault,
        AuditAction::Search,
        vec![format!("{resource_type}?{query}")],
    )
    .await;
    Ok(bundle)
}

/// Writes a recovery kit and prints its code once (stdout), with what to do (stderr).
async fn write_recovery_kit(keystore: &Keystore, kit: &Path) -> anyhow::Result<()> {
    let code = {
        let keystore = keystore.clone();
        let kit = kit.to_path_buf();
        tokio::task::spawn_blocking(move || keystore.save_recovery_kit(&kit, KdfParams::default()))
            .await??
    };
    eprintln!(
        "wrote the recovery kit {}. Its recovery code follows, shown this once: write it \
         down and keep it apart from the kit. Kit and code together restore the keystore \
         (`ehi keystore recover {}`); either alone reveals nothing.",
        kit.display(),
        kit.display()
    );
    println!("{}", code.as_str());
    Ok(())
}

/// `ehi keystore backup <kit>`.
async fn keystore_backup(keystore_path: &Path, kit: &Path) -> anyhow::Result<()> {
    if kit.exists() {
        bail!(
            "{} exists; choose a new file for the recovery kit",
            kit.display()
        );
    }
    let passphrase = passphrase(false)?;
    let keystore = {
        let path = keystore_path.to_path_buf();
        tokio::task::spawn_blocking(move || Keystore::open(&path, &passphrase)).await??
    };
    write_recovery_kit(&keystore, kit).await
}

/// `ehi keystore recover <kit>`: the keystore back from kit and code, under a new
/// passphrase, checked against the network (the vault must open).
async fn keystore_recover(broker: &str, keystore_path: &Path, kit: &Path) -> anyhow::Result<()> {
    if keystore_path.exists() {
        bail!(
            "a keystore already exists at {}; recover to another place with --keystore",
            keystore_path.display()
        );
    }
    let code = match std::env::var("EHI_RECOVERY_CODE") {
        Ok(code) => Zeroizing::new(code),
        Err(_) => prompt_secret("Recovery code: ", "the recovery code", "EHI_RECOVERY_CODE")?,
    };
    let keystore = {
        let kit = kit.to_path_buf();
        tokio::task::spawn_blocking(move || Keystore::open_recovery_kit(&kit, &code)).await??
    };
    let net = Network::connect(broker, Some(keystore.slots_server())).await?;
    let vault = Vault::open(net, &keystore)
        .await
        .context("the kit opened, but its vault did not")?;
    let passphrase = passphrase(true)?;
    save_keystore(&keystore, keystore_path, passphrase).await?;
    eprintln!(
        "recovered the keystore of vault {} to {} (under the new passphrase)",
        vault.slot(),
        keystore_path.display()
    );
    Ok(())
}

async fn serve(
    vault: Arc<Vault>,
    keystore: &Keystore,
    keystore_path: &Path,
    listen: std::net::SocketAddr,
    token_expires: &str,
    clients: &[String],
    exit_on_removal: bool,
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
    let server = serve::start_with(vault, key, listen, options).await?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{}", server.local_addr())?;
        stdout.flush()?;
    }
    eprintln!("patient token (valid {token_expires}): {patient_token}");
    let removal = async {
        if exit_on_removal {
            server.removed().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
        () = removal => eprintln!("the vault was removed: exiting (--exit-on-removal)"),
    }
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
    let patient = ehi_layer::serve::context_patient(vault).await;
    let (token, claims) = key.mint_grant_for(&info, scopes, patient.as_deref(), now, ttl)?;
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

async fn import(
    vault: &Vault,
    files: &[PathBuf],
    options: &ehi_layer::ImportOptions,
) -> anyhow::Result<()> {
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
    let result = vault.import_with(inputs, options, Some(progress)).await;
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
    if !report.other_patients.is_empty() {
        eprintln!(
            "note: records of {} kept in this vault as allowed (recorded in the audit log)",
            report.other_patients.join(", ")
        );
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

/// Fails unless `dir` is missing or an empty directory.
fn refuse_non_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("reading {}", dir.display()))),
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; choose a new folder, or pass --force to write into it \
                     (files of the same names are replaced)",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// Asks on the terminal, or says how to give the passphrase when there is none.
fn prompt_passphrase(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    prompt_secret(prompt, "the keystore passphrase", "EHI_PASSPHRASE")
}

/// Asks for a secret on the terminal, or says which variable gives it when there is no
/// terminal.
fn prompt_secret(prompt: &str, what: &str, variable: &str) -> anyhow::Result<Zeroizing<String>> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_err()
    {
        bail!(
            "no terminal to ask for {what}: set {variable} (for scripts and services), or \
             run ehi in a terminal"
        );
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password(prompt).with_context(|| format!("reading {what}"))?,
    ))
}

fn passphrase(new: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(value) = std::env::var("EHI_PASSPHRASE") {
        return Ok(Zeroizing::new(value));
    }
    let first = prompt_passphrase("Keystore passphrase: ")?;
    if new {
        if first.chars().count() < 8 {
            bail!("choose a passphrase of at least 8 characters");
        }
        let again = prompt_passphrase("Repeat the passphrase: ")?;
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

// ---- break-glass and devices (handlers) -------------------------------------------------

async fn emergency(
    vault: &Vault,
    keystore: &Keystore,
    command: EmergencyCommand,
) -> anyhow::Result<()> {
    use ehi_layer::emergency;
    match command {
        EmergencyCommand::Set { card, scopes } => {
            let (holder, parsed) = card_and_scopes(&card, &scopes)?;
            let ticket = emergency::set_policy(vault, keystore, holder, parsed).await?;
            let policy = emergency::policy(vault, keystore)
                .await?
                .context("the policy was not stored")?;
            eprintln!(
                "emergency policy set: {} may read {} without you (purpose ETREAT, grant {}); \
                 every use is logged and shown by `ehi status`. Hand the ticket below to the holder.",
                policy.holder,
                policy
                    .scopes
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(","),
                policy.grant
            );
            print_json(&serde_json::to_value(&ticket)?)?;
        }
        EmergencyCommand::Show => {
            let policy = emergency::policy(vault, keystore).await?;
            let uses = emergency::uses(vault, keystore).await?;
            print_json(&serde_json::json!({ "policy": policy, "uses": uses }))?;
        }
        EmergencyCommand::Ack => {
            let acked = emergency::acknowledge(vault, keystore).await?;
            for use_ in &acked {
                eprintln!("acknowledged: {}", use_.notice());
            }
            eprintln!("{} emergency access(es) acknowledged", acked.len());
        }
        EmergencyCommand::Clear => {
            if emergency::clear_policy(vault, keystore).await? {
                eprintln!("emergency policy removed; the holder's grant is revoked");
            } else {
                eprintln!("there was no emergency policy");
            }
        }
        EmergencyCommand::Open { .. } => {}
    }
    Ok(())
}

async fn emergency_open(
    broker: &str,
    ticket: &Path,
    app_keystore: &Path,
    reason: &str,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(ticket).with_context(|| format!("reading {}", ticket.display()))?;
    let ticket = ehi_layer::emergency::EmergencyTicket::parse(&bytes)?;
    let passphrase = passphrase(false)?;
    let app = {
        let path = app_keystore.to_path_buf();
        tokio::task::spawn_blocking(move || ehi_layer::AppKeystore::open(&path, &passphrase))
            .await??
    };
    let net = Network::connect(broker, Some(ticket.grant.slots_server)).await?;
    let (session, logged) =
        ehi_layer::emergency::EmergencyAccess::open(net, &app, &ticket, reason).await?;
    eprintln!(
        "emergency access logged for the patient (entry {}, purpose ETREAT, label BTG)",
        logged.seq
    );
    print_json(&session.export_bundle().await?)?;
    Ok(())
}

async fn device(
    vault: &Vault,
    keystore: &Keystore,
    command: DeviceCommand,
    table: bool,
) -> anyhow::Result<()> {
    use ehi_layer::device::{self, Invite};
    match command {
        DeviceCommand::Invite { expires } => {
            let ttl = ehi_layer::grant::parse_duration_ms(&expires)?;
            let invite = Invite::create(vault, std::time::Duration::from_millis(ttl)).await?;
            {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{}", invite.code())?;
                stdout.flush()?;
            }
            eprintln!(
                "on the new device run `ehi device join <code>` before {}; waiting…",
                ehi_layer::time::instant(invite.expires_ms())
            );
            let joined = invite.complete(vault, keystore).await?;
            eprintln!(
                "device {} joined (compare with the id the new device printed)",
                joined.id
            );
        }
        DeviceCommand::List => {
            let this = device::this_device(keystore);
            let devices = vault.devices().await;
            if table {
                for d in &devices {
                    println!(
                        "{}  added {}{}",
                        d.id,
                        ehi_layer::time::instant(d.added_ms),
                        if d.id == this { "  (this device)" } else { "" }
                    );
                }
            } else {
                let list: Vec<serde_json::Value> = devices
                    .iter()
                    .map(|d| {
                        let mut v = serde_json::to_value(d).unwrap_or_default();
                        v["this_device"] = (d.id == this).into();
                        v
                    })
                    .collect();
                print_json(&serde_json::Value::Array(list))?;
            }
        }
        DeviceCommand::Remove { id } => {
            if id
                .trim()
                .eq_ignore_ascii_case(&device::this_device(keystore))
            {
                bail!("that is this device; remove it from another one");
            }
            let report = vault.remove_device(&id).await?;
            eprintln!(
                "device {} removed: root key moved to generation {}, {} scope(s) to new key \
                 epochs, {} grant(s) re-sealed. It cannot open anything written from now on; \
                 what it already read stays read.",
                report.device,
                report.root_generation,
                report.rotated.len(),
                report.resealed
            );
            if report.emergency_rekeyed {
                eprintln!(
                    "emergency policy re-published under the new root key (the holder's \
                     ticket stays valid; its access log keeps its key)"
                );
            }
        }
        DeviceCommand::Join { .. } => {}
    }
    Ok(())
}

async fn device_join(broker: &str, keystore_path: &Path, code: &str) -> anyhow::Result<()> {
    if keystore_path.exists() {
        bail!(
            "a keystore already exists at {}; use --keystore for this device's new one",
            keystore_path.display()
        );
    }
    let parsed = ehi_layer::device::InviteCode::parse(code)?;
    let net = Network::connect(broker, Some(parsed.slots_server())).await?;
    let keystore = ehi_layer::device::join(&net, code).await?;
    let passphrase = passphrase(true)?;
    save_keystore(&keystore, keystore_path, passphrase).await?;
    eprintln!(
        "joined vault {} as device {} (keystore {})",
        keystore.vault_slot(),
        ehi_layer::device::this_device(&keystore),
        keystore_path.display()
    );
    Ok(())
}

// ---- end of break-glass and devices -----------------------------------------------------

/// When unpinned ciphertext leaves the storage servers, for the delete and revoke
/// messages.
fn collection_note(collection: Option<&ehi_layer::network::Collection>) -> String {
    match collection {
        Some(collection) => collection.describe(),
        None => "no distributor here collects unpinned blocks: the ciphertext stays on the \
                 storage servers until an operator deletes it"
            .to_string(),
    }
}
