//! Calls to peers whose urls came from the network (broker registrations and
//! locations), made so that a registered url cannot turn the server into a proxy.
//!
//! A [`PeerClient`] hands out [`Endpoint`]s only for `http`/`https` urls, never follows
//! a redirect (a 3xx is an answer like any other, so a peer cannot send the server on
//! to a third address), and connects only to addresses `--peer-allow` permits:
//!
//! - a url whose host is an IP literal is checked when its endpoint is made
//!   ([`PeerClient::endpoint`] refuses it otherwise);
//! - a host name is resolved by the client's own resolver at connect time, and the
//!   connection is refused unless **every** resolved address is allowed. The addresses
//!   checked are the ones connected to, so a name cannot answer one way for the check
//!   and another for the connection.
//!
//! With a non-empty allow list, system proxies are not used (a proxy would connect on
//! the server's behalf to an address nobody checked). An empty allow list permits every
//! address. The client sends the server's own token and trusts its CAs
//! ([`ClientSecurity`]), so peers in auth mode see who is calling.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use invariant_spec::ClientError;
use invariant_spec::http::{ClientSecurity, Endpoint};
use ipnet::IpNet;

use crate::ServerOptions;

/// Why a peer url is not contacted, or a peer client cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The url is not an absolute `http`/`https` url with a host.
    #[error("peer url {url:?} is not usable: {reason}")]
    BadUrl {
        /// The url (truncated when very long).
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The url's address is outside every `--peer-allow` network.
    #[error("peer url {url:?}: {addr} is outside --peer-allow")]
    NotAllowed {
        /// The url (truncated when very long).
        url: String,
        /// The refused address.
        addr: IpAddr,
    },
    /// The client settings cannot be used.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The networks peers may be in (`--peer-allow`); empty allows every address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    allow: Arc<Vec<IpNet>>,
}

impl PeerPolicy {
    /// A policy allowing `allow` (every address when empty).
    pub fn new(allow: Vec<IpNet>) -> PeerPolicy {
        PeerPolicy {
            allow: Arc::new(allow),
        }
    }

    /// Whether every address is allowed.
    pub fn allows_any(&self) -> bool {
        self.allow.is_empty()
    }

    /// Whether `addr` may be contacted. An IPv4-mapped IPv6 address is judged as the
    /// IPv4 address it maps.
    pub fn allows(&self, addr: IpAddr) -> bool {
        if self.allow.is_empty() {
            return true;
        }
        let canonical = addr.to_canonical();
        self.allow
            .iter()
            .any(|net| net.contains(&addr) || net.contains(&canonical))
    }

    /// Checks the parts of `url` that need no lookup: scheme `http`/`https`, a host, and
    /// — when the host is an IP literal — that it is allowed.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, PeerError> {
        let bad = |reason| PeerError::BadUrl {
            url: truncate(url),
            reason,
        };
        let parsed = reqwest::Url::parse(url.trim()).map_err(|_| bad("not an absolute url"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("scheme must be http or https"));
        }
        let host = parsed.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        // IPv6 literals keep their brackets in the host text.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let literal = bare.parse::<IpAddr>().ok();
        if let Some(addr) = literal
            && !self.allows(addr)
        {
            return Err(PeerError::NotAllowed {
                url: truncate(url),
                addr,
            });
        }
        Ok(parsed)
    }
}

/// An HTTP client for peers (see the module docs). Cloning shares its pool.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
    policy: PeerPolicy,
}

impl PeerClient {
    /// A client with `security`'s CAs and token, restricted to `allow`, with
    /// `connect_timeout` and, when given, `timeout` for each whole request.
    pub fn new(
        security: &ClientSecurity,
        allow: &[IpNet],
        connect_timeout: Duration,
        timeout: Option<Duration>,
    ) -> Result<PeerClient, PeerError> {
        let policy = PeerPolicy::new(allow.to_vec());
        let mut builder = security
            .http_client_builder()?
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(CheckedResolver {
                policy: policy.clone(),
            });
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        if !policy.allows_any() {
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| {
            ClientError::InvalidConfig(format!("building the peer HTTP client: {e}"))
        })?;
        Ok(PeerClient { http, policy })
    }

    /// [`PeerClient::new`] with a server's `--ca-cert`, `--token` and `--peer-allow`.
    pub fn for_server(
        options: &ServerOptions,
        connect_timeout: Duration,
        timeout: Option<Duration>,
    ) -> Result<PeerClient, PeerError> {
        PeerClient::new(
            &options.client,
            &options.peer_allow,
            connect_timeout,
            timeout,
        )
    }

    /// The addresses this client may contact.
    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// An endpoint at `url` on this client, after [`PeerPolicy::check_url`]. Use the
    /// endpoint only for requests to its own base url.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, PeerError> {
        self.policy.check_url(url)?;
        Ok(Endpoint::with_client(url, self.http.clone())?)
    }
}

/// Resolves host names and refuses those resolving to any address outside the policy.
#[derive(Debug)]
struct CheckedResolver {
    policy: PeerPolicy,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            if let Some(refused) = addrs.iter().find(|a| !policy.allows(a.ip())) {
                tracing::debug!(%host, addr = %refused.ip(), "peer address outside --peer-allow");
                return Err(format!(
                    "{host} resolves to {}, which is outside --peer-allow",
                    refused.ip()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn truncate(text: &str) -> String {
    let mut cut = text.len().min(128);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn nets(text: &str) -> Vec<IpNet> {
        text.split(',').map(|n| n.parse().expect("cidr")).collect()
    }

    #[test]
    fn policy_checks_addresses_and_urls() {
        let any = PeerPolicy::default();
        assert!(any.allows("127.0.0.1".parse().expect("ip")));
        assert!(any.check_url("http://127.0.0.1:1").is_ok());

        let ten = PeerPolicy::new(nets("127.0.0.128/25"));
        assert!(ten.allows("127.0.0.200".parse().expect("ip")));
        assert!(ten.allows("::ffff:127.0.0.200".parse().expect("ip")));
        assert!(!ten.allows("127.0.0.1".parse().expect("ip")));
        assert!(!ten.allows("::1".parse().expect("ip")));
        assert!(ten.check_url("http://127.0.0.129:3001").is_ok());
        assert!(
            ten.check_url("https://name.example").is_ok(),
            "names resolve later"
        );
        for (url, refused) in [
            ("http://127.0.0.1:3001", "outside"),
            ("http://[::1]:3001", "outside"),
            ("http://[::ffff:127.0.0.1]:1", "outside"),
            ("ftp://127.0.0.129", "scheme"),
            ("file:///etc/passwd", "scheme"),
            ("not a url", "absolute"),
        ] {
            let err = ten.check_url(url).expect_err(url);
            assert!(err.to_string().contains(refused), "{url}: {err}");
        }
    }

    /// A loopback listener counting the connections it accepts.
    async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn refused_addresses_are_never_connected_to() {
        let (addr, connections) = counting_listener().await;
        let client = PeerClient::new(
            &ClientSecurity::default(),
            &nets("127.0.0.128/25"),
            Duration::from_secs(2),
            Some(Duration::from_secs(2)),
        )
        .expect("client");
        // An IP literal outside the list: no endpoint at all.
        assert!(matches!(
            client.endpoint(&format!("http://{addr}")),
            Err(PeerError::NotAllowed { .. })
        ));
        // A name resolving to loopback: the resolver refuses before connecting.
        let endpoint = client
            .endpoint(&format!("http://localhost:{}", addr.port()))
            .expect("names are checked when connecting");
        let err = endpoint.server_id().await.expect_err("refused");
        assert!(matches!(err, ClientError::Transport { .. }), "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(connections.load(Ordering::SeqCst), 0);

        // Allowed: the same listener is reached.
        let open = PeerClient::new(
            &ClientSecurity::default(),
            &nets("127.0.0.0/8,::1/128"),
            Duration::from_secs(2),
            Some(Duration::from_secs(2)),
        )
        .expect("client");
        let _ = open
            .endpoint(&format!("http://localhost:{}", addr.port()))
            .expect("allowed")
            .server_id()
            .await;
        assert!(connections.load(Ordering::SeqCst) >= 1);
    }
}
