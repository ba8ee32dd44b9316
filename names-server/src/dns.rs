//! The DNS fallback: names this server does not hold, resolved from TXT records.
//!
//! A TXT record at the name holding `invariant-slot=<64 hex>` resolves it to a slot id;
//! `invariant-data=<64 hex>` to a content address. Every character-string of every TXT
//! record is examined (prefixes compared case-insensitively, hex in either case);
//! strings that do not match are ignored. When both forms are present the slot wins;
//! among several of one form, the first in the answer wins.
//!
//! Queries go to one configured nameserver (UDP, then TCP for truncated answers), as
//! fully qualified names, never through the system configuration or hosts file.
//! hickory-resolver's cache keeps each answer (and each negative answer) for its TTL,
//! so a repeated lookup within the TTL does not touch the network; the ttl reported is
//! the time the cached answer has left.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use invariant_spec::Id;
use invariant_spec::names::{TXT_DATA_PREFIX, TXT_SLOT_PREFIX};

/// Default time to wait for the nameserver per attempt.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per lookup before giving up.
const ATTEMPTS: usize = 2;

/// A DNS failure other than "no such record".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The resolver could not be built.
    #[error("cannot configure a resolver for {server}: {reason}")]
    Config {
        /// The nameserver.
        server: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The nameserver did not give a usable answer (timeout, refusal, server failure).
    #[error("DNS lookup of {name} via {server} failed: {reason}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The nameserver.
        server: SocketAddr,
        /// The resolver's error.
        reason: String,
    },
}

/// What DNS says a name resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsAnswer {
    /// A content address, or a slot id when `slot`.
    pub address: Id,
    /// `address` is a slot id (`invariant-slot=`).
    pub slot: bool,
    /// Seconds the answer remains valid.
    pub ttl: u32,
}

/// Resolves names through one nameserver, with a TTL-honouring cache.
#[derive(Clone, Debug)]
pub struct DnsFallback {
    resolver: TokioResolver,
    server: SocketAddr,
}

impl DnsFallback {
    /// A resolver asking `server` (UDP and TCP), waiting `timeout` per attempt.
    pub fn new(server: SocketAddr, timeout: Duration) -> Result<DnsFallback, DnsError> {
        let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
        for connection in &mut name_server.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_name_servers(vec![name_server]);
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        options.timeout = timeout;
        options.attempts = ATTEMPTS;
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = builder.build().map_err(|e| DnsError::Config {
            server,
            reason: e.to_string(),
        })?;
        Ok(DnsFallback { resolver, server })
    }

    /// The nameserver asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The invariant TXT record at canonical `name`; `None` when the name does not
    /// exist, has no TXT records, or none of them is an invariant record.
    pub async fn lookup(&self, name: &str) -> Result<Option<DnsAnswer>, DnsError> {
        let failed = |reason: String| DnsError::Lookup {
            name: name.to_string(),
            server: self.server,
            reason,
        };
        // Fully qualified: no search domains are tried.
        let lookup = match self.resolver.txt_lookup(format!("{name}.")).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() => return Ok(None),
            Err(e) => return Err(failed(e.to_string())),
        };
        let strings = lookup
            .answers()
            .iter()
            .flat_map(|record| match &record.data {
                RData::TXT(txt) => txt.txt_data.iter().map(|s| &s[..]).collect(),
                _ => Vec::new(),
            });
        let Some((address, slot)) = pick_invariant_record(strings) else {
            return Ok(None);
        };
        let remaining = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        // Whole seconds, rounded up so a still-valid answer never reports 0.
        let ttl = u32::try_from(remaining.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        Ok(Some(DnsAnswer { address, slot, ttl }))
    }
}

/// The invariant record among TXT character-strings: a slot id if any, else a data
/// address; `(address, is_slot)`.
pub fn pick_invariant_record<'a>(
    strings: impl IntoIterator<Item = &'a [u8]>,
) -> Option<(Id, bool)> {
    let mut data = None;
    for string in strings {
        let Ok(text) = std::str::from_utf8(string) else {
            continue;
        };
        if let Some(id) = strip_prefix_ignore_case(text, TXT_SLOT_PREFIX) {
            return Some((id, true));
        }
        if data.is_none() {
            data = strip_prefix_ignore_case(text, TXT_DATA_PREFIX);
        }
    }
    data.map(|id| (id, false))
}

fn strip_prefix_ignore_case(text: &str, prefix: &str) -> Option<Id> {
    let head = text.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    Id::parse(text[prefix.len()..].trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(n: u8) -> String {
        Id::from_bytes([n; 32]).to_string()
    }

    fn pick(strings: &[String]) -> Option<(Id, bool)> {
        pick_invariant_record(strings.iter().map(|s| s.as_bytes()))
    }

    #[test]
    fn slot_and_data_forms_are_recognised() {
        let slot = format!("invariant-slot={}", hex(1));
        let data = format!("invariant-data={}", hex(2).to_uppercase());
        assert_eq!(
            pick(std::slice::from_ref(&slot)),
            Some((Id::from_bytes([1; 32]), true))
        );
        assert_eq!(
            pick(std::slice::from_ref(&data)),
            Some((Id::from_bytes([2; 32]), false))
        );
        // The slot wins whatever the order.
        assert_eq!(
            pick(&[data.clone(), slot.clone()]),
            Some((Id::from_bytes([1; 32]), true))
        );
        // Prefixes in any case.
        assert_eq!(
            pick(&[format!("Invariant-Data={}", hex(3))]),
            Some((Id::from_bytes([3; 32]), false))
        );
        // First data record wins among several.
        let other = format!("invariant-data={}", hex(4));
        assert_eq!(pick(&[other, data]), Some((Id::from_bytes([4; 32]), false)));
    }

    #[test]
    fn unrelated_or_malformed_strings_are_ignored() {
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&["v=spf1 -all".into()]), None);
        assert_eq!(pick(&["invariant-data=1234".into()]), None);
        assert_eq!(pick(&[format!("invariant-slot:{}", hex(1))]), None);
        assert_eq!(pick(&["invariant-".into()]), None);
        assert_eq!(pick_invariant_record([&[0xff, 0xfe][..]]), None);
        // A malformed slot does not hide a good data record.
        assert_eq!(
            pick(&[
                "invariant-slot=zz".into(),
                format!("invariant-data={}", hex(5))
            ]),
            Some((Id::from_bytes([5; 32]), false))
        );
    }
}
