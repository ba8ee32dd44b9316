//! The FHIR server and its tokens: `ehi serve` and `ehi token [<grant>|--patient|
//! --scopes|revoke]`.

use ehi_layer::share;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use ehi_layer::{Keystore, Vault};

use super::common::passphrase;

pub(crate) async fn serve(
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
    let grants = share::grants(&vault).await;
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

pub(crate) async fn token(
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
pub(crate) async fn token_grant(
    vault: &Vault,
    keystore: &Keystore,
    grant: &str,
    scopes: Option<&str>,
    expires: &str,
) -> anyhow::Result<()> {
    use ehi_layer::serve::{self, TokenKey};
    let ttl = serve::token::parse_duration(expires).map_err(anyhow::Error::msg)?;
    let Some(info) = share::grants(vault)
        .await
        .into_iter()
        .find(|g| g.id == grant)
    else {
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
pub(crate) fn token_revoke(keystore_path: &Path, token: &str) -> anyhow::Result<()> {
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
