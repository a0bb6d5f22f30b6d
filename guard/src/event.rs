//! What the watch learns about a source, in the detectors' terms.
//!
//! The same events come from the packet path ([`crate::track`]) and, later, from
//! the PBX's security logs, so the detectors never care where a fact came from.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One fact about one source address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Instant,
    /// The remote address the fact is about: for the packet path, the source of
    /// the request (never a header the client wrote).
    pub source: IpAddr,
    pub kind: Kind,
    /// One line for the evidence: the request and the answer, e.g.
    /// `REGISTER 300 ua="friendly-scanner" auth → 401`.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A request arrived.
    Request {
        method: Box<str>,
        /// The user it is about (the credentials' user, else the To/Request-URI user).
        user: Option<Box<str>>,
        user_agent: Option<Box<str>>,
        /// From user, which some tools set to their own name.
        from_user: Option<Box<str>>,
        credentials: bool,
        /// For an INVITE that starts a call (no To tag): the number dialled,
        /// the Request-URI user as written (the To header is the caller's to
        /// write and proves nothing). `None` for any other request.
        destination: Option<Box<str>>,
    },
    /// A request with credentials was refused (401/407/403): a wrong password.
    AuthFailed {
        user: Box<str>,
        /// `Some` when the refused request was an INVITE starting a call: the
        /// number it dialled, as in [`Kind::Request`]. A refused call to a
        /// costly number is toll fraud, not only a wrong password.
        destination: Option<Box<str>>,
    },
    /// A request without credentials was challenged (401/407): the normal first
    /// step of every registration, suspicious only when never followed up.
    Challenged { user: Box<str> },
    /// The PBX does not know the user (404), or refused it without asking for
    /// credentials (403).
    UnknownUser { user: Box<str>, status: u16 },
    /// A REGISTER was accepted; the binding lives for `expires`.
    Registered {
        user: Box<str>,
        contact: Box<str>,
        expires: Duration,
    },
    /// A binding was removed (`Expires: 0`); `contact` `None` means all of the
    /// user's bindings from this source (`Contact: *`).
    Unregistered {
        user: Box<str>,
        contact: Option<Box<str>>,
    },
    /// Something arrived on a SIP port that is not SIP.
    Garbage { error: Box<str> },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Request { .. } => "request",
            Kind::AuthFailed { .. } => "auth-failed",
            Kind::Challenged { .. } => "challenged",
            Kind::UnknownUser { .. } => "unknown-user",
            Kind::Registered { .. } => "registered",
            Kind::Unregistered { .. } => "unregistered",
            Kind::Garbage { .. } => "garbage",
        }
    }
}
