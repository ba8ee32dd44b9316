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
//! Redirects are never followed (a 3xx is a failed call) and no proxy from the
//! environment is used. Calls carry this server's own client settings: its trusted
//! CAs and its bearer token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use invariant_spec::http::{ClientSecurity, Endpoint};
use invariant_spec::{ClientError, Id, StorageClient};
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

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

/// The client for peer calls: no redirects, no proxy, addresses limited to the
/// allowed CIDRs. Cloning shares the connection pool.
#[derive(Clone, Debug)]
pub struct Peers {
    http: reqwest::Client,
    allow: Arc<[IpNet]>,
}

impl Peers {
    /// A client with `security` (CAs, token) reaching only addresses in `allow`
    /// (empty: any).
    pub fn new(security: &ClientSecurity, allow: Vec<IpNet>) -> Result<Peers, ClientError> {
        let allow: Arc<[IpNet]> = allow.into();
        let mut builder = security
            .http_client_builder()?
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if !allow.is_empty() {
            builder = builder.dns_resolver(AllowedResolver {
                allow: Arc::clone(&allow),
            });
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::InvalidConfig(format!("building the peer client: {e}")))?;
        Ok(Peers { http, allow })
    }

    /// Whether this server may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        permitted(&self.allow, ip)
    }

    /// An endpoint at `url`, after checking its scheme and, for an IP-literal host,
    /// its address. Makes no connection.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, PeerError> {
        let refused = |reason: String| PeerError::Refused {
            url: url.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(url.trim()).map_err(|e| refused(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(refused(format!(
                "scheme {:?} is not http or https",
                parsed.scheme()
            )));
        }
        let Some(host) = parsed.host_str() else {
            return Err(refused("the url has no host".into()));
        };
        // The url parser writes IP hosts canonically (IPv6 in brackets).
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>()
            .ok();
        if let Some(ip) = literal
            && !self.permits(ip)
        {
            return Err(refused(format!("{ip} is outside every --peer-allow range")));
        }
        Endpoint::with_client(url, self.http.clone()).map_err(PeerError::Client)
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

fn permitted(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// Resolves names with the system resolver and keeps only permitted addresses.
#[derive(Debug)]
struct AllowedResolver {
    allow: Arc<[IpNet]>,
}

impl Resolve for AllowedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = Arc::clone(&self.allow);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let permitted: Vec<SocketAddr> = resolved
                .filter(|addr| permitted(&allow, addr.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(format!("{host} has no address inside the --peer-allow ranges").into());
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
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

        let ten = peers(&["10.0.0.0/8"]);
        assert!(ten.endpoint("http://10.1.2.3:80").is_ok());
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
        assert!(ten.endpoint("http://[::ffff:10.0.0.1]:1").is_ok());
        // Names are checked when resolved (see the fetch tests), not here.
        assert!(ten.endpoint("http://localhost:1").is_ok());
    }
}
