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
//!
//! The subcommands live in `cli/`, one file per group; [`run`] dispatches to them.

mod cli;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ehi_layer::{Keystore, Vault};

use cli::args::{
    AuditCommand, Cli, Command, DeviceCommand, EmergencyCommand, KeystoreCommand, TokenAction,
};
use cli::common::{default_keystore, refuse_non_empty};
use cli::{audit, consent, devices, lifecycle, records, serve, sharing};

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

/// Runs one command: those that need no unlocked vault here, the others through
/// [`with_vault`].
async fn run(cli: Cli) -> anyhow::Result<()> {
    install_client_security(&cli)?;
    let keystore_path = match &cli.keystore {
        Some(path) => path.clone(),
        None => default_keystore()?,
    };
    let command = match cli.command {
        Command::Init { recovery_kit } => {
            return lifecycle::init(&cli.broker, &keystore_path, recovery_kit.as_deref()).await;
        }
        Command::Keystore {
            command: KeystoreCommand::Backup { kit },
        } => return lifecycle::keystore_backup(&keystore_path, &kit).await,
        Command::Keystore {
            command: KeystoreCommand::Recover { kit },
        } => return lifecycle::keystore_recover(&cli.broker, &keystore_path, &kit).await,
        Command::App { command } => return sharing::app_command(command).await,
        Command::Token {
            action: Some(TokenAction::Revoke { token }),
            ..
        } => return serve::token_revoke(&keystore_path, &token),
        Command::Token {
            action: None,
            grant: None,
            patient,
            scopes,
            expires,
        } => return serve::token(&keystore_path, patient, scopes.as_deref(), &expires).await,
        Command::Device {
            command: DeviceCommand::Join { code },
        } => return devices::device_join(&cli.broker, &keystore_path, &code).await,
        Command::Emergency {
            command:
                EmergencyCommand::Open {
                    ticket,
                    app_keystore,
                    reason,
                },
        } => return devices::emergency_open(&cli.broker, &ticket, &app_keystore, &reason).await,
        command => command,
    };
    with_vault(&cli.broker, cli.table, &keystore_path, command).await
}

/// The commands that work on the unlocked vault: opens it (after checking an export's
/// folder), runs `command`, then records the vault generation this device saw (not
/// after `delete` and `serve`, which end there).
async fn with_vault(
    broker: &str,
    table: bool,
    keystore_path: &Path,
    command: Command,
) -> anyhow::Result<()> {
    if let Command::Export {
        dir, force: false, ..
    } = &command
    {
        // Checked before unlocking anything, so a mistyped folder costs nothing.
        refuse_non_empty(dir)?;
    }
    let (keystore, vault, seen_file) = lifecycle::open(broker, keystore_path).await?;
    let command = match command {
        Command::Delete { yes } => return lifecycle::delete(vault, keystore_path, yes).await,
        Command::Serve {
            listen,
            token_expires,
            clients,
            exit_on_removal,
        } => {
            return serve::serve(
                vault,
                &keystore,
                keystore_path,
                listen,
                &token_expires,
                &clients,
                exit_on_removal,
            )
            .await;
        }
        command => command,
    };
    // What the command read is queued in the audit log; appended here, whether the
    // command succeeded or not.
    let outcome = on_vault(&vault, &keystore, table, command).await;
    audit::flush(&vault).await;
    outcome?;
    if let Err(e) = vault.check_rollback(&seen_file).await {
        eprintln!("warning: could not record the vault generation: {e}");
    }
    Ok(())
}

/// The commands that run on the open vault and return to [`with_vault`].
async fn on_vault(
    vault: &Arc<Vault>,
    keystore: &Keystore,
    table: bool,
    command: Command,
) -> anyhow::Result<()> {
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
            records::import(vault, &files, &options).await?
        }
        Command::Search {
            resource_type,
            params,
            lenient,
        } => {
            let vault = vault.clone();
            records::print_search(vault, keystore, &resource_type, &params, lenient, table).await?
        }
        Command::Show { reference } => records::show(vault, &reference, table).await?,
        Command::History { reference } => records::history(vault, &reference, table).await?,
        Command::Patient { id } => records::patient(vault, &id, table).await?,
        Command::Export { dir, history, .. } => records::export(vault, &dir, history).await?,
        Command::Summary {
            patient,
            out,
            verify,
        } => match verify {
            Some(file) => records::verify_summary(vault, &file)?,
            None => records::summary(vault, patient.as_deref(), out.as_deref()).await?,
        },
        Command::Token {
            grant: Some(grant),
            scopes,
            expires,
            ..
        } => serve::token_grant(vault, keystore, &grant, scopes.as_deref(), &expires).await?,
        Command::Token { .. } => {}
        Command::App { .. } => {}
        Command::Grant {
            card,
            scopes,
            access,
            expires,
            purpose,
        } => sharing::grant(vault, &card, &scopes, &access, &expires, purpose).await?,
        Command::Audit {
            command: Some(AuditCommand::Verify),
            ..
        } => audit::verify(vault).await?,
        Command::Audit {
            command: None,
            kind,
            app,
            since,
            until,
        } => audit::list(vault, kind, app, since, until, table).await?,
        Command::Grants => sharing::grants(vault, table).await?,
        Command::Revoke { grant, reencrypt } => sharing::revoke(vault, &grant, reencrypt).await?,
        Command::Status => lifecycle::status(vault, keystore, table).await?,
        Command::Emergency { command } => devices::emergency(vault, keystore, command).await?,
        Command::Device { command } => devices::device(vault, keystore, command, table).await?,
        Command::Watch => lifecycle::watch(vault).await?,
        command => consent::consent_command(vault, command, table).await?,
    }
    Ok(())
}
