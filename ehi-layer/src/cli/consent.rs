//! Consent requests and contributions from apps: `ehi requests [card]`, `ehi approve`,
//! `ehi deny`, `ehi inbox`, `ehi accept` and `ehi reject`.

use anyhow::bail;
use ehi_layer::Vault;
use ehi_layer::share;

use super::args::{Command, RequestsCommand};
use super::common::print_json;

/// Consent requests and contributions.
pub(crate) async fn consent_command(
    vault: &Vault,
    command: Command,
    table: bool,
) -> anyhow::Result<()> {
    use ehi_layer::time::instant;
    match command {
        Command::Requests {
            command: Some(RequestsCommand::Card { name }),
        } => {
            let card = match name {
                Some(name) => {
                    let (card, name) = share::publish_inbox_name(vault, &name).await?;
                    eprintln!("apps find this inbox under the name {name}");
                    card
                }
                None => share::inbox_card(vault).await?,
            };
            println!("{}", card.to_json()?);
        }
        Command::Requests { command: None } => {
            let list = share::requests(vault).await?;
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
            let outcome = share::approve_request(vault, &id).await?;
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
            let outcome = share::deny_request(vault, &id, &note).await?;
            eprintln!(
                "denied request {} of {}: Consent/{} recorded, the app was told",
                outcome.request, outcome.app_name, outcome.consent_id
            );
        }
        Command::Inbox => {
            if let Err(e) = share::publish_channels(vault).await {
                eprintln!("warning: could not open the grant channels: {e}");
            }
            let list = share::contributions(vault).await?;
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
            let info = share::accept_contribution(vault, &id).await?;
            eprintln!(
                "accepted {} resource(s) from {} with Provenance/contribution-{}",
                info.resources.len(),
                info.app_name,
                info.id
            );
        }
        Command::Reject { id } => {
            share::reject_contribution(vault, &id).await?;
            eprintln!("rejected contribution {id}: nothing was imported");
        }
        other => bail!("unexpected command {other:?}"),
    }
    Ok(())
}
