//! Helpers that pick things out of header values: the user of a URI, `;name=value`
//! parameters, digest `name="value"` parameters and comma-separated lists.
//!
//! They all borrow from the value they are given and never allocate, and each one
//! walks its input once from the left: a hostile value (a Via with 10,000 entries,
//! an unterminated quote) costs time in proportion to its length and no more.
//! Every scanner knows about quoted strings (with `\` escapes) and `<...>`, because
//! a display name like `"Smith, John"` or a URI parameter inside `<sip:a;x=1>` must
//! not be taken for a list separator or a header parameter.

use super::header::{is_lws, trim};

/// Finds the first byte at or after `from` for which `is_delim` holds, skipping
/// quoted strings and, when `angle` is set, `<...>` sections.
fn find_top(
    value: &[u8],
    from: usize,
    angle: bool,
    is_delim: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut quoted = false;
    let mut in_angle = false;
    let mut i = from;
    while i < value.len() {
        let b = value[i];
        if quoted {
            match b {
                b'\\' => i += 1,
                b'"' => quoted = false,
                _ => {}
            }
        } else if in_angle {
            in_angle = b != b'>';
        } else if b == b'"' {
            quoted = true;
        } else if angle && b == b'<' {
            in_angle = true;
        } else if is_delim(b) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Splits a comma-separated header value (Via, Contact, Route, ...) into its
/// elements, trimmed, skipping empty ones. Commas inside quotes or `<...>` do not
/// split. The iterator is lazy and linear, so asking for the first element of a
/// 10,000-entry Via costs one element's worth of scanning.
pub fn split_list(value: &[u8]) -> SplitList<'_> {
    SplitList { rest: value }
}

/// The iterator returned by [`split_list`].
#[derive(Debug, Clone)]
pub struct SplitList<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SplitList<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (element, rest) = match find_top(self.rest, 0, true, |b| b == b',') {
                Some(comma) => (&self.rest[..comma], &self.rest[comma + 1..]),
                None => (self.rest, &b""[..]),
            };
            self.rest = rest;
            let element = trim(element);
            if !element.is_empty() {
                return Some(element);
            }
        }
        None
    }
}

/// The URI of a name-addr or addr-spec header value (From, To, Contact, one
/// element of a list): what is inside `<...>` if there is one, otherwise the value
/// up to its first `;` (RFC 3261 §20.10: without brackets, parameters belong to
/// the header, not the URI).
pub fn addr_uri(value: &[u8]) -> &[u8] {
    let value = trim(value);
    if let Some(open) = find_top(value, 0, false, |b| b == b'<') {
        let inner = &value[open + 1..];
        let close = inner.iter().position(|&b| b == b'>').unwrap_or(inner.len());
        return trim(&inner[..close]);
    }
    match find_top(value, 0, false, |b| b == b';') {
        Some(semi) => trim(&value[..semi]),
        None => value,
    }
}

/// The user part of a URI, or of a header value holding one (`"Name" <sip:..>;tag=`):
/// `300` for `sip:300@pbx`, `sip:300:secret@pbx`, `sips:300@[2001:db8::1]`,
/// `<tel:300;phone-context=x>`. Schemes other than sip, sips and tel give `None`, as
/// does a URI without a user (`sip:pbx.example.com`).
///
/// The password (`:secret`) and user parameters (`;npdi`, `;phone-context=`) are
/// cut off, as Asterisk does when it identifies an endpoint, so that `300;x` and
/// `300` count as the same user and a scanner cannot dodge a per-user counter by
/// varying the parameters. Escapes (`%33`) are returned as written.
pub fn uri_user(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let uri = match find_top(value, 0, false, |b| b == b'<') {
        Some(open) => {
            let inner = &value[open + 1..];
            &inner[..inner.iter().position(|&b| b == b'>').unwrap_or(inner.len())]
        }
        None => value,
    };
    let uri = trim(uri);
    let colon = uri.iter().position(|&b| b == b':')?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    let user = if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
        // '@' cannot appear unescaped after the host, except in `?headers`.
        let before_headers = &rest[..rest.iter().position(|&b| b == b'?').unwrap_or(rest.len())];
        let at = before_headers.iter().position(|&b| b == b'@')?;
        &rest[..at]
    } else if scheme.eq_ignore_ascii_case(b"tel") {
        rest
    } else {
        return None;
    };
    let end = user
        .iter()
        .position(|&b| b == b':' || b == b';')
        .unwrap_or(user.len());
    let user = trim(&user[..end]);
    (!user.is_empty()).then_some(user)
}

/// Splits `name=value` (either side trimmed) or a bare `name` (value `""`).
fn name_value(piece: &[u8]) -> (&[u8], &[u8]) {
    match piece.iter().position(|&b| b == b'=') {
        Some(eq) => (trim(&piece[..eq]), trim(&piece[eq + 1..])),
        None => (trim(piece), &b""[..]),
    }
}

/// The contents of a quoted string without its quotes (escapes left as written),
/// or the value itself if it is not quoted. An unterminated quote runs to the end.
fn unquote(value: &[u8]) -> &[u8] {
    if value.first() != Some(&b'"') {
        return value;
    }
    let inner = &value[1..];
    let mut i = 0;
    while i < inner.len() {
        match inner[i] {
            b'\\' => i += 2,
            b'"' => return &inner[..i],
            _ => i += 1,
        }
    }
    inner
}

/// A `;name=value` parameter of a header value (`;tag=`, `;branch=`, `;expires=`,
/// `;received=`), with the name compared case-insensitively and a quoted value
/// returned without its quotes. A parameter without `=` (`;rport`, `;lr`) gives
/// `Some(b"")`.
///
/// Only the first list element is searched, and never the inside of `<...>`:
/// in `<sip:a@b;expires=5>;expires=60` the header parameter is 60. Split a list
/// with [`split_list`] to see the other elements.
pub fn param<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let end = find_top(value, 0, true, |b| b == b',').unwrap_or(value.len());
    let element = &value[..end];
    let mut pos = find_top(element, 0, true, |b| b == b';')? + 1;
    loop {
        let next = find_top(element, pos, true, |b| b == b';');
        let piece = &element[pos..next.unwrap_or(element.len())];
        let (key, val) = name_value(piece);
        if key.eq_ignore_ascii_case(name) {
            return Some(unquote(val));
        }
        pos = next? + 1;
    }
}

/// A parameter of a digest challenge or credentials value
/// (`Digest username="300", realm="pbx", nonce="..", qop=auth`), name compared
/// case-insensitively, quoted values returned without their quotes. The scheme
/// (`Digest`) is skipped; a value holding several challenges is searched
/// throughout.
pub fn auth_param<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut pos = 0;
    loop {
        let next = find_top(value, pos, false, |b| b == b',');
        let piece = &value[pos..next.unwrap_or(value.len())];
        if let Some(eq) = piece.iter().position(|&b| b == b'=') {
            // The key is the last word before '=': "Digest username" -> "username".
            let key = trim(&piece[..eq]);
            let key = &key[key.iter().rposition(|&b| is_lws(b)).map_or(0, |i| i + 1)..];
            if key.eq_ignore_ascii_case(name) {
                return Some(unquote(trim(&piece[eq + 1..])));
            }
        }
        pos = next? + 1;
    }
}

/// A decimal number as SIP writes delta-seconds and expires values: digits only
/// (after trimming), at least one. Values past `u32::MAX` saturate, since RFC 3261
/// §20.19 says an over-large expiry means "as long as you like", not an error.
pub fn parse_u32(digits: &[u8]) -> Option<u32> {
    let digits = trim(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u32, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(value: &[u8]) -> Vec<&[u8]> {
        split_list(value).collect()
    }

    #[test]
    fn uri_user_forms() {
        assert_eq!(uri_user(b"sip:300@pbx.example.com"), Some(&b"300"[..]));
        assert_eq!(uri_user(b"sip:300:secret@pbx"), Some(&b"300"[..]));
        assert_eq!(
            uri_user(b"sips:alice@example.com:5061"),
            Some(&b"alice"[..])
        );
        assert_eq!(uri_user(b"SIP:Bob@host"), Some(&b"Bob"[..]));
        assert_eq!(uri_user(b"tel:+441234567"), Some(&b"+441234567"[..]));
        assert_eq!(
            uri_user(b"<tel:+1-201-555;phone-context=x>;tag=1"),
            Some(&b"+1-201-555"[..])
        );
        assert_eq!(uri_user(b"<sip:300@10.0.0.1>;tag=as12"), Some(&b"300"[..]));
        assert_eq!(
            uri_user(b"\"Display, Name\" <sip:301@pbx;transport=tcp>;tag=x"),
            Some(&b"301"[..])
        );
        assert_eq!(uri_user(b"\"a@b <x>\" <sip:302@pbx>"), Some(&b"302"[..]));
        assert_eq!(uri_user(b"Alice <sip:alice@pbx>"), Some(&b"alice"[..]));
        assert_eq!(uri_user(b"sip:300@[2001:db8::1]:5060"), Some(&b"300"[..]));
        assert_eq!(
            uri_user(b"sip:+4930123;npdi@gw;user=phone"),
            Some(&b"+4930123"[..])
        );
        assert_eq!(uri_user(b"sip:300@pbx;tag=abc"), Some(&b"300"[..]));
        assert_eq!(uri_user(b"sip:pbx.example.com"), None);
        assert_eq!(uri_user(b"sip:[2001:db8::1]"), None);
        assert_eq!(uri_user(b"sip:pbx?subject=a@b"), None);
        assert_eq!(uri_user(b"sip:@pbx"), None);
        assert_eq!(uri_user(b"mailto:a@b"), None);
        assert_eq!(uri_user(b"300@pbx"), None);
        assert_eq!(uri_user(b""), None);
        assert_eq!(uri_user(b"<"), None);
        assert_eq!(uri_user(b"\"unterminated <sip:a@b>"), None);
    }

    #[test]
    fn addr_uri_forms() {
        assert_eq!(
            addr_uri(b"<sip:a@b;transport=tcp>;expires=60"),
            b"sip:a@b;transport=tcp"
        );
        assert_eq!(addr_uri(b"sip:a@b;expires=60"), b"sip:a@b");
        assert_eq!(addr_uri(b" \"x;y\" <sip:a@b> "), b"sip:a@b");
        assert_eq!(addr_uri(b"<sip:a@b"), b"sip:a@b");
        assert_eq!(addr_uri(b"*"), b"*");
    }

    #[test]
    fn param_forms() {
        let via = b"SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776;rport;Received=1.2.3.4";
        assert_eq!(param(via, b"branch"), Some(&b"z9hG4bK776"[..]));
        assert_eq!(param(via, b"rport"), Some(&b""[..]));
        assert_eq!(param(via, b"received"), Some(&b"1.2.3.4"[..]));
        assert_eq!(param(via, b"maddr"), None);
        assert_eq!(
            param(b"<sip:a@b;expires=5>;expires=60", b"expires"),
            Some(&b"60"[..])
        );
        assert_eq!(param(b"<sip:a@b;expires=5>", b"expires"), None);
        assert_eq!(
            param(b"\"a;tag=no\" <sip:a@b>;tag=yes", b"tag"),
            Some(&b"yes"[..])
        );
        assert_eq!(
            param(
                b"<sip:a@b>;+sip.instance=\"<urn:uuid:1;2>\";q=0.5",
                b"+sip.instance"
            ),
            Some(&b"<urn:uuid:1;2>"[..])
        );
        assert_eq!(param(b"<sip:a@b>;q=0.5", b"Q"), Some(&b"0.5"[..]));
        assert_eq!(
            param(b"<sip:a@b> ; expires = 30 ", b"expires"),
            Some(&b"30"[..])
        );
        assert_eq!(param(b"<sip:a>;x=1, <sip:b>;y=2", b"y"), None);
        assert_eq!(param(b"no params", b"x"), None);
        assert_eq!(param(b"", b"x"), None);
        assert_eq!(param(b";", b""), Some(&b""[..]));
    }

    #[test]
    fn auth_param_forms() {
        let auth = b"Digest username=\"300\", realm=\"asterisk\", nonce=\"1a,2b\", \
                     uri=\"sip:pbx\", response=\"abc\", algorithm=MD5, qop=auth, nc=00000001";
        assert_eq!(auth_param(auth, b"username"), Some(&b"300"[..]));
        assert_eq!(auth_param(auth, b"REALM"), Some(&b"asterisk"[..]));
        assert_eq!(auth_param(auth, b"nonce"), Some(&b"1a,2b"[..]));
        assert_eq!(auth_param(auth, b"algorithm"), Some(&b"MD5"[..]));
        assert_eq!(auth_param(auth, b"nc"), Some(&b"00000001"[..]));
        assert_eq!(auth_param(auth, b"cnonce"), None);
        assert_eq!(auth_param(b"username=\"a\"", b"username"), Some(&b"a"[..]));
        assert_eq!(
            auth_param(
                b"Digest realm=\"a\", nonce=\"b\", Digest realm=\"c\", stale=TRUE",
                b"stale"
            ),
            Some(&b"TRUE"[..])
        );
        assert_eq!(
            auth_param(b"Digest username=\"unterminated", b"username"),
            Some(&b"unterminated"[..])
        );
        assert_eq!(auth_param(b"Digest", b"username"), None);
        assert_eq!(auth_param(b"", b"username"), None);
    }

    #[test]
    fn split_list_respects_quotes_and_brackets() {
        assert_eq!(list(b"a, b ,c"), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(
            list(b"\"Smith, J\" <sip:a@b>;q=1, <sip:c@d;x=1,2>"),
            vec![&b"\"Smith, J\" <sip:a@b>;q=1"[..], b"<sip:c@d;x=1,2>"]
        );
        assert_eq!(list(b",, a,,"), vec![&b"a"[..]]);
        assert_eq!(list(b"\"a\\\", b\", c"), vec![&b"\"a\\\", b\""[..], b"c"]);
        assert_eq!(list(b"a,\r\n b"), vec![&b"a"[..], b"b"]);
        assert!(list(b"").is_empty());
        assert!(list(b" , ,").is_empty());
    }

    #[test]
    fn split_list_is_lazy_on_a_huge_via() {
        let via = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1,".repeat(100_000);
        let start = std::time::Instant::now();
        assert_eq!(split_list(via.as_bytes()).take(3).count(), 3);
        assert_eq!(split_list(via.as_bytes()).count(), 100_000);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn parse_u32_forms() {
        assert_eq!(parse_u32(b"3600"), Some(3600));
        assert_eq!(parse_u32(b" 0 "), Some(0));
        assert_eq!(parse_u32(b"99999999999999"), Some(u32::MAX));
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b"12a"), None);
    }
}
