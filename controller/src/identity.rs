//! Who is calling: an agent (tenant, site, host) or an operator (a name).
//!
//! The identity lives in the client certificate the controller's CA signed,
//! as one URI subject alternative name:
//!
//! - agents: `palisade://agent/<tenant>/<site>/<host>`
//! - operators of the whole fleet (the MSP's own staff):
//!   `palisade://operator/<name>`
//! - operators of one tenant (a customer's IT): `palisade://operator/<tenant>/<name>`
//!
//! Every part is a [`valid_name`] (letters, digits, `.`, `_`, `-`; no `/`),
//! so the URI splits back without ambiguity. The common name is only for
//! people reading the certificate; it is never parsed.

use std::fmt;

/// The URI scheme and authority of identity SANs.
pub const URI_PREFIX: &str = "palisade://";

/// Longest tenant, site or operator name.
pub const MAX_NAME: usize = 63;
/// Longest host name (a fully qualified DNS name).
pub const MAX_HOST_NAME: usize = 253;

/// One agent host: `tenant/site/host`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId {
    pub tenant: String,
    pub site: String,
    pub host: String,
}

impl HostId {
    pub fn new(tenant: &str, site: &str, host: &str) -> Self {
        HostId {
            tenant: tenant.to_string(),
            site: site.to_string(),
            host: host.to_string(),
        }
    }

    /// Parses `tenant/site/host`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let mut parts = s.split('/');
        let (Some(t), Some(si), Some(h), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(NameError::Shape(s.to_string()));
        };
        valid_name("tenant", t)?;
        valid_name("site", si)?;
        valid_name("host", h)?;
        Ok(HostId::new(t, si, h))
    }

    /// The URI SAN of this host's certificate.
    pub fn uri(&self) -> String {
        format!(
            "{URI_PREFIX}agent/{}/{}/{}",
            self.tenant, self.site, self.host
        )
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.site, self.host)
    }
}

/// An operator: a name, and the one tenant it may act on (`None`: every
/// tenant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorId {
    pub name: String,
    pub tenant: Option<String>,
}

impl OperatorId {
    /// An operator of the whole fleet.
    pub fn fleet(name: &str) -> OperatorId {
        OperatorId {
            name: name.to_string(),
            tenant: None,
        }
    }

    /// An operator of `tenant` only.
    pub fn of_tenant(name: &str, tenant: &str) -> OperatorId {
        OperatorId {
            name: name.to_string(),
            tenant: Some(tenant.to_string()),
        }
    }

    pub fn check(&self) -> Result<(), NameError> {
        valid_name("operator", &self.name)?;
        match &self.tenant {
            Some(t) => valid_name("tenant", t),
            None => Ok(()),
        }
    }

    /// Whether this operator may act on `tenant`.
    pub fn may(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

impl fmt::Display for OperatorId {
    /// `name` for the fleet's operators, `tenant/name` for a tenant's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "{t}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Agent(HostId),
    Operator(OperatorId),
}

impl Identity {
    /// The SAN URI that encodes this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Agent(h) => h.uri(),
            Identity::Operator(o) => format!("{URI_PREFIX}operator/{o}"),
        }
    }

    /// Parses a SAN URI; `None` when it is not one of ours.
    pub fn from_uri(uri: &str) -> Option<Result<Identity, NameError>> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        Some(if let Some(path) = rest.strip_prefix("agent/") {
            HostId::parse(path).map(Identity::Agent)
        } else if let Some(path) = rest.strip_prefix("operator/") {
            let op = match path.split_once('/') {
                Some((tenant, name)) => OperatorId::of_tenant(name, tenant),
                None => OperatorId::fleet(path),
            };
            op.check().map(|()| Identity::Operator(op))
        } else {
            Err(NameError::Shape(uri.to_string()))
        })
    }

    /// For the audit trail: `agent:t/s/h` or `operator:name`.
    pub fn actor(&self) -> String {
        match self {
            Identity::Agent(h) => format!("agent:{h}"),
            Identity::Operator(o) => format!("operator:{o}"),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.actor())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{what} name is empty")]
    Empty { what: &'static str },
    #[error("{what} name {name:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error(
        "{what} name {name:?} may only hold letters, digits, '.', '_' and '-' (and not start with '.' or '-')"
    )]
    Chars { what: &'static str, name: String },
    #[error("{0:?} is not an identity of the form tenant/site/host")]
    Shape(String),
}

/// Checks a tenant, site, host or operator name (`what` is one of those
/// words; hosts may be up to [`MAX_HOST_NAME`] long, the rest [`MAX_NAME`]).
pub fn valid_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    let max = if what == "host" {
        MAX_HOST_NAME
    } else {
        MAX_NAME
    };
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            name: name.to_string(),
            max,
        });
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok_chars || name.starts_with('.') || name.starts_with('-') {
        return Err(NameError::Chars {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        let a = Identity::Agent(HostId::new("acme", "hq", "pbx1.example.com"));
        assert_eq!(a.uri(), "palisade://agent/acme/hq/pbx1.example.com");
        assert_eq!(Identity::from_uri(&a.uri()), Some(Ok(a)));
        let o = Identity::Operator(OperatorId::fleet("alice"));
        assert_eq!(Identity::from_uri(&o.uri()), Some(Ok(o)));
        let o = Identity::Operator(OperatorId::of_tenant("bob", "acme"));
        assert_eq!(o.uri(), "palisade://operator/acme/bob");
        assert_eq!(o.actor(), "operator:acme/bob");
        assert_eq!(Identity::from_uri(&o.uri()), Some(Ok(o)));
        assert!(Identity::from_uri("palisade://operator/a/b/c")
            .unwrap()
            .is_err());
        assert_eq!(Identity::from_uri("https://example.com"), None);
    }

    #[test]
    fn hostile_names_are_refused() {
        assert!(Identity::from_uri("palisade://agent/a/b/c/d")
            .unwrap()
            .is_err());
        assert!(Identity::from_uri("palisade://agent/a/b").unwrap().is_err());
        assert!(Identity::from_uri("palisade://agent/a/../c")
            .unwrap()
            .is_err());
        assert!(Identity::from_uri("palisade://root/x").unwrap().is_err());
        assert!(valid_name("host", "").is_err());
        assert!(valid_name("host", "a b").is_err());
        assert!(valid_name("host", "-x").is_err());
        assert!(valid_name("site", &"x".repeat(64)).is_err());
        assert!(valid_name("host", &"x".repeat(253)).is_ok());
        assert!(valid_name("host", &"x".repeat(254)).is_err());
        assert!(valid_name("host", "pbx-1_a.b").is_ok());
    }
}
