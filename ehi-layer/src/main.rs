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
            if cli.table {
                print!("{}", present::table(&[resource]));
            } else {
                print_json(&resource)?;
            }
        }
        Command::History { reference } => {
            let (resource_type, id, _) = parse_reference(&reference)?;
            let history = vault.history(&resource_type, &id).await?;
            if cli.table {
                print!("{}", present::history_table(&resource_type, &id, &history));
            } else {
                print_json(&present::history_bundle(&resource_type, &id, &history))?;
            }
        }
        Command::Patient { id } => {
            let resources = vault.patient_compartment(&id).await?;
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
