//! The real `slots-server` under kill -9: every acknowledged update survives, the
//! history is exactly the acknowledged chain, and the current value is the last one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::ServerProcess;
use invariant_spec::slots::{Previous, SlotSigner};
use invariant_spec::{Id, SlotsClient};

#[tokio::test]
async fn kill_9_during_updates_loses_no_acknowledged_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("slots");
    let mut server = ServerProcess::start("slots-server", &data, &[])?;
    let client = SlotsClient::new(server.url())?;

    // Four ed25519 slots, each updated in a chain by its own task.
    let mut slots = Vec::new();
    for i in 0..4u8 {
        let signer = SlotSigner::ed25519_from_seed(&[i + 1; 32]);
        let slot = signer.ed25519_slot().expect("ed25519 slot id");
        let first = Id::of_content(&[i]);
        assert!(
            client
                .register(&signer.register_request(slot, first))
                .await?
        );
        slots.push((signer, slot, first));
    }
    let acked: Arc<Mutex<Vec<Vec<Id>>>> = Arc::new(Mutex::new(vec![Vec::new(); slots.len()]));
    let mut tasks = Vec::new();
    for (index, (_, slot, first)) in slots
        .iter()
        .map(|(_, slot, first)| ((), *slot, *first))
        .enumerate()
    {
        let signer = SlotSigner::ed25519_from_seed(&[index as u8 + 1; 32]);
        let client = client.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut previous = first;
            // Bounded: the kill ends the chain long before this.
            for n in 0..100_000u32 {
                let next = Id::of_content(format!("{index}/{n}").as_bytes());
                match client.update_signed(&slot, &signer, &previous, &next).await {
                    Ok(()) => {
                        acked.lock().expect("lock")[index].push(next);
                        previous = next;
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9()?;
    for task in tasks {
        task.await?;
    }

    let restarted = ServerProcess::start("slots-server", &data, &[])?;
    let client = SlotsClient::new(restarted.url())?;
    let acked = acked.lock().expect("lock").clone();
    for ((_, slot, first), chain) in slots.iter().zip(&acked) {
        assert!(
            !chain.is_empty(),
            "some updates must have been acknowledged"
        );
        eprintln!(
            "slot {slot}: {} acknowledged updates before the kill",
            chain.len()
        );
        let history = client.history_all(slot).await?.expect("slot survives");
        // Newest first; the registration is last.
        let mut addresses: Vec<Id> = history.iter().map(|s| s.address).collect();
        addresses.reverse();
        assert_eq!(addresses[0], *first);
        assert_eq!(history.last().map(|s| s.previous), Some(Previous::Root));
        // Every acknowledged update is there, in order. At most one more state may
        // follow: an update committed whose answer the kill cut off.
        let stored = &addresses[1..];
        assert!(stored.len() == chain.len() || stored.len() == chain.len() + 1);
        assert_eq!(&stored[..chain.len()], &chain[..]);
        let current = client.get(slot).await?.expect("current state");
        assert_eq!(Some(&current.address), stored.last());
    }
    Ok(())
}
