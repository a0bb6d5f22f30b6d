//! The SIP message parser: start line, header index and body framing.
//!
//! [`parse`] reads one message from the front of a buffer without copying or
//! allocating (for up to [`INLINE_HEADERS`](super::INLINE_HEADERS) header lines)
//! and returns a [`Message`] that borrows from the buffer. It is written by hand for
//! hostile input: every byte is looked at a bounded number of times, every limit
//! ([`Limits`]) is checked before the work it bounds, nothing indexes past the end
//! of the input, and anything that is not SIP is an error that says what and where.
//!
//! The parser is deliberately stricter than a PBX about bytes that let two parsers
//! disagree about where a header ends (a CR without LF, NUL and other control
//! characters, conflicting Content-Length headers): the firewall must never see a
//! different message than the one the PBX acts on, so it refuses those outright.

use std::fmt;

use super::header::{trim, HeaderIndex, HeaderName, Span};
use super::params::{addr_uri, auth_param, param, parse_u32, split_list, uri_user};

/// How the bytes arrived, which decides how the end of a message is found
/// (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: one datagram is one message. A missing Content-Length means the body
    /// runs to the end of the datagram; a Content-Length longer than the datagram is
    /// an error (the rest will never come).
    Datagram,
    /// TCP or TLS: messages follow each other in a byte stream. A missing
    /// Content-Length means an empty body; a Content-Length longer than the buffer
    /// means [`Parsed::Incomplete`].
    Stream,
}

/// Bounds on what one message may cost, so a hostile peer cannot make the parser
/// work or remember in proportion to what it sends. Exceeding one is a
/// [`ParseError`] that names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Header lines per message (a folded header counts once). Default 256; real
    /// phones send 10 to 25.
    pub max_headers: usize,
    /// Bytes from the start line to the empty line that ends the headers,
    /// inclusive. Default 64 KiB; real messages have 0.5 to 2 KiB. Values above
    /// 4 GiB are treated as 4 GiB.
    pub max_header_bytes: usize,
    /// The largest Content-Length accepted. Default 64 KiB, the most a UDP datagram
    /// can hold; SDP and dialog/MWI bodies are a few KiB.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 256,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// What [`parse`] found at the front of the buffer.
///
/// `Message` is large (the inline header index, about 750 bytes) and the other
/// variants are small; boxing it would put a heap allocation on every parse, which
/// is what the inline index is there to avoid.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Parsed<'a> {
    /// A complete message and the number of bytes it took from the buffer
    /// (including any CRLFs skipped before it in a datagram, and excluding any
    /// bytes after its body).
    Message(Message<'a>, usize),
    /// Only CR and LF bytes: a keep-alive ping (`CRLFCRLF`) or pong (`CRLF`) of
    /// RFC 5626, or on a stream the CRLFs that RFC 3261 §7.5 says to ignore before
    /// a start line. The number is how many bytes to drop.
    KeepAlive(usize),
    /// Stream only: the buffer holds the beginning of a message; call again with
    /// more bytes.
    Incomplete,
}

/// A SIP method. Methods are case-sensitive (RFC 3261 §7.1), so `register` is
/// `Other(b"register")`, which no PBX will treat as a registration either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method<'a> {
    Register,
    Invite,
    Options,
    Subscribe,
    Notify,
    Ack,
    Bye,
    Cancel,
    Message,
    Info,
    Prack,
    Update,
    Refer,
    Publish,
    /// Any other token, as received.
    Other(&'a [u8]),
}

impl<'a> Method<'a> {
    const KNOWN: [(Method<'static>, &'static [u8]); 14] = [
        (Method::Register, b"REGISTER"),
        (Method::Invite, b"INVITE"),
        (Method::Options, b"OPTIONS"),
        (Method::Subscribe, b"SUBSCRIBE"),
        (Method::Notify, b"NOTIFY"),
        (Method::Ack, b"ACK"),
        (Method::Bye, b"BYE"),
        (Method::Cancel, b"CANCEL"),
        (Method::Message, b"MESSAGE"),
        (Method::Info, b"INFO"),
        (Method::Prack, b"PRACK"),
        (Method::Update, b"UPDATE"),
        (Method::Refer, b"REFER"),
        (Method::Publish, b"PUBLISH"),
    ];

    /// The method for a token as received (the caller checks it is a token).
    pub fn from_bytes(token: &'a [u8]) -> Method<'a> {
        Self::KNOWN
            .iter()
            .find(|(_, name)| *name == token)
            .map_or(Method::Other(token), |(method, _)| *method)
    }

    /// The method as it appears on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Method::Other(token) => token,
            known => Self::KNOWN
                .iter()
                .find(|(method, _)| method == known)
                .map_or(&b""[..], |(_, name)| name),
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD SP Request-URI SP SIP/2.0`
    Request { method: Method<'a>, uri: &'a [u8] },
    /// `SIP/2.0 SP 3DIGIT SP reason` (the reason may be empty)
    Response { code: u16, reason: &'a [u8] },
}

/// One Contact binding (one element of a Contact header's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact<'a> {
    /// The whole element, e.g. `<sip:300@10.0.0.5:5060>;expires=3600`.
    pub raw: &'a [u8],
    /// The URI, without `<>` and without header parameters; empty for `*`.
    pub uri: &'a [u8],
    /// The `;expires=` parameter, which overrides the Expires header for this
    /// binding (RFC 3261 §10.2.1.1). `None` if absent or not a number.
    pub expires: Option<u32>,
    /// `Contact: *`, which with `Expires: 0` removes every binding.
    pub is_star: bool,
}

impl<'a> Contact<'a> {
    fn from_element(element: &'a [u8]) -> Contact<'a> {
        let is_star = element == b"*";
        Contact {
            raw: element,
            uri: if is_star { b"" } else { addr_uri(element) },
            expires: param(element, b"expires").and_then(parse_u32),
            is_star,
        }
    }
}

/// A parsed message. Everything borrows from the buffer given to [`parse`].
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The request or status line.
    pub start: StartLine<'a>,
    /// The body: `Content-Length` bytes after the empty line (see [`Transport`]
    /// for when it is missing).
    pub body: &'a [u8],
    /// The whole message, start line to end of body.
    raw: &'a [u8],
    headers: HeaderIndex,
}

impl<'a> Message<'a> {
    /// The whole message, from the start line to the end of the body.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// How many header lines the message has (folded lines count once).
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// Every header line as `(name, value)` in message order. Values are trimmed;
    /// a folded value keeps its inner line breaks (see [`unfold`](super::unfold)).
    pub fn iter(&self) -> impl Iterator<Item = (HeaderName<'a>, &'a [u8])> + '_ {
        self.headers.iter(self.raw)
    }

    /// The value of the first header line with this name (compact forms and case
    /// do not matter), trimmed.
    pub fn header(&self, name: HeaderName<'_>) -> Option<&'a [u8]> {
        self.headers(name).next()
    }

    /// The values of every header line with this name, in order. A line may hold
    /// a comma-separated list; split it with [`split_list`](super::split_list).
    pub fn headers<'s, 'n: 's>(
        &'s self,
        name: HeaderName<'n>,
    ) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers.values(self.raw, name)
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method; `None` for a response (use [`cseq`](Self::cseq) to
    /// learn which request a response answers).
    pub fn method(&self) -> Option<&Method<'a>> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI; `None` for a response.
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code; `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn call_id(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::CallId)
    }

    /// `CSeq: 102 REGISTER` as `(102, Register)`; `None` if absent or malformed.
    /// Transaction matching needs the method because a CANCEL shares the INVITE's
    /// number.
    pub fn cseq(&self) -> Option<(u32, Method<'a>)> {
        let value = self.header(HeaderName::CSeq)?;
        let split = value.iter().position(|&b| is_space(b))?;
        let number = parse_u32(&value[..split])?;
        let method = trim(&value[split..]);
        if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
            return None;
        }
        Some((number, Method::from_bytes(method)))
    }

    /// The User-Agent header (what the client calls itself: `friendly-scanner`,
    /// `Yealink SIP-T46S ...`). Responses name their software in [`server`](Self::server).
    pub fn user_agent(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::UserAgent)
    }

    /// The Server header of a response.
    pub fn server(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::Server)
    }

    /// Whether the request carries an Authorization or Proxy-Authorization header,
    /// i.e. is an authentication attempt (a wrong one from a cracker looks the same
    /// until the PBX answers).
    pub fn has_credentials(&self) -> bool {
        self.header(HeaderName::Authorization).is_some()
            || self.header(HeaderName::ProxyAuthorization).is_some()
    }

    /// The `username="..."` of the credentials, which is the account being
    /// guessed at and need not match the From user.
    pub fn auth_username(&self) -> Option<&'a [u8]> {
        self.headers(HeaderName::Authorization)
            .chain(self.headers(HeaderName::ProxyAuthorization))
            .find_map(|value| auth_param(value, b"username"))
    }

    /// The user of the From URI (see [`uri_user`](super::uri_user)).
    pub fn from_user(&self) -> Option<&'a [u8]> {
        uri_user(self.header(HeaderName::From)?)
    }

    /// The user of the To URI: for a REGISTER, the account being registered.
    pub fn to_user(&self) -> Option<&'a [u8]> {
        uri_user(self.header(HeaderName::To)?)
    }

    /// The From tag, which with Call-ID and To tag identifies a dialog.
    pub fn from_tag(&self) -> Option<&'a [u8]> {
        param(self.header(HeaderName::From)?, b"tag")
    }

    /// The To tag; absent on a dialog-creating request.
    pub fn to_tag(&self) -> Option<&'a [u8]> {
        param(self.header(HeaderName::To)?, b"tag")
    }

    /// The user of the Request-URI: the number dialled for an INVITE.
    pub fn request_uri_user(&self) -> Option<&'a [u8]> {
        uri_user(self.request_uri()?)
    }

    /// The Expires header (delta seconds); `None` if absent or not a number.
    /// Contact bindings may override it with `;expires=`.
    pub fn expires(&self) -> Option<u32> {
        parse_u32(self.header(HeaderName::Expires)?)
    }

    /// Every Contact binding of every Contact header line, in order.
    pub fn contacts(&self) -> impl Iterator<Item = Contact<'a>> + '_ {
        self.headers(HeaderName::Contact)
            .flat_map(split_list)
            .map(Contact::from_element)
    }

    /// The first Via entry: the hop that sent this message, whose `branch`
    /// identifies the transaction.
    pub fn top_via(&self) -> Option<&'a [u8]> {
        self.headers(HeaderName::Via).flat_map(split_list).next()
    }

    /// Whether a 401/407 challenge says `stale=true`: the client's credentials
    /// were right but its nonce had expired, so the failure is no sign of guessing.
    pub fn challenge_is_stale(&self) -> bool {
        self.headers(HeaderName::WwwAuthenticate)
            .chain(self.headers(HeaderName::ProxyAuthenticate))
            .filter_map(|value| auth_param(value, b"stale"))
            .any(|stale| stale.eq_ignore_ascii_case(b"true"))
    }

    /// The number of Via entries, counting at most `n`: the work is bounded by
    /// `n`, so a message with a 10,000-entry Via costs no more than needed to
    /// learn that it has "more than n".
    pub fn via_count_at_most(&self, n: usize) -> usize {
        self.headers(HeaderName::Via)
            .flat_map(split_list)
            .take(n)
            .count()
    }
}

/// Which line of the message an error is in: 0 is the start line, `n` is the
/// n-th header line (continuation lines of a folded header count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line(pub usize);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("the start line"),
            n => write!(f, "header line {n}"),
        }
    }
}

/// Why a buffer is not a SIP message. Offsets count from the start of the buffer
/// given to [`parse`]; quoted excerpts are escaped and shortened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty datagram")]
    Empty,
    #[error("bad start line at byte {offset}: {reason} (\"{excerpt}\")")]
    BadStartLine {
        offset: usize,
        reason: &'static str,
        excerpt: String,
    },
    #[error("control character 0x{byte:02x} in {line} at byte {offset}")]
    ControlChar { byte: u8, line: Line, offset: usize },
    #[error("CR not followed by LF in {line} at byte {offset}")]
    BareCr { line: Line, offset: usize },
    #[error("{line} has no colon (byte {offset}): \"{excerpt}\"")]
    NoColon {
        line: Line,
        offset: usize,
        excerpt: String,
    },
    #[error("{line} has an invalid header name \"{excerpt}\" (byte {offset})")]
    BadHeaderName {
        line: Line,
        offset: usize,
        excerpt: String,
    },
    #[error("{line} starts with whitespace but there is no header to continue (byte {offset})")]
    OrphanContinuation { line: Line, offset: usize },
    #[error("too many header lines (limit {limit}, max_headers)")]
    TooManyHeaders { limit: usize },
    #[error("header section larger than {limit} bytes (limit max_header_bytes)")]
    HeaderSectionTooLarge { limit: usize },
    #[error("header section not ended by an empty line (the datagram ends at byte {offset})")]
    Unterminated { offset: usize },
    #[error("Content-Length \"{value}\" is {reason} (byte {offset})")]
    BadContentLength {
        value: String,
        reason: &'static str,
        offset: usize,
    },
    #[error("conflicting Content-Length headers: {first} and {second}")]
    ConflictingContentLength { first: usize, second: usize },
    #[error("Content-Length {length} is larger than {limit} bytes (limit max_body_bytes)")]
    BodyTooLarge { length: usize, limit: usize },
    #[error("Content-Length {declared} but the datagram holds only {available} body bytes")]
    TruncatedBody { declared: usize, available: usize },
}

/// Reads the message at the front of `buf`.
///
/// Leading CR/LF bytes are a keep-alive: a buffer of nothing else gives
/// [`Parsed::KeepAlive`]; on a stream they are reported as `KeepAlive` even when a
/// message follows (drop them and call again), in a datagram they are skipped. A
/// datagram's message ends at its Content-Length (trailing bytes are ignored, as
/// RFC 3261 §18.3 says) or at the end of the datagram.
pub fn parse<'a>(
    buf: &'a [u8],
    transport: Transport,
    limits: &Limits,
) -> Result<Parsed<'a>, ParseError> {
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip == buf.len() {
        return match (skip, transport) {
            (0, Transport::Stream) => Ok(Parsed::Incomplete),
            (0, Transport::Datagram) => Err(ParseError::Empty),
            (n, _) => Ok(Parsed::KeepAlive(n)),
        };
    }
    if skip > 0 && transport == Transport::Stream {
        return Ok(Parsed::KeepAlive(skip));
    }
    let msg = &buf[skip..];
    let Some(head) = parse_head(msg, transport, limits, skip)? else {
        return Ok(Parsed::Incomplete);
    };
    let rest = &msg[head.len..];
    let Some(body_len) = body_len(head.content_length, rest.len(), transport, limits)? else {
        return Ok(Parsed::Incomplete);
    };
    let total = head.len + body_len;
    let message = Message {
        start: head.start,
        body: &rest[..body_len],
        raw: &msg[..total],
        headers: head.headers,
    };
    Ok(Parsed::Message(message, skip + total))
}

/// The body length, or `None` if a stream has not delivered all of it yet.
fn body_len(
    content_length: Option<usize>,
    available: usize,
    transport: Transport,
    limits: &Limits,
) -> Result<Option<usize>, ParseError> {
    let declared = match (content_length, transport) {
        (Some(n), _) => n,
        (None, Transport::Stream) => 0,
        (None, Transport::Datagram) => available,
    };
    if declared > limits.max_body_bytes {
        return Err(ParseError::BodyTooLarge {
            length: declared,
            limit: limits.max_body_bytes,
        });
    }
    match transport {
        _ if declared <= available => Ok(Some(declared)),
        Transport::Stream => Ok(None),
        Transport::Datagram => Err(ParseError::TruncatedBody {
            declared,
            available,
        }),
    }
}

/// The length a stream message starting at `buf[0]` will have (header section
/// plus Content-Length), once its header section is complete; `None` while it is
/// not. Used by the stream reassembler to wait for exactly the bytes it needs
/// instead of re-parsing on every segment.
pub(crate) fn stream_message_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
    let Some(head) = parse_head(buf, Transport::Stream, limits, 0)? else {
        return Ok(None);
    };
    let body = head.content_length.unwrap_or(0);
    if body > limits.max_body_bytes {
        return Err(ParseError::BodyTooLarge {
            length: body,
            limit: limits.max_body_bytes,
        });
    }
    Ok(Some(head.len + body))
}

/// Checks a complete first line (without its line ending) as a start line, so the
/// reassembler can drop garbage as soon as its first line is in.
pub(crate) fn check_start_line(line: &[u8]) -> Result<(), ParseError> {
    parse_start_line(line, 0).map(|_| ())
}

/// The start line and header index of a message, and where its body starts.
struct Head<'a> {
    start: StartLine<'a>,
    headers: HeaderIndex,
    /// Bytes from the start line to the end of the empty line.
    len: usize,
    content_length: Option<usize>,
}

/// What to do when the header section runs past the bytes we have.
fn need_more<T>(
    msg_len: usize,
    cap: usize,
    transport: Transport,
    base: usize,
) -> Result<Option<T>, ParseError> {
    if msg_len > cap {
        return Err(ParseError::HeaderSectionTooLarge { limit: cap });
    }
    match transport {
        Transport::Stream => Ok(None),
        Transport::Datagram => Err(ParseError::Unterminated {
            offset: base + msg_len,
        }),
    }
}

/// Parses the start line and the header lines of `msg`; `None` if a stream has
/// not delivered the whole header section yet. `base` is where `msg` starts in
/// the caller's buffer, for error offsets.
fn parse_head<'a>(
    msg: &'a [u8],
    transport: Transport,
    limits: &Limits,
    base: usize,
) -> Result<Option<Head<'a>>, ParseError> {
    let cap = limits.max_header_bytes.min(u32::MAX as usize);
    let view = &msg[..msg.len().min(cap)];
    let Some((line_end, mut pos)) = find_line_end(view, 0, Line(0), base)? else {
        if transport == Transport::Stream {
            check_partial_start_line(view, base)?;
        }
        return need_more(msg.len(), cap, transport, base);
    };
    let start = parse_start_line(&view[..line_end], base)?;
    let mut headers = HeaderIndex::new();
    let mut content_length = None;
    let mut line = 1;
    loop {
        match view.get(pos) {
            None => return need_more(msg.len(), cap, transport, base),
            Some(b'\n') => return Ok(Some(Head::new(start, headers, pos + 1, content_length))),
            Some(b'\r') => match view.get(pos + 1) {
                Some(b'\n') => {
                    return Ok(Some(Head::new(start, headers, pos + 2, content_length)));
                }
                Some(_) => {
                    let offset = base + pos;
                    return Err(ParseError::BareCr {
                        line: Line(line),
                        offset,
                    });
                }
                None => return need_more(msg.len(), cap, transport, base),
            },
            Some(b' ' | b'\t') => {
                let offset = base + pos;
                return Err(ParseError::OrphanContinuation {
                    line: Line(line),
                    offset,
                });
            }
            Some(_) => {}
        }
        // One header: its first line, then any continuation lines.
        let field_line = Line(line);
        let Some((first_end, mut next)) = find_line_end(view, pos, field_line, base)? else {
            return need_more(msg.len(), cap, transport, base);
        };
        let mut field_end = first_end;
        line += 1;
        loop {
            match view.get(next) {
                None => return need_more(msg.len(), cap, transport, base),
                Some(b' ' | b'\t') => {
                    let Some((end, after)) = find_line_end(view, next, Line(line), base)? else {
                        return need_more(msg.len(), cap, transport, base);
                    };
                    field_end = end;
                    next = after;
                    line += 1;
                }
                Some(_) => break,
            }
        }
        if headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let field = Field {
            view,
            start: pos,
            first_end,
            end: field_end,
            line: field_line,
            base,
        };
        field.index(&mut headers, &mut content_length)?;
        pos = next;
    }
}

impl<'a> Head<'a> {
    fn new(
        start: StartLine<'a>,
        headers: HeaderIndex,
        len: usize,
        content_length: Option<usize>,
    ) -> Head<'a> {
        Head {
            start,
            headers,
            len,
            content_length,
        }
    }
}

/// One header field: `view[start..end]`, whose first physical line ends at
/// `first_end` (the colon must be on it).
struct Field<'v> {
    view: &'v [u8],
    start: usize,
    first_end: usize,
    end: usize,
    line: Line,
    base: usize,
}

impl Field<'_> {
    /// Adds the field to the index, and checks Content-Length as it goes by.
    fn index(
        &self,
        headers: &mut HeaderIndex,
        content_length: &mut Option<usize>,
    ) -> Result<(), ParseError> {
        let first = &self.view[self.start..self.first_end];
        let Some(colon) = first.iter().position(|&b| b == b':') else {
            return Err(ParseError::NoColon {
                line: self.line,
                offset: self.base + self.start,
                excerpt: excerpt(first),
            });
        };
        let name_end = first[..colon]
            .iter()
            .rposition(|&b| !is_space(b))
            .map_or(0, |i| i + 1);
        let name = &first[..name_end];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(ParseError::BadHeaderName {
                line: self.line,
                offset: self.base + self.start,
                excerpt: excerpt(&first[..colon]),
            });
        }
        let (value_start, value_end) = trimmed_range(self.view, self.start + colon + 1, self.end);
        let value = &self.view[value_start..value_end];
        let header = HeaderName::from_bytes(name);
        if header == HeaderName::ContentLength {
            let length = parse_content_length(value, self.base + value_start)?;
            match *content_length {
                Some(first) if first != length => {
                    return Err(ParseError::ConflictingContentLength {
                        first,
                        second: length,
                    });
                }
                _ => *content_length = Some(length),
            }
        }
        let too_large = || ParseError::HeaderSectionTooLarge {
            limit: self.view.len(),
        };
        let name_span = Span::new(self.start, self.start + name_end).ok_or_else(too_large)?;
        let value_span = Span::new(value_start, value_end).ok_or_else(too_large)?;
        headers.push(&header, name_span, value_span);
        Ok(())
    }
}

/// `start..end` narrowed to exclude leading and trailing whitespace (including
/// folding line breaks).
fn trimmed_range(view: &[u8], start: usize, end: usize) -> (usize, usize) {
    let value = &view[start..end];
    let trimmed = trim(value);
    let lead = trimmed.as_ptr() as usize - value.as_ptr() as usize;
    (start + lead, start + lead + trimmed.len())
}

fn parse_content_length(value: &[u8], offset: usize) -> Result<usize, ParseError> {
    let bad = |reason| ParseError::BadContentLength {
        value: excerpt(value),
        reason,
        offset,
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad("not a number"));
    }
    value.iter().try_fold(0usize, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(usize::from(d - b'0')))
            .ok_or_else(|| bad("too large"))
    })
}

/// Finds the end of the line starting at `from`: `(end of content, start of next
/// line)`, or `None` if the buffer ends first. Rejects control characters other
/// than HT, and a CR that is not part of CRLF, because parsers that disagree about
/// them disagree about where headers end (header injection).
fn find_line_end(
    buf: &[u8],
    from: usize,
    line: Line,
    base: usize,
) -> Result<Option<(usize, usize)>, ParseError> {
    let mut i = from;
    loop {
        i = skip_plain(buf, i);
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        match b {
            b'\n' => return Ok(Some((i, i + 1))),
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some((i, i + 2))),
                    Some(_) => Err(ParseError::BareCr {
                        line,
                        offset: base + i,
                    }),
                    None => Ok(None),
                }
            }
            b'\t' => i += 1,
            _ => {
                return Err(ParseError::ControlChar {
                    byte: b,
                    line,
                    offset: base + i,
                })
            }
        }
    }
}

/// Whether a byte is a control character (C0 or DEL), which the line scanner
/// must look at.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// The index of the first control byte at or after `i` (or the end). Header
/// bytes are scanned eight at a time: this loop is most of the parser's work.
fn skip_plain(buf: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(chunk) = buf.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_ne_bytes(bytes);
        // Some byte < 0x20, or some byte == 0x7f (the classic SWAR tests; a byte
        // >= 0x80 never sets its own flag, and no false negatives are possible).
        let below = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let del = x ^ (ONES * 0x7f);
        let del = del.wrapping_sub(ONES) & !del & HIGH;
        if below | del != 0 {
            break;
        }
        i += 8;
    }
    while buf.get(i).is_some_and(|&b| !is_control(b)) {
        i += 1;
    }
    i
}

fn bad_start(base: usize, reason: &'static str, line: &[u8]) -> ParseError {
    ParseError::BadStartLine {
        offset: base,
        reason,
        excerpt: excerpt(line),
    }
}

/// Parses a complete start line (without its line ending).
fn parse_start_line(line: &[u8], base: usize) -> Result<StartLine<'_>, ParseError> {
    let end = line
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(0, |i| i + 1);
    let line = &line[..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        parse_status_line(line, base)
    } else {
        parse_request_line(line, base)
    }
}

fn parse_request_line(line: &[u8], base: usize) -> Result<StartLine<'_>, ParseError> {
    let method_end = line
        .iter()
        .position(|&b| !is_token(b))
        .unwrap_or(line.len());
    if method_end == 0 {
        return Err(bad_start(base, "the method is not a token", line));
    }
    if line.get(method_end) != Some(&b' ') {
        return Err(bad_start(base, "expected a space after the method", line));
    }
    let rest = skip_spaces(&line[method_end..]);
    let uri_end = rest.iter().position(|&b| is_space(b)).unwrap_or(rest.len());
    let uri = &rest[..uri_end];
    if !is_absolute_uri(uri) {
        return Err(bad_start(
            base,
            "the Request-URI is not an absolute URI",
            line,
        ));
    }
    let version = skip_spaces(&rest[uri_end..]);
    if version.is_empty() {
        return Err(bad_start(
            base,
            "no SIP version after the Request-URI",
            line,
        ));
    }
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(bad_start(base, "the version is not SIP/2.0", line));
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(&line[..method_end]),
        uri,
    })
}

fn parse_status_line(line: &[u8], base: usize) -> Result<StartLine<'_>, ParseError> {
    if line.len() < 7 || !line[..7].eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(bad_start(base, "the version is not SIP/2.0", line));
    }
    if line.get(7) != Some(&b' ') {
        return Err(bad_start(base, "expected a space after SIP/2.0", line));
    }
    let rest = skip_spaces(&line[7..]);
    let code_bytes = rest.get(..3).unwrap_or(rest);
    let code_ok = code_bytes.len() == 3
        && code_bytes.iter().all(u8::is_ascii_digit)
        && (b'1'..=b'6').contains(&code_bytes[0]);
    if !code_ok {
        return Err(bad_start(base, "the status code is not 100 to 699", line));
    }
    let after = &rest[3..];
    if after.first().is_some_and(|&b| !is_space(b)) {
        return Err(bad_start(
            base,
            "the status code has more than 3 digits",
            line,
        ));
    }
    let code = code_bytes
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    Ok(StartLine::Response {
        code,
        reason: skip_spaces(after),
    })
}

/// Rejects a stream's first line early, before its line ending arrives, when what
/// has arrived already cannot begin a start line (binary junk, a 1 MB token): a
/// stream otherwise waits for up to `max_header_bytes` of garbage.
fn check_partial_start_line(partial: &[u8], base: usize) -> Result<(), ParseError> {
    let first_len = partial
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(partial.len());
    let first = &partial[..first_len];
    let version = b"SIP/2.0";
    let n = first.len().min(version.len());
    if first[..n].eq_ignore_ascii_case(&version[..n]) {
        return Ok(());
    }
    if !first.iter().all(|&b| is_token(b)) {
        return Err(bad_start(base, "the method is not a token", partial));
    }
    Ok(())
}

/// `scheme ":" something`, with the scheme of RFC 3986 §3.1.
fn is_absolute_uri(uri: &[u8]) -> bool {
    let Some(colon) = uri.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &uri[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && colon + 1 < uri.len()
}

/// RFC 3261 §25.1 `token` characters, as a table: every header name is checked
/// byte by byte.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    table
};

fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn skip_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_space(b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// A short, printable rendering of hostile bytes for an error message.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    let shown = &bytes[..bytes.len().min(MAX)];
    let mut out: String = shown.escape_ascii().to_string();
    if bytes.len() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &[u8] = b"REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1;rport\r\n\
From: \"Alice\" <sip:300@pbx.example.com>;tag=abc\r\n\
To: <sip:300@pbx.example.com>\r\n\
Call-ID: 1234@192.0.2.10\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:300@192.0.2.10:5060>;expires=120\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\
\r\n";

    fn message(buf: &[u8], transport: Transport) -> (Message<'_>, usize) {
        match parse(buf, transport, &Limits::default()) {
            Ok(Parsed::Message(m, n)) => (m, n),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn error(buf: &[u8], transport: Transport) -> ParseError {
        match parse(buf, transport, &Limits::default()) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn register_fields() {
        let (m, n) = message(REGISTER, Transport::Datagram);
        assert_eq!(n, REGISTER.len());
        assert!(m.is_request());
        assert_eq!(m.method(), Some(&Method::Register));
        assert_eq!(m.request_uri(), Some(&b"sip:pbx.example.com"[..]));
        assert_eq!(m.request_uri_user(), None);
        assert_eq!(m.status(), None);
        assert_eq!(m.call_id(), Some(&b"1234@192.0.2.10"[..]));
        assert_eq!(m.cseq(), Some((2, Method::Register)));
        assert_eq!(m.from_user(), Some(&b"300"[..]));
        assert_eq!(m.to_user(), Some(&b"300"[..]));
        assert_eq!(m.from_tag(), Some(&b"abc"[..]));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.expires(), Some(3600));
        assert_eq!(m.header_count(), 8);
        assert!(!m.has_credentials());
        assert_eq!(m.auth_username(), None);
        assert!(!m.challenge_is_stale());
        assert_eq!(m.via_count_at_most(10), 1);
        let contacts: Vec<_> = m.contacts().collect();
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0].uri, b"sip:300@192.0.2.10:5060");
        assert_eq!(contacts[0].expires, Some(120));
        assert!(m.body.is_empty());
        assert_eq!(m.raw(), REGISTER);
    }

    #[test]
    fn skip_plain_finds_every_control_byte() {
        for len in 0..20 {
            for at in 0..=len {
                for control in [0u8, b'\t', b'\n', b'\r', 0x1f, 0x7f] {
                    let mut buf = vec![b'a'; len];
                    // Bytes >= 0x80 and 0x20 are plain, and must not hide a control byte.
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = [b'a', 0x80, 0xff, 0x20, 0x7e, 0xa0][i % 6];
                    }
                    if at < len {
                        buf[at] = control;
                    }
                    assert_eq!(skip_plain(&buf, 0), at, "len {len} at {at} byte {control}");
                }
            }
        }
    }

    #[test]
    fn methods_round_trip() {
        for (method, name) in Method::KNOWN {
            assert_eq!(Method::from_bytes(name), method);
            assert_eq!(method.as_bytes(), name);
        }
        assert_eq!(Method::from_bytes(b"register"), Method::Other(b"register"));
        assert_eq!(Method::Other(b"FOO").as_bytes(), b"FOO");
    }

    #[test]
    fn status_line_forms() {
        let ok = |line: &'static [u8]| parse_start_line(line, 0).unwrap();
        assert_eq!(
            ok(b"SIP/2.0 200 OK"),
            StartLine::Response {
                code: 200,
                reason: b"OK"
            }
        );
        assert_eq!(
            ok(b"SIP/2.0 401 Unauthorized "),
            StartLine::Response {
                code: 401,
                reason: b"Unauthorized"
            }
        );
        assert_eq!(
            ok(b"SIP/2.0 100"),
            StartLine::Response {
                code: 100,
                reason: b""
            }
        );
        assert_eq!(
            ok(b"sip/2.0 603 Decline"),
            StartLine::Response {
                code: 603,
                reason: b"Decline"
            }
        );
        for bad in [
            &b"SIP/2.0 2000 OK"[..],
            b"SIP/2.0 20 OK",
            b"SIP/2.0 700 Nope",
            b"SIP/2.0 099 Nope",
            b"SIP/2.0200 OK",
            b"SIP/3.0 200 OK",
            b"SIP/2.0 abc OK",
            b"SIP/2.0",
        ] {
            assert!(parse_start_line(bad, 0).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn request_line_forms() {
        let ok = |line: &'static [u8]| parse_start_line(line, 0).unwrap();
        assert_eq!(
            ok(b"INVITE sip:0044207@pbx SIP/2.0"),
            StartLine::Request {
                method: Method::Invite,
                uri: b"sip:0044207@pbx"
            }
        );
        assert_eq!(
            ok(b"FOO-BAR tel:+1234 sip/2.0 "),
            StartLine::Request {
                method: Method::Other(b"FOO-BAR"),
                uri: b"tel:+1234"
            }
        );
        for bad in [
            &b""[..],
            b" INVITE sip:a SIP/2.0",
            b"INVITE",
            b"INVITE sip:a",
            b"INVITE sip:a SIP/1.0",
            b"INVITE sip:a SIP/2.0 extra",
            b"INVITE a@b SIP/2.0",
            b"INVITE sip: SIP/2.0",
            b"INVITE 1sip:a SIP/2.0",
            b"GET / HTTP/1.1",
            b"IN(VITE sip:a SIP/2.0",
        ] {
            assert!(parse_start_line(bad, 0).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn keep_alives() {
        let limits = Limits::default();
        for transport in [Transport::Datagram, Transport::Stream] {
            assert!(matches!(
                parse(b"\r\n\r\n", transport, &limits),
                Ok(Parsed::KeepAlive(4))
            ));
            assert!(matches!(
                parse(b"\r\n", transport, &limits),
                Ok(Parsed::KeepAlive(2))
            ));
            assert!(matches!(
                parse(b"\n", transport, &limits),
                Ok(Parsed::KeepAlive(1))
            ));
        }
        let mut buf = b"\r\n\r\n".to_vec();
        buf.extend_from_slice(REGISTER);
        assert!(matches!(
            parse(&buf, Transport::Stream, &limits),
            Ok(Parsed::KeepAlive(4))
        ));
        let (m, n) = message(&buf, Transport::Datagram);
        assert_eq!(n, buf.len());
        assert_eq!(m.raw(), REGISTER);
        assert!(matches!(
            parse(b"", Transport::Stream, &limits),
            Ok(Parsed::Incomplete)
        ));
        assert_eq!(error(b"", Transport::Datagram), ParseError::Empty);
    }

    #[test]
    fn bare_lf_line_endings() {
        let lf: Vec<u8> = REGISTER.iter().copied().filter(|&b| b != b'\r').collect();
        let (m, n) = message(&lf, Transport::Stream);
        assert_eq!(n, lf.len());
        assert_eq!(m.call_id(), Some(&b"1234@192.0.2.10"[..]));
        assert_eq!(m.header_count(), 8);
    }

    #[test]
    fn folded_header_keeps_raw_value() {
        let buf = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: I know you're there,\r\n  pick up\r\n\tthe phone\r\nContent-Length: 0\r\n\r\n";
        let (m, _) = message(buf, Transport::Stream);
        let subject = m.header(HeaderName::Subject).unwrap();
        assert_eq!(subject, b"I know you're there,\r\n  pick up\r\n\tthe phone");
        assert_eq!(
            &*super::super::unfold(subject),
            b"I know you're there, pick up the phone"
        );
        assert_eq!(m.header_count(), 2);
    }

    #[test]
    fn whitespace_around_colon_and_compact_names() {
        let buf = b"OPTIONS sip:a@b SIP/2.0\r\ni :abc\r\nl\t:\t0\r\nX-Empty:\r\n\r\n";
        let (m, _) = message(buf, Transport::Stream);
        assert_eq!(m.call_id(), Some(&b"abc"[..]));
        assert_eq!(m.header(HeaderName::ContentLength), Some(&b"0"[..]));
        assert_eq!(m.header(HeaderName::Other(b"x-empty")), Some(&b""[..]));
    }

    #[test]
    fn body_framing() {
        let head = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"helloEXTRA");
        let (m, n) = message(&buf, Transport::Datagram);
        assert_eq!(m.body, b"hello");
        assert_eq!(n, head.len() + 5);
        let (m, n) = message(&buf, Transport::Stream);
        assert_eq!((m.body, n), (&b"hello"[..], head.len() + 5));

        let short = &buf[..head.len() + 3];
        assert!(matches!(
            parse(short, Transport::Stream, &Limits::default()),
            Ok(Parsed::Incomplete)
        ));
        assert_eq!(
            error(short, Transport::Datagram),
            ParseError::TruncatedBody {
                declared: 5,
                available: 3
            }
        );

        let no_length = b"MESSAGE sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\n\r\nbody";
        let (m, n) = message(no_length, Transport::Datagram);
        assert_eq!((m.body, n), (&b"body"[..], no_length.len()));
        let (m, n) = message(no_length, Transport::Stream);
        assert_eq!((m.body, n), (&b""[..], no_length.len() - 4));
    }

    #[test]
    fn content_length_errors() {
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: abc\r\n\r\n",
            Transport::Stream,
        );
        assert_eq!(
            e.to_string(),
            "Content-Length \"abc\" is not a number (byte 41)"
        );
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\nl: 99999999999999999999999999\r\n\r\n",
            Transport::Stream,
        );
        assert!(matches!(
            e,
            ParseError::BadContentLength {
                reason: "too large",
                ..
            }
        ));
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab",
            Transport::Stream,
        );
        assert_eq!(
            e,
            ParseError::ConflictingContentLength {
                first: 1,
                second: 2
            }
        );
        let (m, _) = message(
            b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 1\r\n\r\na",
            Transport::Stream,
        );
        assert_eq!(m.body, b"a");
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 100000\r\n\r\n",
            Transport::Stream,
        );
        assert_eq!(
            e,
            ParseError::BodyTooLarge {
                length: 100_000,
                limit: 65_536
            }
        );
    }

    #[test]
    fn error_messages_name_what_and_where() {
        let e = error(b"HELLO\r\n\r\n", Transport::Datagram);
        assert_eq!(
            e.to_string(),
            "bad start line at byte 0: expected a space after the method (\"HELLO\")"
        );
        let e = error(b"\r\nHELLO\r\n\r\n", Transport::Datagram);
        assert!(
            e.to_string().starts_with("bad start line at byte 2:"),
            "{e}"
        );
        let mut buf = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for i in 0..11 {
            buf.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"no colon here\r\n\r\n");
        let e = error(&buf, Transport::Datagram);
        assert!(
            e.to_string().starts_with("header line 12 has no colon"),
            "{e}"
        );
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\n Via: x\r\n\r\n",
            Transport::Datagram,
        );
        assert!(matches!(
            e,
            ParseError::OrphanContinuation {
                line: Line(1),
                offset: 25
            }
        ));
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n",
            Transport::Datagram,
        );
        assert!(
            matches!(e, ParseError::BadHeaderName { line: Line(1), .. }),
            "{e}"
        );
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\n: x\r\n\r\n",
            Transport::Datagram,
        );
        assert!(matches!(e, ParseError::BadHeaderName { .. }), "{e}");
        let e = error(b"OPTIONS sip:a@b SIP/2.0\r\nTo: x\r\n", Transport::Datagram);
        assert!(matches!(e, ParseError::Unterminated { offset: 32 }), "{e}");
    }

    #[test]
    fn injection_bytes_are_refused() {
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\nTo: x\rVia: evil\r\n\r\n",
            Transport::Datagram,
        );
        assert_eq!(
            e,
            ParseError::BareCr {
                line: Line(1),
                offset: 30
            }
        );
        assert_eq!(
            e.to_string(),
            "CR not followed by LF in header line 1 at byte 30"
        );
        let e = error(
            b"OPTIONS sip:a@b SIP/2.0\r\nTo: x\0y\r\n\r\n",
            Transport::Datagram,
        );
        assert_eq!(
            e,
            ParseError::ControlChar {
                byte: 0,
                line: Line(1),
                offset: 30
            }
        );
        let e = error(b"OPTIONS sip:a@b\0 SIP/2.0\r\n\r\n", Transport::Datagram);
        assert_eq!(
            e.to_string(),
            "control character 0x00 in the start line at byte 15"
        );
        let e = error(b"OPTIONS sip:a@b SIP/2.0\r\n\rX", Transport::Datagram);
        assert!(matches!(e, ParseError::BareCr { .. }), "{e}");
    }

    #[test]
    fn limits_are_enforced_and_named() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let buf = b"OPTIONS sip:a@b SIP/2.0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        let e = parse(buf, Transport::Datagram, &limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            "too many header lines (limit 3, max_headers)"
        );
        let exact = b"OPTIONS sip:a@b SIP/2.0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(matches!(
            parse(exact, Transport::Datagram, &limits),
            Ok(Parsed::Message(..))
        ));

        let limits = Limits {
            max_header_bytes: 30,
            ..Limits::default()
        };
        let e = parse(REGISTER, Transport::Stream, &limits).unwrap_err();
        assert_eq!(e, ParseError::HeaderSectionTooLarge { limit: 30 });
        let limits = Limits {
            max_header_bytes: REGISTER.len(),
            ..Limits::default()
        };
        assert!(matches!(
            parse(REGISTER, Transport::Stream, &limits),
            Ok(Parsed::Message(..))
        ));
        let limits = Limits {
            max_header_bytes: REGISTER.len() - 1,
            ..Limits::default()
        };
        assert!(parse(REGISTER, Transport::Stream, &limits).is_err());
    }

    #[test]
    fn stream_prefixes_wait_and_garbage_fails_early() {
        let limits = Limits::default();
        for cut in 0..REGISTER.len() {
            assert!(
                matches!(
                    parse(&REGISTER[..cut], Transport::Stream, &limits),
                    Ok(Parsed::Incomplete)
                ),
                "cut at {cut}"
            );
        }
        assert!(parse(b"\x16\x03\x01\x02\x00\x01", Transport::Stream, &limits).is_err());
        assert!(parse(b"GET /index.html HTTP/1.1\r\n", Transport::Stream, &limits).is_err());
        assert!(parse(b"\x80\xff binary", Transport::Stream, &limits).is_err());
        assert!(matches!(
            parse(b"SI", Transport::Stream, &limits),
            Ok(Parsed::Incomplete)
        ));
    }

    #[test]
    fn cseq_and_expires_edge_cases() {
        let msg = |headers: &str| {
            let text = format!("SIP/2.0 200 OK\r\n{headers}\r\n\r\n");
            text.into_bytes()
        };
        let buf = msg("CSeq:  7\t INVITE ");
        assert_eq!(
            message(&buf, Transport::Stream).0.cseq(),
            Some((7, Method::Invite))
        );
        for bad in [
            "CSeq: INVITE",
            "CSeq: 7",
            "CSeq: x INVITE",
            "CSeq: 7 IN(VITE",
        ] {
            let buf = msg(bad);
            assert_eq!(message(&buf, Transport::Stream).0.cseq(), None, "{bad}");
        }
        let buf = msg("Expires: soon");
        assert_eq!(message(&buf, Transport::Stream).0.expires(), None);
    }

    #[test]
    fn contacts_star_and_lists() {
        let buf =
            b"REGISTER sip:pbx SIP/2.0\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n";
        let (m, _) = message(buf, Transport::Datagram);
        let contacts: Vec<_> = m.contacts().collect();
        assert_eq!(contacts.len(), 1);
        assert!(contacts[0].is_star);
        assert_eq!(m.expires(), Some(0));

        let buf = b"SIP/2.0 200 OK\r\nm: <sip:a@1.1.1.1>;expires=60, \"B, b\" <sip:b@2.2.2.2;expires=9>\r\nContact: sip:c@3.3.3.3;expires=30\r\n\r\n";
        let (m, _) = message(buf, Transport::Datagram);
        let contacts: Vec<_> = m
            .contacts()
            .map(|c| (c.uri, c.expires, c.is_star))
            .collect();
        assert_eq!(
            contacts,
            vec![
                (&b"sip:a@1.1.1.1"[..], Some(60), false),
                (&b"sip:b@2.2.2.2;expires=9"[..], None, false),
                (&b"sip:c@3.3.3.3"[..], Some(30), false),
            ]
        );
    }

    #[test]
    fn headers_iterates_every_line_in_order() {
        let buf = b"SIP/2.0 200 OK\r\nVia: a\r\nTo: x\r\nv: b, c\r\nVIA: d\r\n\r\n";
        let (m, _) = message(buf, Transport::Datagram);
        let vias: Vec<_> = m.headers(HeaderName::Via).collect();
        assert_eq!(vias, vec![&b"a"[..], b"b, c", b"d"]);
        assert_eq!(m.via_count_at_most(100), 4);
        assert_eq!(m.via_count_at_most(2), 2);
        assert_eq!(m.top_via(), Some(&b"a"[..]));
        let names: Vec<_> = m.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            vec![
                HeaderName::Via,
                HeaderName::To,
                HeaderName::Via,
                HeaderName::Via
            ]
        );
    }

    #[test]
    fn more_than_inline_headers_spill() {
        let mut buf = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for i in 0..100 {
            buf.extend_from_slice(format!("Via: SIP/2.0/UDP h{i}\r\n").as_bytes());
        }
        buf.extend_from_slice(b"Call-ID: last\r\n\r\n");
        let (m, _) = message(&buf, Transport::Datagram);
        assert_eq!(m.header_count(), 101);
        assert_eq!(m.via_count_at_most(1000), 100);
        assert_eq!(m.call_id(), Some(&b"last"[..]));
    }
}
