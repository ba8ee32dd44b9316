//! Break-glass emergency access against a real local network: the policy, a holder's
//! use without the patient, the flagged log entry, `pending` until acknowledged, and
//! what another app (not the holder) gets from the ticket.

mod common;

use common::TestNet;
use ehi_layer::audit::is_emergency;
use ehi_layer::emergency::{self, EmergencyAccess, EmergencyTicket};
use ehi_layer::share;
use ehi_layer::{AppKeystore, EhiError, Network, Scope};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn break_glass_is_logged_flagged_and_surfaced_until_acknowledged() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    assert!(emergency::policy(&vault, &keystore).await?.is_none());
    assert!(emergency::pending(&vault, &keystore).await?.is_empty());

    let holder = AppKeystore::generate("County ER")?;
    let ticket =
        emergency::set_policy(&vault, &keystore, holder.card().verify()?, Vec::new()).await?;
    // The ticket goes to the holder as JSON and comes back intact.
    let ticket = EmergencyTicket::parse(serde_json::to_string(&ticket)?.as_bytes())?;
    let policy = emergency::policy(&vault, &keystore)
        .await?
        .expect("a policy");
    assert_eq!(policy.holder, "County ER");
    assert_eq!(
        policy.scopes,
        [
            Scope::Clinical,
            Scope::Medications,
            Scope::Immunizations,
            Scope::Allergies
        ]
    );
    let grants = share::grants(&vault).await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].purpose, "ETREAT");

    // The holder uses it; the patient is not involved (the vault handle is idle).
    let holder_net = Network::connect(&net.broker_url, Some(ticket.grant.slots_server)).await?;
    let (session, logged) = EmergencyAccess::open(
        holder_net.clone(),
        &holder,
        &ticket,
        "unconscious on arrival, checking allergies",
    )
    .await?;
    assert_eq!(logged.seq, 0);
    assert!(is_emergency(&logged.event));
    let listed = session.list()?;
    assert!(listed.iter().any(|r| r.starts_with("AllergyIntolerance/")));
    assert!(listed.iter().any(|r| r.starts_with("Condition/")));
    assert!(listed.iter().any(|r| r.starts_with("MedicationRequest/")));
    assert!(listed.iter().any(|r| r.starts_with("Immunization/")));
    // Not in the emergency scopes.
    assert!(!listed.iter().any(|r| r.starts_with("Claim/")));
    assert!(!listed.iter().any(|r| r.starts_with("Patient/")));
    let allergy = listed
        .iter()
        .find(|r| r.starts_with("AllergyIntolerance/"))
        .expect("allergy");
    let (t, id) = allergy.split_once('/').expect("ref");
    let resource = session.read(t, id).await?;
    assert_eq!(resource["code"]["coding"][0]["code"], "300916003");

    // A second use, then the patient's device sees both, flagged, by the holder.
    EmergencyAccess::open(holder_net.clone(), &holder, &ticket, "second look").await?;
    let pending = emergency::pending(&vault, &keystore).await?;
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].who, "County ER");
    assert!(pending[0].reason.contains("unconscious"));
    assert!(pending.iter().all(|u| is_emergency(&u.event)));
    assert!(pending[1].notice().starts_with("emergency access on 20"));
    assert!(pending[1].notice().contains("by County ER"));

    // Acknowledge: copied into the vault's audit log, flagged, and no longer pending.
    let acked = emergency::acknowledge(&vault, &keystore).await?;
    assert_eq!(acked.len(), 2);
    assert!(emergency::pending(&vault, &keystore).await?.is_empty());
    let entries = vault.audit_entries().await?;
    let flagged: Vec<_> = entries
        .iter()
        .filter(|e| e.action().as_deref() == Some("emergency"))
        .collect();
    assert_eq!(flagged.len(), 2);
    assert!(
        flagged
            .iter()
            .all(|e| is_emergency(&e.event().expect("event")))
    );
    assert!(flagged[0].event.contains("County ER"));
    vault.audit_verify().await?;

    // A new use after the acknowledgement is pending again (only that one).
    EmergencyAccess::open(holder_net.clone(), &holder, &ticket, "third").await?;
    let pending = emergency::pending(&vault, &keystore).await?;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].seq, 2);
    assert_eq!(emergency::uses(&vault, &keystore).await?.len(), 3);

    // Another app with the same ticket gets nothing, and logs nothing.
    let other = AppKeystore::generate("Curious App")?;
    let err = EmergencyAccess::open(holder_net.clone(), &other, &ticket, "peek")
        .await
        .expect_err("not the holder");
    assert!(matches!(err, EhiError::InvalidArgument(_)), "{err}");
    assert_eq!(emergency::uses(&vault, &keystore).await?.len(), 3);

    // A reason is required.
    assert!(
        EmergencyAccess::open(holder_net.clone(), &holder, &ticket, "  ")
            .await
            .is_err()
    );

    // Clearing the policy revokes the grant: the holder can no longer open it.
    assert!(emergency::clear_policy(&vault, &keystore).await?);
    assert!(emergency::policy(&vault, &keystore).await?.is_none());
    assert!(share::grants(&vault).await.is_empty());
    let err = EmergencyAccess::open(holder_net, &holder, &ticket, "after clear")
        .await
        .expect_err("revoked");
    assert!(matches!(err, EhiError::Revoked { .. }), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_the_policy_cuts_off_the_old_holder() -> anyhow::Result<()> {
    // Replacing the policy with another holder revokes the first holder's grant and
    // starts a new log.
    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_vault(dir.path()).await?;
    let first = AppKeystore::generate("First ER")?;
    let old = emergency::set_policy(
        &vault,
        &keystore,
        first.card().verify()?,
        vec![Scope::Allergies],
    )
    .await?;
    let second = AppKeystore::generate("Second ER")?;
    emergency::set_policy(
        &vault,
        &keystore,
        second.card().verify()?,
        vec![Scope::Allergies],
    )
    .await?;
    assert_eq!(share::grants(&vault).await.len(), 1);
    let holder_net = Network::connect(&net.broker_url, None).await?;
    // The first holder's grant was revoked when the policy was replaced.
    assert!(
        EmergencyAccess::open(holder_net.clone(), &first, &old, "old ticket")
            .await
            .is_err()
    );
    // Replacing it again closes the second holder's log (it was used once): that
    // holder is refused (its grant revoked) and its log stays closed.
    let current = emergency::set_policy(
        &vault,
        &keystore,
        second.card().verify()?,
        vec![Scope::Allergies],
    )
    .await?;
    EmergencyAccess::open(holder_net.clone(), &second, &current, "used once").await?;
    emergency::set_policy(
        &vault,
        &keystore,
        first.card().verify()?,
        vec![Scope::Allergies],
    )
    .await?;
    let err = EmergencyAccess::open(holder_net, &second, &current, "after replacement")
        .await
        .expect_err("closed log");
    assert!(matches!(err, EhiError::Revoked { .. }), "{err}");
    let slots = common::slots_client(&net).await?;
    assert_eq!(
        slots.get(&current.log_slot).await?.map(|s| s.address),
        Some(ehi_layer::tombstone_address())
    );
    // Its (logged) attempt went to the old log, which the new policy does not read.
    assert!(emergency::pending(&vault, &keystore).await?.is_empty());
    Ok(())
}
