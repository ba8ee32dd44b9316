//! The eight server roles and their names: the protocol each speaks, the kind it
//! registers with at the broker, its default port and the role part of its rights.
//!
//! Servers, the command line and the conformance suite all name roles through this
//! one [`Role`].

use std::fmt;
use std::str::FromStr;

/// The eight server roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `/storage/`: content-addressed blobs.
    Storage,
    /// `/slots/`: signed mutable pointers.
    Slots,
    /// `/broker/`: server id → urls.
    Broker,
    /// `/find/`: who holds a block.
    Find,
    /// `/files/`: file trees as numbered nodes.
    Files,
    /// `/production/`: task output cache.
    Productions,
    /// `/names/`: names → addresses.
    Names,
    /// `/distributor/`: pinned blocks kept on N storage servers.
    Distributor,
}

impl Role {
    /// Every role, in the order of the spec's index.
    pub const ALL: [Role; 8] = [
        Role::Storage,
        Role::Slots,
        Role::Broker,
        Role::Find,
        Role::Files,
        Role::Productions,
        Role::Names,
        Role::Distributor,
    ];

    /// The role's name: its spec file (`spec/<name>.md`), its name on the command line
    /// and its directory under a shared data folder.
    pub fn name(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Slots => "slots",
            Role::Broker => "broker",
            Role::Find => "find",
            Role::Files => "files",
            Role::Productions => "productions",
            Role::Names => "names",
            Role::Distributor => "distributor",
        }
    }

    /// The broker registration kind (one of [`crate::broker::KINDS`]).
    pub fn kind(self) -> &'static str {
        match self {
            Role::Distributor => "distribute",
            other => other.name(),
        }
    }

    /// The documented default port on 127.0.0.1 (see README "Ports").
    pub fn default_port(self) -> u16 {
        match self {
            Role::Broker => 3000,
            Role::Storage => 3001,
            Role::Slots => 3002,
            Role::Find => 3003,
            Role::Files => 3004,
            Role::Productions => 3005,
            Role::Names => 3006,
            Role::Distributor => 3007,
        }
    }

    /// The role part of its rights (`storage:write`, `distributor:pin`, ...).
    pub fn right_name(self) -> &'static str {
        self.name()
    }

    /// Directory name used under a shared data folder.
    pub fn dir_name(self) -> &'static str {
        self.name()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}; expected one of storage, slots, broker, find, files, productions, names, distributor"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    /// A role by [`Role::name`], ignoring case and surrounding space.
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_display_and_parse_loosely() {
        assert_eq!(Role::Productions.to_string(), "productions");
        assert_eq!(" Storage ".parse::<Role>(), Ok(Role::Storage));
        assert_eq!(
            "distribute".parse::<Role>(),
            Err(UnknownRole("distribute".into()))
        );
    }

    #[test]
    fn kinds_are_the_broker_kinds() {
        let mut kinds: Vec<&str> = Role::ALL.iter().map(|r| r.kind()).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, crate::broker::KINDS);
        assert_eq!(Role::Distributor.kind(), "distribute");
        assert_eq!(Role::Distributor.dir_name(), "distributor");
        assert_eq!(Role::Distributor.right_name(), "distributor");
        assert_eq!(Role::Broker.default_port(), 3000);
    }
}
