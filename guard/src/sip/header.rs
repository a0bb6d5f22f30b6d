//! Header names and the per-message header index.
//!
//! The parser records every header line as a pair of spans into the message bytes.
//! Nothing is copied; the spans are resolved back to borrowed slices on lookup. The
//! index keeps the first [`INLINE_HEADERS`] entries in a fixed array inside the
//! [`Message`](super::Message), so a typical message (10 to 20 headers) is parsed
//! without a heap allocation. Only a message with more headers spills into a `Vec`.

use std::borrow::Cow;

/// Declares the header names we know, with their canonical spelling and their
/// RFC 3261 / RFC 3515 / RFC 4028 / RFC 8224 compact forms. One list keeps the
/// enum, the name table and the compact-form table from drifting apart.
macro_rules! known_headers {
    ($( $(#[$doc:meta])* $variant:ident = $canonical:literal $(, compact $compact:literal)? ;)+) => {
        /// A header field name. Names are case-insensitive and the compact forms
        /// (`v`, `i`, `m`, ...) resolve to the same variant as the long form, so
        /// `Message::header(HeaderName::CallId)` finds `i: abc` as well as
        /// `CALL-ID: abc`. Any other name is kept as [`HeaderName::Other`] with its
        /// bytes as received.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum HeaderName<'a> {
            $( $(#[$doc])* $variant, )+
            /// A header we have no variant for, as received (compare it
            /// case-insensitively).
            Other(&'a [u8]),
        }

        /// The known names in declaration order; the index of a name in this table
        /// is the id stored in the header index.
        const KNOWN: &[HeaderName<'static>] = &[ $( HeaderName::$variant, )+ ];

        /// The canonical spellings, in the same order as [`KNOWN`].
        const SPELLINGS: &[&[u8]] = &[ $( $canonical.as_bytes(), )+ ];

        impl HeaderName<'_> {
            /// The canonical spelling, e.g. `"Call-ID"`; `Other` gives its own bytes.
            pub fn as_bytes(&self) -> &[u8] {
                match self {
                    $( HeaderName::$variant => $canonical.as_bytes(), )+
                    HeaderName::Other(name) => name,
                }
            }

            /// The position in [`KNOWN`], `None` for `Other`.
            fn known_id(&self) -> Option<u8> {
                let mut id = 0u8;
                $(
                    if matches!(self, HeaderName::$variant) {
                        return Some(id);
                    }
                    id += 1;
                )+
                let _ = id;
                None
            }
        }

        /// Resolves a one-letter compact form (RFC 3261 §7.3.3 and later RFCs).
        fn compact(letter: u8) -> Option<HeaderName<'static>> {
            match letter.to_ascii_lowercase() {
                $( $( $compact => Some(HeaderName::$variant), )? )+
                _ => None,
            }
        }
    };
}

known_headers! {
    Via = "Via", compact b'v';
    From = "From", compact b'f';
    To = "To", compact b't';
    CallId = "Call-ID", compact b'i';
    CSeq = "CSeq";
    Contact = "Contact", compact b'm';
    Expires = "Expires";
    UserAgent = "User-Agent";
    Server = "Server";
    Authorization = "Authorization";
    ProxyAuthorization = "Proxy-Authorization";
    WwwAuthenticate = "WWW-Authenticate";
    ProxyAuthenticate = "Proxy-Authenticate";
    ContentLength = "Content-Length", compact b'l';
    ContentType = "Content-Type", compact b'c';
    ContentEncoding = "Content-Encoding", compact b'e';
    MaxForwards = "Max-Forwards";
    Event = "Event", compact b'o';
    AllowEvents = "Allow-Events", compact b'u';
    Subject = "Subject", compact b's';
    Supported = "Supported", compact b'k';
    ReferTo = "Refer-To", compact b'r';
    ReferredBy = "Referred-By", compact b'b';
    SessionExpires = "Session-Expires", compact b'x';
    Identity = "Identity", compact b'y';
    Route = "Route";
    RecordRoute = "Record-Route";
    Allow = "Allow";
}

/// The id stored for a name that is not in [`KNOWN`].
const OTHER_ID: u8 = u8::MAX;

/// Known names per length: at most this many share a length.
const PER_LENGTH: usize = 4;
const NO_CANDIDATES: [u8; PER_LENGTH] = [OTHER_ID; PER_LENGTH];

/// For each name length, the ids of the known names of that length, padded with
/// [`OTHER_ID`]. Built at compile time; the build fails if a length has more than
/// [`PER_LENGTH`] names.
const BY_LENGTH: [[u8; PER_LENGTH]; 20] = {
    let mut table = [NO_CANDIDATES; 20];
    let mut id = 0;
    while id < SPELLINGS.len() {
        let bucket = &mut table[SPELLINGS[id].len()];
        let mut slot = 0;
        while bucket[slot] != OTHER_ID {
            slot += 1;
        }
        bucket[slot] = id as u8;
        id += 1;
    }
    table
};

impl<'a> HeaderName<'a> {
    /// Resolves a header name as received: case-insensitive, compact forms
    /// included. Unknown names become `Other(name)`.
    pub fn from_bytes(name: &'a [u8]) -> HeaderName<'a> {
        if name.len() == 1 {
            return compact(name[0]).unwrap_or(HeaderName::Other(name));
        }
        // Every header line goes through here: only the (at most four) known
        // names of the same length are compared.
        let candidates = BY_LENGTH.get(name.len()).unwrap_or(&NO_CANDIDATES);
        candidates
            .iter()
            .take_while(|&&id| id != OTHER_ID)
            .filter_map(|&id| {
                Some((
                    *SPELLINGS.get(usize::from(id))?,
                    *KNOWN.get(usize::from(id))?,
                ))
            })
            .find(|(spelling, _)| spelling.eq_ignore_ascii_case(name))
            .map_or(HeaderName::Other(name), |(_, known)| known)
    }

    /// `Other(b"call-id")` names the same header as `CallId`: callers may build
    /// names from configuration text, so lookups canonicalise first.
    fn canonical(self) -> HeaderName<'a> {
        match self {
            HeaderName::Other(name) => HeaderName::from_bytes(name),
            known => known,
        }
    }

    fn id(&self) -> u8 {
        self.known_id().unwrap_or(OTHER_ID)
    }
}

/// A byte range inside the message. `u32` keeps the index entry at 20 bytes;
/// the parser caps the header section well below 4 GiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// `None` if the range does not fit in `u32` (the caller reports a limit).
    pub(crate) fn new(start: usize, end: usize) -> Option<Span> {
        Some(Span {
            start: u32::try_from(start).ok()?,
            len: u32::try_from(end.checked_sub(start)?).ok()?,
        })
    }

    /// The bytes of this span; empty if it is out of range (which would be a
    /// parser bug, never a panic).
    pub(crate) fn of<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        let end = start.saturating_add(self.len as usize);
        raw.get(start..end).unwrap_or_default()
    }
}

/// One header line: which name (an id into [`KNOWN`], or [`OTHER_ID`]), the name
/// as written and the trimmed value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Entry {
    id: u8,
    name: Span,
    value: Span,
}

/// How many header lines are stored without touching the heap.
pub const INLINE_HEADERS: usize = 32;

/// The header lines of one message, in order.
#[derive(Debug, Clone)]
pub(crate) struct HeaderIndex {
    inline: [Entry; INLINE_HEADERS],
    len: usize,
    spill: Vec<Entry>,
}

impl HeaderIndex {
    pub(crate) fn new() -> HeaderIndex {
        HeaderIndex {
            inline: [Entry::default(); INLINE_HEADERS],
            len: 0,
            spill: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len + self.spill.len()
    }

    pub(crate) fn push(&mut self, name: &HeaderName<'_>, name_span: Span, value: Span) {
        let entry = Entry {
            id: name.id(),
            name: name_span,
            value,
        };
        if self.len < INLINE_HEADERS {
            self.inline[self.len] = entry;
            self.len += 1;
        } else {
            self.spill.push(entry);
        }
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.inline[..self.len].iter().chain(self.spill.iter())
    }

    /// All header lines as `(name, value)`, in message order.
    pub(crate) fn iter<'s, 'a: 's>(
        &'s self,
        raw: &'a [u8],
    ) -> impl Iterator<Item = (HeaderName<'a>, &'a [u8])> + 's {
        self.entries().map(move |entry| {
            let name = match KNOWN.get(entry.id as usize) {
                Some(known) => *known,
                None => HeaderName::Other(entry.name.of(raw)),
            };
            (name, entry.value.of(raw))
        })
    }

    /// The values of every line named `name`, in message order.
    pub(crate) fn values<'s, 'a: 's, 'n: 's>(
        &'s self,
        raw: &'a [u8],
        name: HeaderName<'n>,
    ) -> impl Iterator<Item = &'a [u8]> + 's {
        let name = name.canonical();
        let id = name.id();
        self.entries()
            .filter(move |entry| {
                entry.id == id
                    && (id != OTHER_ID || entry.name.of(raw).eq_ignore_ascii_case(name.as_bytes()))
            })
            .map(move |entry| entry.value.of(raw))
    }
}

/// Linear whitespace inside a header value: SP and HT, plus the CR and LF that a
/// folded value keeps. Treating them alike lets every helper read folded values
/// without unfolding them first.
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims linear whitespace (including folding line breaks) from both ends.
pub fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !is_lws(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_lws(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// The value with header folding undone: every line break with the whitespace
/// around it becomes one SP (RFC 3261 §7.3.1 says they are equivalent). Borrowed
/// when the value was not folded, which is almost always, so callers pay for a copy
/// only when a sender actually folded.
pub fn unfold(value: &[u8]) -> Cow<'_, [u8]> {
    if !value.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'\r' || b == b'\n' {
            while out
                .last()
                .is_some_and(|&last| last == b' ' || last == b'\t')
            {
                out.pop();
            }
            while i < value.len() && is_lws(value[i]) {
                i += 1;
            }
            out.push(b' ');
        } else {
            out.push(b);
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_compact_names_resolve_to_the_same_variant() {
        assert_eq!(HeaderName::from_bytes(b"Call-ID"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"I"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"m"), HeaderName::Contact);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"e"), HeaderName::ContentEncoding);
        assert_eq!(HeaderName::from_bytes(b"c"), HeaderName::ContentType);
        assert_eq!(HeaderName::from_bytes(b"f"), HeaderName::From);
        assert_eq!(HeaderName::from_bytes(b"t"), HeaderName::To);
        assert_eq!(HeaderName::from_bytes(b"s"), HeaderName::Subject);
        assert_eq!(HeaderName::from_bytes(b"k"), HeaderName::Supported);
        assert_eq!(HeaderName::from_bytes(b"o"), HeaderName::Event);
        assert_eq!(HeaderName::from_bytes(b"u"), HeaderName::AllowEvents);
        assert_eq!(HeaderName::from_bytes(b"r"), HeaderName::ReferTo);
        assert_eq!(HeaderName::from_bytes(b"b"), HeaderName::ReferredBy);
        assert_eq!(HeaderName::from_bytes(b"x"), HeaderName::SessionExpires);
        assert_eq!(HeaderName::from_bytes(b"y"), HeaderName::Identity);
        assert_eq!(
            HeaderName::from_bytes(b"WWW-AUTHENTICATE"),
            HeaderName::WwwAuthenticate
        );
        assert_eq!(HeaderName::from_bytes(b"z"), HeaderName::Other(b"z"));
        assert_eq!(
            HeaderName::from_bytes(b"X-Custom"),
            HeaderName::Other(b"X-Custom")
        );
    }

    #[test]
    fn every_known_name_round_trips_through_its_canonical_spelling() {
        for known in KNOWN {
            assert_eq!(HeaderName::from_bytes(known.as_bytes()), *known);
            assert_eq!(
                known.id() as usize,
                KNOWN.iter().position(|k| k == known).unwrap()
            );
        }
    }

    #[test]
    fn index_spills_past_the_inline_capacity_and_keeps_order() {
        let raw = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";
        let mut index = HeaderIndex::new();
        for i in 0..40 {
            let name = HeaderName::Other(&raw[i..=i]);
            index.push(
                &name,
                Span::new(i, i + 1).unwrap(),
                Span::new(i, i + 2).unwrap(),
            );
        }
        assert_eq!(index.len(), 40);
        let values: Vec<&[u8]> = index.iter(raw).map(|(_, v)| v).collect();
        assert_eq!(values[0], b"ab");
        assert_eq!(values[39], b"DE");
        assert_eq!(index.values(raw, HeaderName::Other(b"0")).count(), 1);
        // Other names compare case-insensitively: "d" and "D".
        assert_eq!(index.values(raw, HeaderName::Other(b"D")).count(), 2);
    }

    #[test]
    fn other_names_match_case_insensitively_and_canonicalise() {
        let raw = b"X-Foo: 1\r\nCall-ID: abc";
        let mut index = HeaderIndex::new();
        index.push(
            &HeaderName::from_bytes(&raw[0..5]),
            Span::new(0, 5).unwrap(),
            Span::new(7, 8).unwrap(),
        );
        index.push(
            &HeaderName::from_bytes(&raw[10..17]),
            Span::new(10, 17).unwrap(),
            Span::new(19, 22).unwrap(),
        );
        assert_eq!(
            index.values(raw, HeaderName::Other(b"x-foo")).next(),
            Some(&b"1"[..])
        );
        assert_eq!(
            index.values(raw, HeaderName::Other(b"CALL-ID")).next(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            index.values(raw, HeaderName::Other(b"i")).next(),
            Some(&b"abc"[..])
        );
        assert_eq!(index.values(raw, HeaderName::CallId).count(), 1);
    }

    #[test]
    fn trim_strips_spaces_tabs_and_folding() {
        assert_eq!(trim(b"  a b \t"), b"a b");
        assert_eq!(trim(b"\r\n a"), b"a");
        assert_eq!(trim(b" \t "), b"");
        assert_eq!(trim(b""), b"");
    }

    #[test]
    fn unfold_borrows_unless_folded() {
        assert!(matches!(unfold(b"a, b"), Cow::Borrowed(_)));
        assert_eq!(&*unfold(b"a,\r\n  b"), b"a, b");
        assert_eq!(&*unfold(b"a, \t\r\n\tb\n c"), b"a, b c");
    }

    #[test]
    fn span_out_of_range_is_empty_not_a_panic() {
        assert_eq!(Span::new(5, 10).unwrap().of(b"abc"), b"");
        assert!(Span::new(10, 5).is_none());
    }
}
