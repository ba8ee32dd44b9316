//! Sharing benchmark against an in-process local network (broker, 3 storage servers,
//! slots, distributor on 127.0.0.1): on a vault of 10,000 resources with 5 apps holding
//! grants, the time to grant, to revoke without and with re-encryption, for an app to
//! cold-open a 10,000-resource grant, and (devices) to remove a device (root key and
//! every scope rotated). Run with `cargo bench -p ehi-layer --bench sharing`.
//! Targets: revoke without re-encryption ≤ 1 s, app cold open ≤ 1 s.
//! Figures of one run (release, shared 2-core machine): grant 23 ms, app cold open
//! 24 ms, revoke without re-encryption 82 ms median, with re-encryption 10.1 s (10,000
//! versions), device removal 79 ms.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use ehi_layer::share;
use std::time::{Duration, Instant};

use common::{TestNet, input};
use ehi_layer::grant::GrantRequest;
use ehi_layer::{Access, AppKeystore, AppSession, Scope};
use support::{ms, percentile, synthetic_bundle_with_prefix};

const RESOURCES: usize = 10_000;
const APPS: usize = 5;
const DAY_MS: u64 = 86_400_000;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn request(app: &AppKeystore, scopes: &[Scope]) -> anyhow::Result<GrantRequest> {
    Ok(GrantRequest {
        app: app.card().verify()?,
        scopes: scopes.to_vec(),
        access: Access::Read,
        duration_ms: 30 * DAY_MS,
        purpose: "TREAT".into(),
    })
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = TestNet::start(3, true).await?;
    let (keystore, _path, vault) = net.new_vault(&dir.path().join("device")).await?;
    let started = Instant::now();
    let report = vault
        .import_with(
            vec![input(
                "synthetic.json",
                &synthetic_bundle_with_prefix(RESOURCES, 7, "syn"),
            )],
            &common::household(),
            None,
        )
        .await?;
    println!(
        "vault: {} resources imported in {:.2} s (Observations in clinical, Patients in demographics)",
        report.created,
        started.elapsed().as_secs_f64()
    );

    // Five apps, each granted clinical (≈9,900 resources) and demographics.
    let scopes = [Scope::Clinical, Scope::Demographics];
    let apps: Vec<AppKeystore> = (0..APPS)
        .map(|i| AppKeystore::generate(&format!("bench app {i}")))
        .collect::<Result<_, _>>()?;
    let mut grant_times = Vec::new();
    let mut grants = Vec::new();
    for app in &apps {
        let started = Instant::now();
        let (info, ticket) = share::grant(&vault, request(app, &scopes)?).await?;
        grant_times.push(started.elapsed());
        grants.push((info, ticket));
    }
    println!(
        "grant ({APPS} apps, 2 scopes each): median {:.0} ms, max {:.0} ms",
        ms(percentile(&mut grant_times.clone(), 50)),
        ms(percentile(&mut grant_times, 100))
    );

    // App cold open of a 10,000-resource grant: fresh connection pool, nothing cached.
    let mut opens = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let app_net = net.connect(Some(&keystore)).await?;
        let session = AppSession::open(app_net, &apps[0], &grants[0].1).await?;
        opens.push(started.elapsed());
        listed = session.list()?.len();
    }
    println!(
        "app cold open ({listed} resources granted): median {:.0} ms, max {:.0} ms",
        ms(percentile(&mut opens.clone(), 50)),
        ms(percentile(&mut opens, 100))
    );

    // Revoke without re-encryption (4 other grants re-sealed each time).
    let mut revokes = Vec::new();
    for (round, app) in apps.iter().enumerate().take(3) {
        let (info, _) = grants.remove(0);
        let started = Instant::now();
        let report = share::revoke(&vault, &info.id, false).await?;
        revokes.push(started.elapsed());
        println!(
            "revoke without re-encryption (round {round}): {:.0} ms ({} scopes rotated, {} grants re-sealed)",
            ms(*revokes.last().unwrap_or(&Duration::ZERO)),
            report.rotated.len(),
            report.resealed.len()
        );
        // Keep 5 apps: grant the revoked app again.
        let again = share::grant(&vault, request(app, &scopes)?).await?;
        grants.push(again);
    }
    println!(
        "revoke without re-encryption: median {:.0} ms",
        ms(percentile(&mut revokes, 50))
    );

    // Revoke with re-encryption of every version of both scopes.
    let (info, _) = grants.remove(0);
    let started = Instant::now();
    let report = share::revoke(&vault, &info.id, true).await?;
    let elapsed = started.elapsed();
    println!(
        "revoke with re-encryption: {:.2} s ({} versions re-encrypted = {:.0} versions/s, {} blocks unpinned)",
        elapsed.as_secs_f64(),
        report.reencrypted,
        report.reencrypted as f64 / elapsed.as_secs_f64(),
        report.unpinned
    );

    // Device removal: root key and every scope rotated, every grant re-sealed.
    let invite = ehi_layer::device::Invite::create(&vault, Duration::from_secs(60)).await?;
    let code = invite.code();
    let joiner_net = net.connect(None).await?;
    let (joined, added) = tokio::join!(
        ehi_layer::device::join(&joiner_net, &code),
        invite.complete(&vault, &keystore)
    );
    let (_joined, added) = (joined?, added?);
    let started = Instant::now();
    let removal = share::remove_device(&vault, &added.id).await?;
    println!(
        "device remove: {:.0} ms ({} scopes rotated, root key generation {})",
        ms(started.elapsed()),
        removal.rotated.len(),
        removal.root_generation
    );
    net.stop().await;
    Ok(())
}
