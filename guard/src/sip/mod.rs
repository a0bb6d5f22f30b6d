//! SIP message parsing for the firewall's watch: a zero-copy, allocation-free
//! (for up to [`INLINE_HEADERS`] header lines) parser over `&[u8]` that never
//! panics on hostile input, helpers for the few header values the detectors read,
//! and TCP reassembly.
//!
//! - [`parse`] reads one message (or a keep-alive) from a datagram or from the
//!   front of a stream buffer; [`Message`] answers the questions detectors ask
//!   (method, CSeq, users, credentials, contacts, challenges).
//! - [`params`] picks URIs, users and parameters out of header values.
//! - [`StreamBuffer`] and [`Streams`] turn copies of TCP segments back into
//!   messages, with bounded memory per connection and in all.

mod header;
mod message;
pub mod params;
mod stream;

pub use header::{trim, unfold, HeaderName, INLINE_HEADERS};
pub use message::{
    parse, Contact, Limits, Line, Message, Method, ParseError, Parsed, StartLine, Transport,
};
pub use params::{addr_uri, auth_param, param, parse_u32, split_list, uri_user, SplitList};
pub use stream::{PushReport, StreamBuffer, StreamConfig, Streams};
