//! What the servers see of break-glass access and device pairing: after an emergency
//! policy, two uses, an acknowledgement, a pairing through an invite code and a device
//! removal, no server's data directory holds the holder's name, the reason given, the
//! emergency purpose or label, the invite code or its secret, the joined device's key
//! or id, or any text of the audit events.

mod common;

use ehi_layer::share;
use std::sync::Arc;
use std::time::Duration;

use common::TestNet;
use ehi_layer::device::{self, Invite};
use ehi_layer::emergency::{self, EmergencyAccess};
use ehi_layer::{AppKeystore, Network};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_see_no_emergency_policy_or_invite_contents() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let vault = Arc::new(vault);

    // Break-glass: policy, two uses, acknowledgement.
    let holder = AppKeystore::generate("Quixotic Emergency Department")?;
    let ticket =
        emergency::set_policy(&vault, &keystore, holder.card().verify()?, Vec::new()).await?;
    let holder_net = Network::connect(&net.broker_url, Some(ticket.grant.slots_server)).await?;
    let reason = "patient found unresponsive near Wintergreen Hollow";
    EmergencyAccess::open(holder_net.clone(), &holder, &ticket, reason).await?;
    EmergencyAccess::open(holder_net, &holder, &ticket, reason).await?;
    assert_eq!(emergency::acknowledge(&vault, &keystore).await?.len(), 2);

    // Pairing and removal.
    let invite = Invite::create(&vault, Duration::from_secs(60)).await?;
    let code = invite.code();
    let inviter = {
        let vault = vault.clone();
        let keystore = keystore.clone();
        tokio::spawn(async move { invite.complete(&vault, &keystore).await })
    };
    let joiner_net = Network::connect(&net.broker_url, None).await?;
    let joined = device::join(&joiner_net, &code).await?;
    let added = inviter.await??;
    share::remove_device(&vault, &added.id).await?;
    vault.audit_verify().await?;

    let secret_hex = code
        .split('-')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("code shape"))?
        .to_string();
    let mut needles: Vec<Vec<u8>> = [
        "Quixotic Emergency Department".to_string(),
        "unresponsive".to_string(),
        "Wintergreen Hollow".to_string(),
        "ETREAT".to_string(),
        "break the glass".to_string(),
        "emergency".to_string(),
        "ehi-emergency".to_string(),
        "v3-ActReason".to_string(),
        "v3-ActCode".to_string(),
        ticket.grant.grant.clone(),
        holder.card().hpke_key.clone(),
        holder.card().signing_key.clone(),
        code.clone(),
        secret_hex.clone(),
        added.id.clone(),
        added.hpke_public.clone(),
        device::this_device(&keystore),
        "joined".to_string(),
        "AuditEvent".to_string(),
        "Patient Record".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    // Raw key bytes and the code's secret.
    needles.push(hex::decode(&holder.card().hpke_key)?);
    needles.push(joined.hpke_public().to_vec());
    needles.push(keystore.hpke_public().to_vec());
    needles.push(hex::decode(&secret_hex)?[4..].to_vec());

    let mut leaks = Vec::new();
    let files = net.data_file_contents()?;
    for (server, path, data) in &files {
        for needle in &needles {
            if data.windows(needle.len()).any(|w| w == needle.as_slice()) {
                leaks.push(format!(
                    "{server}: {} has {:?}",
                    path.display(),
                    String::from_utf8_lossy(needle)
                ));
            }
        }
    }
    assert!(files.len() > 20, "the data directories were scanned");
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    net.stop().await;
    Ok(())
}
