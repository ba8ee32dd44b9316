//! Sharing with apps: app identities (`ehi app new|card`), `ehi grant`, `ehi grants`
//! and `ehi revoke`.

use ehi_layer::share;
use std::path::Path;

use anyhow::{Context, bail};
use ehi_layer::{KdfParams, Vault};

use super::args::AppCommand;
use super::common::{collection_note, default_keystore, passphrase, print_json};

/// The app card in the file `card` (its signature checked) and the `--scope` names parsed.
pub(crate) fn card_and_scopes(
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
    if let Err(e) = share::publish_channels(vault).await {
        eprintln!("warning: could not open the grant channels: {e}");
    }
    match share::merge_app_audit(vault).await {
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

pub(crate) async fn app_command(command: AppCommand) -> anyhow::Result<()> {
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

/// `ehi grant <card> --scopes … --access … --expires … --purpose …`: prints the
/// ticket for the app.
pub(crate) async fn grant(
    vault: &Vault,
    card: &Path,
    scopes: &[String],
    access: &str,
    expires: &str,
    purpose: String,
) -> anyhow::Result<()> {
    let (app, parsed) = card_and_scopes(card, scopes)?;
    let request = ehi_layer::GrantRequest {
        app,
        scopes: parsed,
        access: access.parse()?,
        duration_ms: ehi_layer::grant::parse_duration_ms(expires)?,
        purpose,
    };
    let (info, ticket) = share::grant(vault, request).await?;
    share::publish_channel(vault, &info.id).await?;
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
    Ok(())
}

/// `ehi grants`: every grant, with its last use from the apps' audit chains.
pub(crate) async fn grants(vault: &Vault, table: bool) -> anyhow::Result<()> {
    merge_app_audit(vault).await;
    let grants = share::grants(vault).await;
    if table {
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
    Ok(())
}

/// `ehi revoke <grant>`.
pub(crate) async fn revoke(vault: &Vault, grant: &str, reencrypt: bool) -> anyhow::Result<()> {
    let report = share::revoke(vault, grant, reencrypt).await?;
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
    Ok(())
}
