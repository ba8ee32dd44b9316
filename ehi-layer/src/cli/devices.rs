//! Devices and break-glass access: `ehi device invite|join|list|remove` and
//! `ehi emergency set|show|ack|clear|open`.

use ehi_layer::share;
use std::path::Path;

use anyhow::{Context, bail};
use ehi_layer::{Keystore, Network, Vault};

use super::args::{DeviceCommand, EmergencyCommand};
use super::common::{passphrase, print_json};
use super::lifecycle::save_keystore;
use super::sharing::card_and_scopes;

pub(crate) async fn emergency(
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

pub(crate) async fn emergency_open(
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

pub(crate) async fn device(
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
            let devices = share::devices(vault).await;
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
            let report = share::remove_device(vault, &id).await?;
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

pub(crate) async fn device_join(
    broker: &str,
    keystore_path: &Path,
    code: &str,
) -> anyhow::Result<()> {
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
