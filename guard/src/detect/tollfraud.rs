//! Toll fraud: someone who is not one of the PBX's phones or trunks trying to
//! place calls to costly numbers (abroad, premium rate) through it.
//!
//! The proof is in the INVITE itself. A fraudster sends INVITEs without
//! credentials, hoping the PBX routes anonymous calls, or with guessed ones;
//! either way the number dialled (the Request-URI user, never the To header,
//! which the caller writes as it likes) gives the intent away. So an INVITE
//! without credentials to a fraud prefix bans at once, before the PBX has
//! answered, and an INVITE whose credentials the PBX refused bans at that
//! refusal.
//!
//! A phone's first INVITE carries no credentials either: the PBX challenges it
//! (401/407) and the phone repeats it with them. That is why a call to an
//! ordinary number (an extension) is never proof by itself; only many
//! distinct destinations tried without credentials, or refused, in a short
//! while is (a sweep over dial plans: `972…`, `00972…`, `9011972…`). A
//! destination the caller follows up with credentials is the normal two-step
//! call and leaves the count.
//!
//! The judge never runs this detector for known-good sources (live
//! registrations), trunks or exempt addresses.

use super::{short, Distinct, Finding, Reason};
use palisade_model::responsive::{PrefixKind, TollFraud as Settings, MAX_SWEEP_DESTINATIONS};
use std::time::Instant;

/// Digits a number needs after its fraud prefix to be a real one: the
/// shortest international numbers have 7 digits with their country code,
/// premium numbers more. Shorter dial strings are extensions or feature codes
/// (`9000`, voicemail, is not "9, then 00, then 0").
const MIN_SUBSCRIBER_DIGITS: usize = 6;
/// Longest destination remembered, after normalising: memory is per source.
const MAX_NUMBER: usize = 32;

/// The fraud prefixes, compiled for matching.
#[derive(Debug, Clone)]
pub struct Prefixes {
    /// Longest first, so the verdict names `011` rather than a shorter prefix
    /// it also starts with.
    prefixes: Vec<(String, PrefixKind)>,
    tech: Vec<String>,
}

/// A destination that starts with a fraud prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    pub prefix: &'a str,
    pub kind: PrefixKind,
    /// What was dialled before the prefix (`9`, `*9`); empty when nothing was.
    pub tech: &'a str,
}

impl Match<'_> {
    /// `international prefix 011 after tech prefix 9`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} prefix {}", self.kind.as_str(), self.prefix);
        if !self.tech.is_empty() {
            s.push_str(&format!(" after tech prefix {}", self.tech));
        }
        s
    }
}

impl Prefixes {
    pub fn new(cfg: &Settings) -> Prefixes {
        let mut prefixes = cfg.all_prefixes();
        prefixes.retain(|(p, _)| !p.is_empty());
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut tech: Vec<String> = cfg
            .tech_prefixes
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect();
        tech.sort_by_key(|t| std::cmp::Reverse(t.len()));
        Prefixes { prefixes, tech }
    }

    /// The fraud prefix `number` (normalised, see [`normalize`]) dials, if any:
    /// at its start, after leading `*`/`#` (no number starts with them; tools
    /// use them as tech prefixes), or after one tech prefix.
    pub fn find<'a>(&'a self, number: &'a str) -> Option<Match<'a>> {
        let body = number.trim_start_matches(['*', '#']);
        let skipped = number.len() - body.len();
        let mut leads = vec![0, skipped];
        leads.extend(
            self.tech
                .iter()
                .filter(|t| body.starts_with(t.as_str()))
                .map(|t| skipped + t.len()),
        );
        leads.dedup();
        leads.into_iter().find_map(|lead| {
            let rest = &number[lead..];
            self.prefixes.iter().find_map(|(prefix, kind)| {
                let subscriber = rest.strip_prefix(prefix.as_str())?;
                (subscriber.bytes().filter(u8::is_ascii_digit).count() >= MIN_SUBSCRIBER_DIGITS)
                    .then_some(Match {
                        prefix,
                        kind: *kind,
                        tech: &number[..lead],
                    })
            })
        })
    }
}

/// A destination as dialled, in one spelling: `%XX` escapes decoded, a
/// `tel:` scheme and visual separators (`-`, `.`, `(`, `)`, white space,
/// RFC 3966) removed, so `+44-20-7946-0000`, `%2B442079460000` and
/// `+442079460000` are one number. The `+` stays: it is the international
/// prefix of E.164. Capped at [`MAX_NUMBER`] characters.
pub fn normalize(destination: &str) -> String {
    let decoded = percent_decode(destination.trim());
    let mut text: &str = &decoded;
    if text
        .get(..4)
        .is_some_and(|s| s.eq_ignore_ascii_case("tel:"))
    {
        text = &text[4..];
    }
    text.chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')') && !c.is_whitespace() && !c.is_control())
        .map(|c| c.to_ascii_lowercase())
        .take(MAX_NUMBER)
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One source's call attempts.
#[derive(Debug, Clone, Default)]
pub struct TollFraud {
    /// Destinations dialled without credentials and not (yet) followed up
    /// with them, or refused.
    attempts: Distinct,
}

impl TollFraud {
    /// An INVITE starting a call to `destination` (the Request-URI user as
    /// written).
    pub fn invite(
        &mut self,
        cfg: &Settings,
        prefixes: &Prefixes,
        destination: &str,
        credentials: bool,
        now: Instant,
    ) -> Option<Finding> {
        let number = normalize(destination);
        if credentials {
            // A phone answering its challenge, or a guess the PBX has not
            // judged yet: a refusal counts it again.
            self.attempts.remove(&number);
            return None;
        }
        if let Some(m) = prefixes.find(&number) {
            return Some(Finding {
                reason: Reason::TollFraud,
                detail: format!("INVITE to {number} ({}) without credentials", m.describe()),
            });
        }
        self.sweep(cfg, &number, now)
    }

    /// The PBX refused the credentials of `user` on an INVITE to `destination`.
    pub fn refused(
        &mut self,
        cfg: &Settings,
        prefixes: &Prefixes,
        destination: &str,
        user: &str,
        now: Instant,
    ) -> Option<Finding> {
        let number = normalize(destination);
        if let Some(m) = prefixes.find(&number) {
            return Some(Finding {
                reason: Reason::TollFraud,
                detail: format!(
                    "INVITE to {number} ({}) refused for the credentials of {user}",
                    m.describe()
                ),
            });
        }
        self.sweep(cfg, &number, now)
    }

    fn sweep(&mut self, cfg: &Settings, number: &str, now: Instant) -> Option<Finding> {
        let limit = cfg.sweep_destinations.clamp(2, MAX_SWEEP_DESTINATIONS) as usize;
        let n = self.attempts.hit(number, now, cfg.sweep_window, limit);
        (n >= limit).then(|| Finding {
            reason: Reason::TollFraud,
            detail: format!(
                "INVITEs to {n} different destinations without credentials or refused within {}: {}",
                short(cfg.sweep_window),
                self.attempts.sample(8)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Kind};
    use crate::sip::{parse, Limits, Parsed, Transport};
    use crate::track::{Direction, Tracker};
    use std::net::IpAddr;
    use std::time::Duration;

    const INTERNATIONAL: &str = include_str!("../../tests/corpus/invite_international.sip");
    const PROXY_AUTH: &str = include_str!("../../tests/corpus/invite_proxy_auth.sip");
    const TECH_PREFIX: &str = include_str!("../../tests/corpus/invite_tech_prefix.sip");
    const TEL_PLUS: &str = include_str!("../../tests/corpus/invite_tel_plus.sip");
    const PREMIUM: &str = include_str!("../../tests/corpus/invite_premium.sip");
    const PREMIUM_AUTH: &str = include_str!("../../tests/corpus/invite_premium_auth.sip");
    const EXTENSION: &str = include_str!("../../tests/corpus/invite_extension.sip");
    const EXTENSION_AUTH: &str = include_str!("../../tests/corpus/invite_extension_auth.sip");
    const REINVITE: &str = include_str!("../../tests/corpus/invite_reinvite.sip");

    /// Runs messages through the parser and the tracker, as the watch does.
    struct Wire {
        tracker: Tracker,
        t: Instant,
        source: IpAddr,
    }

    impl Wire {
        fn new() -> Wire {
            Wire {
                tracker: Tracker::new(64),
                t: Instant::now(),
                source: "203.0.113.50".parse().unwrap(),
            }
        }

        fn feed(&mut self, dir: Direction, text: &str) -> Vec<Event> {
            self.t += Duration::from_millis(20);
            let mut out = Vec::new();
            match parse(text.as_bytes(), Transport::Datagram, &Limits::default()) {
                Ok(Parsed::Message(m, _)) => {
                    self.tracker.observe(self.t, dir, self.source, &m, &mut out)
                }
                other => panic!("does not parse: {other:?}"),
            }
            out
        }

        /// The PBX answers `request` with `status`.
        fn answer(&mut self, request: &str, status: u16) -> Vec<Event> {
            let header = |name: &str| {
                request
                    .split("\r\n")
                    .find(|l| l.starts_with(name))
                    .unwrap_or_else(|| panic!("no {name}"))
                    .to_string()
            };
            let response = format!(
                "SIP/2.0 {status} Whatever\r\n{}\r\n{}\r\n{};tag=pbx\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
                header("Via:"),
                header("From:"),
                header("To:"),
                header("Call-ID:"),
                header("CSeq:"),
            );
            self.feed(Direction::Out, &response)
        }
    }

    /// Feeds the detector the events it is given in the judge.
    fn judge(d: &mut TollFraud, prefixes: &Prefixes, events: &[Event]) -> Option<Finding> {
        let cfg = Settings::default();
        events.iter().find_map(|e| match &e.kind {
            Kind::Request {
                destination: Some(dest),
                credentials,
                ..
            } => d.invite(&cfg, prefixes, dest, *credentials, e.at),
            Kind::AuthFailed {
                user,
                destination: Some(dest),
            } => d.refused(&cfg, prefixes, dest, user, e.at),
            _ => None,
        })
    }

    fn builtin() -> Prefixes {
        Prefixes::new(&Settings::default())
    }

    /// `template` with its Request-URI user (and To) replaced by `number`,
    /// and its own Call-ID.
    fn dialling(template: &str, from: &str, number: &str) -> String {
        template
            .replace(&format!("sip:{from}@"), &format!("sip:{number}@"))
            .replacen("Call-ID: ", &format!("Call-ID: {number}-"), 1)
    }

    #[test]
    fn an_international_invite_without_credentials_is_banned_before_the_answer() {
        let mut w = Wire::new();
        let mut d = TollFraud::default();
        let events = w.feed(Direction::In, INTERNATIONAL);
        let f = judge(&mut d, &builtin(), &events).expect("not caught");
        assert_eq!(f.reason, Reason::TollFraud);
        assert_eq!(
            f.detail,
            "INVITE to 00442079460000 (international prefix 00) without credentials"
        );
    }

    #[test]
    fn tech_prefixes_tel_uris_and_separators_do_not_hide_the_number() {
        let p = builtin();
        for (msg, detail) in [
            (
                TECH_PREFIX,
                "INVITE to 9011972595123456 (international prefix 011 after tech prefix 9) without credentials",
            ),
            (
                TEL_PLUS,
                "INVITE to +442079460000 (international prefix +) without credentials",
            ),
            (
                PREMIUM,
                "INVITE to 19005550123 (premium prefix 1900) without credentials",
            ),
        ] {
            let mut w = Wire::new();
            let events = w.feed(Direction::In, msg);
            let f = judge(&mut TollFraud::default(), &p, &events).expect(detail);
            assert_eq!(f.detail, detail);
        }
    }

    #[test]
    fn a_refused_call_to_a_premium_number_is_banned_at_the_refusal() {
        let mut w = Wire::new();
        let mut d = TollFraud::default();
        let p = builtin();
        let request = w.feed(Direction::In, PREMIUM_AUTH);
        assert_eq!(judge(&mut d, &p, &request), None, "credentials: wait");
        let answer = w.answer(PREMIUM_AUTH, 403);
        assert!(matches!(
            &answer[0].kind,
            Kind::AuthFailed { destination: Some(d), .. } if &**d == "0900123456"
        ));
        let f = judge(&mut d, &p, &answer).expect("not caught");
        assert_eq!(
            f.detail,
            "INVITE to 0900123456 (premium prefix 0900) refused for the credentials of 1001"
        );
        // The same with the PBX's 407 to the earlier corpus call abroad.
        let mut w = Wire::new();
        let mut d = TollFraud::default();
        w.feed(Direction::In, PROXY_AUTH);
        assert!(judge(&mut d, &p, &w.answer(PROXY_AUTH, 407)).is_some());
    }

    #[test]
    fn a_phone_calling_an_extension_is_no_fraud() {
        let mut w = Wire::new();
        let mut d = TollFraud::default();
        let p = builtin();
        let mut events = w.feed(Direction::In, EXTENSION);
        events.extend(w.answer(EXTENSION, 401));
        assert!(matches!(events[1].kind, Kind::Challenged { .. }));
        events.extend(w.feed(Direction::In, EXTENSION_AUTH));
        events.extend(w.answer(EXTENSION_AUTH, 200));
        assert_eq!(judge(&mut d, &p, &events), None);
    }

    #[test]
    fn a_phone_calling_many_extensions_answering_each_challenge_is_no_sweep() {
        let mut w = Wire::new();
        let mut d = TollFraud::default();
        let p = builtin();
        for ext in 300..320 {
            let number = ext.to_string();
            let first = dialling(EXTENSION, "301", &number);
            let second = dialling(EXTENSION_AUTH, "301", &number);
            let mut events = w.feed(Direction::In, &first);
            events.extend(w.answer(&first, 401));
            events.extend(w.feed(Direction::In, &second));
            assert_eq!(judge(&mut d, &p, &events), None, "at {ext}");
        }
    }

    #[test]
    fn a_sweep_over_destinations_is_banned_whatever_the_numbers() {
        let mut w = Wire::new();
        let mut d = TollFraud::default();
        let p = builtin();
        let mut found = None;
        for (i, number) in ["1000", "1001", "1002", "1003", "1004", "1005"]
            .iter()
            .enumerate()
        {
            let msg = dialling(EXTENSION, "301", number);
            let events = w.feed(Direction::In, &msg);
            if let Some(f) = judge(&mut d, &p, &events) {
                found = Some((i, f));
                break;
            }
        }
        let (i, f) = found.expect("sweep not caught");
        assert_eq!(i + 1, Settings::default().sweep_destinations as usize);
        assert!(
            f.detail.starts_with("INVITEs to 5 different destinations"),
            "{}",
            f.detail
        );
        assert!(
            f.detail.contains("1000,1001,1002,1003,1004"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn refused_guesses_at_many_destinations_are_a_sweep() {
        let mut w = Wire::new();
        let mut d = TollFraud::default();
        let p = builtin();
        let mut banned = None;
        for (i, number) in ["972595", "4420794", "3312345", "4930123", "3906123"]
            .iter()
            .enumerate()
        {
            let msg = dialling(EXTENSION_AUTH, "301", number);
            w.feed(Direction::In, &msg);
            if let Some(f) = judge(&mut d, &p, &w.answer(&msg, 401)) {
                banned = Some(i);
                assert_eq!(f.reason, Reason::TollFraud);
            }
        }
        assert_eq!(banned, Some(4));
    }

    #[test]
    fn an_old_attempt_leaves_the_sweep_window() {
        let cfg = Settings::default();
        let p = builtin();
        let mut d = TollFraud::default();
        let t0 = Instant::now();
        for i in 0..20u64 {
            // Four fit in the 60 s window, never five.
            let now = t0 + Duration::from_secs(i * 16);
            let dest = format!("{}", 1000 + i);
            assert_eq!(d.invite(&cfg, &p, &dest, false, now), None, "at {i}");
        }
    }

    #[test]
    fn a_reinvite_within_a_call_is_no_new_call() {
        let mut w = Wire::new();
        let events = w.feed(Direction::In, REINVITE);
        assert!(matches!(
            &events[0].kind,
            Kind::Request { destination: None, method, .. } if &**method == "INVITE"
        ));
    }

    #[test]
    fn numbers_are_normalised() {
        assert_eq!(normalize("+44-20-7946-0000"), "+442079460000");
        assert_eq!(normalize("%2B44 (20) 7946.0000"), "+442079460000");
        assert_eq!(normalize("tel:+1-900-555-0123"), "+19005550123");
        assert_eq!(normalize("Alice"), "alice");
        assert_eq!(normalize("%zz%2"), "%zz%2");
        assert_eq!(normalize(&"9".repeat(100)).len(), MAX_NUMBER);
    }

    #[test]
    fn prefixes_match_only_real_numbers() {
        let p = builtin();
        let kind = |n: &str| {
            p.find(n)
                .map(|m| (m.prefix.to_string(), m.tech.to_string()))
        };
        assert_eq!(kind("011447911123456"), Some(("011".into(), "".into())));
        assert_eq!(kind("9011447911123456"), Some(("011".into(), "9".into())));
        assert_eq!(kind("*9011447911123456"), Some(("011".into(), "*9".into())));
        assert_eq!(kind("#00972595123456"), Some(("00".into(), "#".into())));
        // 9 then 00: North America's 900 premium range is caught that way too.
        assert_eq!(kind("9009725951234"), Some(("00".into(), "9".into())));
        assert_eq!(kind("09001234567"), Some(("0900".into(), "".into())));
        // Extensions, voicemail, feature codes, domestic numbers.
        for n in [
            "301",
            "9000",
            "0044",
            "*97",
            "#9",
            "2125550123",
            "08001234567",
            "alice",
        ] {
            assert_eq!(p.find(n), None, "{n}");
        }
    }

    #[test]
    fn operator_prefixes_extend_and_replace() {
        let cfg = Settings {
            prefixes: vec![],
            extra_prefixes: vec!["0137".into()],
            ..Default::default()
        };
        let p = Prefixes::new(&cfg);
        let m = p.find("01371234567").unwrap();
        assert_eq!(m.describe(), "configured prefix 0137");
        assert_eq!(p.find("00442079460000"), None);
    }
}
