//! Calls to peer storage servers (`/storage/fetch`), hardened against server-side
//! request forgery.
//!
//! A url a fetch may use comes from the broker's registration of the container, and
//! [`Peers`] contacts it only when:
//! - its scheme is `http` or `https` (anything else is refused before any connection);
//! - every address it connects to lies in one of `--peer-allow`'s CIDRs (empty: any).
//!   An IP-literal host is checked before the request; a name is resolved by this
//!   module's resolver, which hands the connector only the permitted addresses, so the
//!   connection goes to exactly the address that was checked;
//! - `GET /id` answers the container's id, before any blob is requested.
//!
//! The scheme, address and redirect rules are the runtime's
//! ([`invariant_runtime::peers::PeerClient`]); this module adds the `/id` check.
//! Calls carry this server's own client settings: its trusted CAs and its bearer
//! token.

use std::net::IpAddr;
use std::time::Duration;

use invariant_runtime::peers::{PeerClient, PeerError as UrlRefused};
use invariant_spec::http::{ClientSecurity, Endpoint};
use invariant_spec::{ClientError, Id, StorageClient};
use ipnet::IpNet;

/// Why a peer was not (or not fully) contacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The url is not one this server may contact; no connection was made.
    #[error("refusing to contact {url}: {reason}")]
    Refused {
        /// The url.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server at the url is not the one the broker registered there; nothing
    /// beyond `GET /id` was requested.
    #[error("{url} answers id {actual}, not {expected}")]
    WrongId {
        /// The url.
        url: String,
        /// The id the broker registered at the url.
        expected: Id,
        /// The id the url answered.
        actual: Id,
    },
    /// The call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The client for peer calls. Cloning shares the connection pool.
#[derive(Clone, Debug)]
pub struct Peers {
    client: PeerClient,
}

impl Peers {
    /// A client with `security` (CAs, token) reaching only addresses in `allow`
    /// (empty: any).
    pub fn new(security: &ClientSecurity, allow: Vec<IpNet>) -> Result<Peers, ClientError> {
        let client = PeerClient::new(security, &allow, Duration::from_secs(10), None).map_err(
            |e| match e {
                UrlRefused::Client(e) => e,
                other => ClientError::InvalidConfig(other.to_string()),
            },
        )?;
        Ok(Peers { client })
    }

    /// Whether this server may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.client.policy().allows(ip)
    }

    /// An endpoint at `url`, after checking its scheme and, for an IP-literal host,
    /// its address. Makes no connection.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, PeerError> {
        self.client.endpoint(url).map_err(|e| match e {
            UrlRefused::Client(e) => PeerError::Client(e),
            other => PeerError::Refused {
                url: url.to_string(),
                reason: other.to_string(),
            },
        })
    }

    /// A storage client for the server registered as `expected` at `url`, once
    /// `GET /id` there has answered `expected`.
    pub async fn storage(&self, url: &str, expected: &Id) -> Result<StorageClient, PeerError> {
        let endpoint = self.endpoint(url)?;
        let actual = endpoint.server_id().await?;
        if actual != *expected {
            return Err(PeerError::WrongId {
                url: url.to_string(),
                expected: *expected,
                actual,
            });
        }
        Ok(StorageClient::from_endpoint(endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(allow: &[&str]) -> Peers {
        let allow = allow.iter().map(|net| net.parse().expect("cidr")).collect();
        Peers::new(&ClientSecurity::default(), allow).expect("peers")
    }

    #[test]
    fn only_http_urls_with_permitted_literal_addresses() {
        let any = peers(&[]);
        assert!(any.endpoint("http://127.0.0.1:1").is_ok());
        assert!(any.endpoint("https://[::1]:1").is_ok());
        assert!(any.endpoint("http://storage.example:80").is_ok());
        for refused in [
            "ftp://127.0.0.1:1",
            "file:///etc/passwd",
            "unix:/tmp/s",
            "nonsense",
        ] {
            assert!(
                matches!(any.endpoint(refused), Err(PeerError::Refused { .. })),
                "{refused} accepted"
            );
        }

        let ten = peers(&["127.0.0.128/25"]);
        assert!(ten.endpoint("http://127.0.0.200:80").is_ok());
        for refused in [
            "http://127.0.0.1:1",
            "http://[::1]:1",
            "http://[::ffff:127.0.0.1]:1",
            "http://2130706433/",
        ] {
            assert!(
                matches!(ten.endpoint(refused), Err(PeerError::Refused { .. })),
                "{refused} accepted"
            );
        }
        // A mapped IPv4 address counts as that address.
        assert!(ten.endpoint("http://[::ffff:127.0.0.129]:1").is_ok());
        // Names are checked when resolved (see the fetch tests), not here.
        assert!(ten.endpoint("http://localhost:1").is_ok());
    }
}
