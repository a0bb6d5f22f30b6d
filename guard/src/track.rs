//! Pairs each request from a source with the PBX's answer to it and turns the
//! pair into an [`Event`].
//!
//! The answer is what tells the truth: a 401 to a REGISTER with credentials is
//! a wrong password, a 404 an unknown user, a 200 a registration with its
//! lifetime. The source of an event is always the address the packet came from
//! (or went to), never anything written in the message.

use crate::event::{Event, Kind};
use crate::sip::{Message, Method};
use lru::LruCache;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Which way a message went, seen from the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a remote source to the PBX.
    In,
    /// From the PBX to a remote address.
    Out,
}

/// An answer later than this belongs to a transaction we no longer wait for.
const TRANSACTION_TTL: Duration = Duration::from_secs(32);
/// REGISTER without any expiry given anywhere: RFC 3261's default.
const DEFAULT_EXPIRES: u32 = 3600;

#[derive(Debug, Clone)]
struct Pending {
    at: Instant,
    source: IpAddr,
    method: Box<str>,
    /// The credentials' user, else the user the request is about.
    user: Option<Box<str>>,
    /// The AOR (To user) of a REGISTER.
    aor: Option<Box<str>>,
    credentials: bool,
    /// INVITE starting a call: the number dialled.
    destination: Option<Box<str>>,
    /// REGISTER: the binding asked for, and its requested lifetime.
    contact: Option<Box<str>>,
    star: bool,
    expires: Option<u32>,
    summary: String,
}

/// Open transactions, capped: the least recently seen are forgotten first.
pub struct Tracker {
    pending: LruCache<u64, Pending>,
}

fn lossy(b: &[u8]) -> Box<str> {
    String::from_utf8_lossy(b).into()
}

/// Longest destination kept: longer is no phone number, and memory is per
/// transaction.
const MAX_DESTINATION: usize = 64;

/// A short printable excerpt of a client-controlled field.
fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(48)]);
    s.chars().filter(|c| !c.is_control()).collect()
}

fn key(call_id: &[u8], cseq: u32, method: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call_id.hash(&mut h);
    cseq.hash(&mut h);
    method.hash(&mut h);
    h.finish()
}

impl Tracker {
    pub fn new(capacity: usize) -> Tracker {
        Tracker {
            pending: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("max(1)")),
        }
    }

    pub fn open(&self) -> usize {
        self.pending.len()
    }

    /// Looks at one message; `peer` is the remote end (source of a request
    /// coming in, destination of an answer going out).
    pub fn observe(
        &mut self,
        at: Instant,
        dir: Direction,
        peer: IpAddr,
        msg: &Message<'_>,
        out: &mut Vec<Event>,
    ) {
        match (dir, msg.is_request()) {
            (Direction::In, true) => self.request(at, peer, msg, out),
            (Direction::Out, false) => self.response(at, peer, msg, out),
            // Requests the PBX sends (qualify OPTIONS, NOTIFY) and their answers
            // say nothing about the remote side's intentions.
            _ => {}
        }
    }

    /// Something on a SIP port that did not parse.
    pub fn garbage(&mut self, at: Instant, peer: IpAddr, error: &str, out: &mut Vec<Event>) {
        out.push(Event {
            at,
            source: peer,
            kind: Kind::Garbage {
                error: error.into(),
            },
            summary: format!("not SIP: {error}"),
        });
    }

    fn request(&mut self, at: Instant, source: IpAddr, msg: &Message<'_>, out: &mut Vec<Event>) {
        let Some(method) = msg.method() else { return };
        let method_bytes = method.as_bytes();
        let credentials = msg.has_credentials();
        let target = match method {
            Method::Register => msg.to_user(),
            _ => msg.request_uri_user().or_else(|| msg.to_user()),
        };
        let user = msg.auth_username().or(target);
        // A call, not a re-INVITE within one (those carry the To tag).
        let destination = match method {
            Method::Invite if msg.to_tag().is_none() => msg
                .request_uri_user()
                .map(|d| lossy(&d[..d.len().min(MAX_DESTINATION)])),
            _ => None,
        };
        let ua = msg.user_agent();
        let summary = format!(
            "{} {}{}{}{}",
            String::from_utf8_lossy(method_bytes),
            user.map(excerpt).unwrap_or_else(|| "-".into()),
            // The number dialled, when the user shown is someone else.
            destination
                .as_deref()
                .filter(|d| user.is_none_or(|u| u != d.as_bytes()))
                .map(|d| format!(" to {}", excerpt(d.as_bytes())))
                .unwrap_or_default(),
            ua.map(|u| format!(" ua={:?}", excerpt(u)))
                .unwrap_or_default(),
            if credentials { " auth" } else { "" },
        );
        if let (Some(call_id), Some((cseq, _))) = (msg.call_id(), msg.cseq()) {
            let mut contact = None;
            let mut star = false;
            let mut contact_expires = None;
            if matches!(method, Method::Register) {
                if let Some(c) = msg.contacts().next() {
                    star = c.is_star;
                    contact = Some(lossy(c.uri));
                    contact_expires = c.expires;
                }
            }
            self.pending.put(
                key(call_id, cseq, method_bytes),
                Pending {
                    at,
                    source,
                    method: lossy(method_bytes),
                    user: user.map(lossy),
                    aor: msg.to_user().map(lossy),
                    credentials,
                    destination: destination.clone(),
                    contact,
                    star,
                    expires: contact_expires.or_else(|| msg.expires()),
                    summary: summary.clone(),
                },
            );
        }
        out.push(Event {
            at,
            source,
            kind: Kind::Request {
                method: lossy(method_bytes),
                user: user.map(lossy),
                user_agent: ua.map(lossy),
                from_user: msg.from_user().map(lossy),
                credentials,
                destination,
            },
            summary,
        });
    }

    fn response(&mut self, at: Instant, _peer: IpAddr, msg: &Message<'_>, out: &mut Vec<Event>) {
        let (Some(status), Some(call_id), Some((cseq, method))) =
            (msg.status(), msg.call_id(), msg.cseq())
        else {
            return;
        };
        if status < 200 {
            return;
        }
        let k = key(call_id, cseq, method.as_bytes());
        let Some(p) = self.pending.pop(&k) else {
            return;
        };
        if at.saturating_duration_since(p.at) > TRANSACTION_TTL {
            return;
        }
        let summary = format!("{} → {status}", p.summary);
        let user = p.user.clone().unwrap_or_else(|| "-".into());
        let kind = match status {
            401 | 407 if msg.challenge_is_stale() => return,
            401 | 407 | 403 if p.credentials => Kind::AuthFailed {
                user,
                destination: p.destination.clone(),
            },
            401 | 407 => Kind::Challenged { user },
            403 | 404 => Kind::UnknownUser { user, status },
            200..=299 if &*p.method == "REGISTER" => {
                let aor = p
                    .aor
                    .clone()
                    .or(p.user.clone())
                    .unwrap_or_else(|| "-".into());
                match registration(&p, msg) {
                    Some((contact, expires)) if expires > 0 => Kind::Registered {
                        user: aor,
                        contact,
                        expires: Duration::from_secs(expires.into()),
                    },
                    Some((contact, _)) => Kind::Unregistered {
                        user: aor,
                        contact: (!p.star).then_some(contact),
                    },
                    // A fetch of the bindings (no Contact in the request).
                    None => return,
                }
            }
            _ => return,
        };
        out.push(Event {
            at,
            source: p.source,
            kind,
            summary,
        });
    }
}

/// The binding a 2xx to a REGISTER confirmed, and its lifetime in seconds as
/// the registrar granted it (0: removed).
fn registration(p: &Pending, msg: &Message<'_>) -> Option<(Box<str>, u32)> {
    let contact = p.contact.clone()?;
    if p.star || p.expires == Some(0) {
        return Some((contact, 0));
    }
    // The registrar lists every binding of the AOR; ours is the one with our URI.
    let granted = msg
        .contacts()
        .find(|c| c.uri == contact.as_bytes() || c.uri.eq_ignore_ascii_case(contact.as_bytes()))
        .and_then(|c| c.expires);
    let expires = granted
        .or_else(|| msg.expires())
        .or(p.expires)
        .unwrap_or(DEFAULT_EXPIRES);
    Some((contact, expires))
}
