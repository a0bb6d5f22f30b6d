//! Reassembly of SIP over TCP from copies of segments.
//!
//! The watch sees copies of TCP segments, not a socket: segments can be missed,
//! retransmitted or overlap, and a connection may already be running when the
//! watch starts. [`StreamBuffer`] turns one direction of one connection back into
//! whole SIP messages; [`Streams`] keeps one buffer per connection with a fixed
//! upper bound on how many, so a flood of connections costs bounded memory.
//!
//! The policy on anything odd is to drop what is buffered and wait for a segment
//! that starts with a SIP start line (resynchronise): a firewall can afford to miss
//! a message, but must never glue the halves of two messages into one.

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::message::{check_start_line, stream_message_len, Limits, ParseError};

/// Bounds for one connection's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Limits for each message (header lines, header bytes, body bytes).
    pub limits: Limits,
    /// Bytes a connection may hold while waiting for the rest of a message.
    /// Default 64 KiB; past it the buffer is dropped and the stream resynchronised.
    pub max_buffered: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            limits: Limits::default(),
            max_buffered: 64 * 1024,
        }
    }
}

/// What one [`StreamBuffer::push`] did besides passing out messages, for
/// counters and for detectors (a stream of malformed SIP is itself a signal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Complete messages passed to the callback.
    pub messages: usize,
    /// CR/LF keep-alive bytes dropped between messages.
    pub keep_alive_bytes: usize,
    /// Bytes already seen (retransmissions, overlaps) that were dropped.
    pub duplicate_bytes: usize,
    /// Bytes dropped without being parsed: buffered data thrown away on a gap,
    /// overflow or error, and data seen while waiting to resynchronise.
    pub skipped_bytes: usize,
    /// A segment was missing (the sequence number jumped ahead).
    pub gap: bool,
    /// More than `max_buffered` bytes were waiting for the end of a message.
    pub overflow: bool,
    /// A message could not be parsed; the error says why.
    pub malformed: Option<ParseError>,
}

/// One direction of one TCP connection being reassembled into SIP messages.
#[derive(Debug, Clone)]
pub struct StreamBuffer {
    config: StreamConfig,
    /// Received bytes not yet passed out; `buf[start..]` is pending.
    buf: Vec<u8>,
    start: usize,
    /// Sequence number of the byte after the last one received.
    next_seq: Option<u32>,
    /// Whether `buf[start..]` begins at a message boundary. When not, segments
    /// are skipped until one starts with a start line.
    synced: bool,
    /// How many pending bytes have been searched for the end of the headers, so
    /// a message trickling in byte by byte is still searched only once.
    searched: usize,
    /// Whether the pending message's first line has been checked.
    first_line_checked: bool,
    /// The length of the pending message, once its header section is in.
    need: Option<usize>,
}

/// Above this, an emptied buffer gives its memory back: idle connections are
/// many, and each may once have held a large message.
const KEEP_CAPACITY: usize = 4096;

impl Default for StreamBuffer {
    fn default() -> Self {
        StreamBuffer::new(StreamConfig::default())
    }
}

impl StreamBuffer {
    /// A buffer that has seen nothing: it starts reassembling at the first
    /// segment that begins with a SIP start line (see [`sync_at`](Self::sync_at)
    /// when the SYN was seen).
    pub fn new(config: StreamConfig) -> StreamBuffer {
        StreamBuffer {
            config,
            buf: Vec::new(),
            start: 0,
            next_seq: None,
            synced: false,
            searched: 0,
            first_line_checked: false,
            need: None,
        }
    }

    /// Declares that the byte with sequence number `seq` starts the stream (the
    /// SYN's sequence number plus one): nothing is lost before it, so there is no
    /// need to wait for a segment that starts with a start line.
    pub fn sync_at(&mut self, seq: u32) {
        self.clear();
        self.next_seq = Some(seq);
        self.synced = true;
    }

    /// Bytes waiting for the rest of their message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes one segment's payload, with the segment's sequence number, and calls
    /// `out` with every message it completes, in order. Bytes before the expected
    /// sequence number are retransmissions and are dropped; a jump ahead is a
    /// missed segment, after which buffered data is dropped and the stream waits
    /// for a segment that starts with a start line.
    pub fn push(&mut self, seq: u32, payload: &[u8], mut out: impl FnMut(&[u8])) -> PushReport {
        let mut report = PushReport::default();
        let Some(data) = self.new_bytes(seq, payload, &mut report) else {
            return report;
        };
        if !self.synced {
            if !starts_with_start_line(data) {
                report.skipped_bytes += data.len();
                return report;
            }
            self.synced = true;
        }
        self.buf.extend_from_slice(data);
        self.drain_messages(&mut out, &mut report);
        self.compact();
        report
    }

    /// The part of `payload` not seen before, updating the expected sequence
    /// number; `None` if there is nothing new.
    fn new_bytes<'p>(
        &mut self,
        seq: u32,
        payload: &'p [u8],
        report: &mut PushReport,
    ) -> Option<&'p [u8]> {
        if payload.is_empty() {
            return None;
        }
        let mut data = payload;
        if let Some(next) = self.next_seq {
            // Serial-number arithmetic: the sign of the difference says whether
            // the segment starts before or after what we expect, across wrap.
            let delta = seq.wrapping_sub(next) as i32;
            if delta < 0 {
                let seen = delta.unsigned_abs() as usize;
                if seen >= payload.len() {
                    report.duplicate_bytes += payload.len();
                    return None;
                }
                report.duplicate_bytes += seen;
                data = &payload[seen..];
            } else if delta > 0 {
                report.gap = true;
                self.resync(report);
            }
        }
        let data_seq = seq.wrapping_add((payload.len() - data.len()) as u32);
        self.next_seq = Some(data_seq.wrapping_add(data.len() as u32));
        Some(data)
    }

    /// Passes out every complete message at the front of the buffer.
    fn drain_messages(&mut self, out: &mut impl FnMut(&[u8]), report: &mut PushReport) {
        loop {
            if self.need.is_none() {
                self.skip_keep_alives(report);
                match self.frame() {
                    Ok(Some(len)) => self.need = Some(len),
                    Ok(None) => break,
                    Err(e) => {
                        report.malformed = Some(e);
                        self.resync(report);
                        break;
                    }
                }
            }
            let Some(len) = self.need else { break };
            if len > self.config.max_buffered {
                report.overflow = true;
                self.resync(report);
                break;
            }
            let pending = &self.buf[self.start..];
            if pending.len() < len {
                break;
            }
            out(&pending[..len]);
            report.messages += 1;
            self.start += len;
            self.need = None;
            self.searched = 0;
            self.first_line_checked = false;
        }
        if self.buffered() > self.config.max_buffered {
            report.overflow = true;
            self.resync(report);
        }
    }

    fn skip_keep_alives(&mut self, report: &mut PushReport) {
        let pending = &self.buf[self.start..];
        let n = pending
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        self.start += n;
        report.keep_alive_bytes += n;
    }

    /// The length of the message at the front once its header section is in,
    /// looking only at bytes not searched before.
    fn frame(&mut self) -> Result<Option<usize>, ParseError> {
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return Ok(None);
        }
        // Bytes before `searched` hold no LF while the first line is unchecked, so
        // only new bytes are searched: a long line trickling in stays linear.
        if !self.first_line_checked {
            let from = self.searched.min(pending.len());
            if let Some(lf) = pending[from..].iter().position(|&b| b == b'\n') {
                let line = &pending[..from + lf];
                check_start_line(line.strip_suffix(b"\r").unwrap_or(line))?;
                self.first_line_checked = true;
            }
        }
        // The header section ends at the first LF followed by CRLF or LF; a line
        // that starts with CR and is not CRLF is an error anyway.
        let from = self.searched.saturating_sub(2).min(pending.len());
        let end = pending[from..]
            .windows(2)
            .position(|w| w[0] == b'\n' && (w[1] == b'\n' || w[1] == b'\r'));
        let Some(found) = end else {
            self.searched = pending.len();
            if pending.len() > self.config.limits.max_header_bytes {
                return Err(ParseError::HeaderSectionTooLarge {
                    limit: self.config.limits.max_header_bytes,
                });
            }
            return Ok(None);
        };
        self.searched = from + found;
        stream_message_len(pending, &self.config.limits)
    }

    /// Drops everything buffered and waits for a segment that starts a message.
    fn resync(&mut self, report: &mut PushReport) {
        report.skipped_bytes += self.buffered();
        self.clear();
        self.synced = false;
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.need = None;
        self.searched = 0;
        self.first_line_checked = false;
    }

    /// Moves the pending bytes to the front of the buffer, and frees a large
    /// buffer that has become empty.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }
}

/// Whether a segment can start a message: optional CR/LFs, then `SIP/2.0 ` or a
/// method token followed by ` sip:`, ` sips:` or ` tel:`. This is the resync test,
/// so it wants to be sure: a segment from the middle of a body rarely looks like
/// this.
fn starts_with_start_line(data: &[u8]) -> bool {
    let skip = data
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let data = &data[skip..];
    if data.len() >= 8 && data[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        return true;
    }
    let method_len = data
        .iter()
        .take(33)
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .unwrap_or(0);
    if method_len == 0 || data.get(method_len) != Some(&b' ') {
        return false;
    }
    let uri = &data[method_len + 1..];
    [&b"sip:"[..], b"sips:", b"tel:"]
        .iter()
        .any(|scheme| uri.len() >= scheme.len() && uri[..scheme.len()].eq_ignore_ascii_case(scheme))
}

/// One [`StreamBuffer`] per connection, at most `capacity` of them: when a new
/// connection comes and the map is full, the least recently used connection is
/// forgotten (it resynchronises if it ever sends again). The caller removes
/// connections on FIN or RST with [`close`](Self::close).
pub struct Streams<K: Hash + Eq> {
    map: LruCache<K, StreamBuffer>,
    config: StreamConfig,
    evictions: u64,
}

impl<K: Hash + Eq> Streams<K> {
    /// A map for at most `capacity` connections (at least 1).
    pub fn new(capacity: usize, config: StreamConfig) -> Streams<K> {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Streams {
            map: LruCache::new(capacity),
            config,
            evictions: 0,
        }
    }

    /// Feeds a segment of connection `key` (see [`StreamBuffer::push`]), creating
    /// its buffer if it is new.
    pub fn push(&mut self, key: K, seq: u32, payload: &[u8], out: impl FnMut(&[u8])) -> PushReport {
        self.entry(key).push(seq, payload, out)
    }

    /// Records that connection `key` starts at sequence number `seq` (its SYN was
    /// seen), so its first segment need not be recognised as a start line.
    pub fn open(&mut self, key: K, seq: u32) {
        self.entry(key).sync_at(seq);
    }

    /// Forgets connection `key` (FIN or RST seen). Returns whether it was known.
    pub fn close(&mut self, key: &K) -> bool {
        self.map.pop(key).is_some()
    }

    /// Connections currently tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many connections were forgotten to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn entry(&mut self, key: K) -> &mut StreamBuffer {
        if !self.map.contains(&key) && self.map.len() == self.map.cap().get() {
            self.evictions += 1;
        }
        let config = self.config;
        self.map
            .get_or_insert_mut(key, || StreamBuffer::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] =
        b"OPTIONS sip:100@pbx SIP/2.0\r\nCall-ID: a\r\nContent-Length: 0\r\n\r\n";
    const MESSAGE: &[u8] =
        b"MESSAGE sip:100@pbx SIP/2.0\r\nCall-ID: b\r\nContent-Length: 5\r\n\r\nhello";

    fn collect(
        buffer: &mut StreamBuffer,
        segments: &[(u32, &[u8])],
    ) -> (Vec<Vec<u8>>, Vec<PushReport>) {
        let mut messages = Vec::new();
        let reports = segments
            .iter()
            .map(|(seq, data)| buffer.push(*seq, data, |m| messages.push(m.to_vec())))
            .collect();
        (messages, reports)
    }

    #[test]
    fn several_messages_in_one_segment_and_keep_alives() {
        let mut data = b"\r\n\r\n".to_vec();
        data.extend_from_slice(OPTIONS);
        data.extend_from_slice(b"\r\n\r\n");
        data.extend_from_slice(MESSAGE);
        let mut buffer = StreamBuffer::default();
        let (messages, reports) = collect(&mut buffer, &[(1000, &data)]);
        assert_eq!(messages, vec![OPTIONS.to_vec(), MESSAGE.to_vec()]);
        assert_eq!(reports[0].messages, 2);
        assert_eq!(reports[0].keep_alive_bytes, 8);
        assert_eq!(buffer.buffered(), 0);
    }

    #[test]
    fn one_message_over_many_segments() {
        let mut buffer = StreamBuffer::default();
        buffer.sync_at(7);
        let mut messages = Vec::new();
        for (i, byte) in MESSAGE.iter().enumerate() {
            buffer.push(7 + i as u32, std::slice::from_ref(byte), |m| {
                messages.push(m.to_vec())
            });
        }
        assert_eq!(messages, vec![MESSAGE.to_vec()]);
    }

    #[test]
    fn retransmissions_and_overlaps_are_dropped() {
        let mut buffer = StreamBuffer::default();
        let (a, b) = MESSAGE.split_at(30);
        let segments: Vec<(u32, &[u8])> = vec![
            (100, a),
            (100, a),                // retransmitted whole
            (110, &MESSAGE[10..40]), // overlaps: 20 old bytes, 10 new
            (140, &b[10..]),         // the rest
            (100, MESSAGE),          // all old
        ];
        let (messages, reports) = collect(&mut buffer, &segments);
        assert_eq!(messages, vec![MESSAGE.to_vec()]);
        assert_eq!(reports[1].duplicate_bytes, 30);
        assert_eq!(reports[2].duplicate_bytes, 20);
        assert_eq!(reports[4].duplicate_bytes, MESSAGE.len());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut buffer = StreamBuffer::default();
        let start = u32::MAX - 10;
        let (a, b) = MESSAGE.split_at(20);
        let segments = [(start, a), (start.wrapping_add(20), b)];
        let (messages, _) = collect(&mut buffer, &segments);
        assert_eq!(messages, vec![MESSAGE.to_vec()]);
    }

    #[test]
    fn gap_discards_and_resyncs_on_a_start_line() {
        let mut buffer = StreamBuffer::default();
        let (a, _lost) = MESSAGE.split_at(40);
        let seq_after = 1 + MESSAGE.len() as u32;
        let segments: Vec<(u32, &[u8])> = vec![
            (1, a),
            (seq_after + 10, b"more body bytes of something"), // gap, not a start line
            (seq_after + 38, OPTIONS),                         // in order, a start line
            (seq_after + 200, MESSAGE),                        // gap, a start line
        ];
        let (messages, reports) = collect(&mut buffer, &segments);
        assert_eq!(messages, vec![OPTIONS.to_vec(), MESSAGE.to_vec()]);
        assert!(reports[1].gap);
        assert_eq!(reports[1].skipped_bytes, 40 + 28);
        assert!(!reports[2].gap);
        assert_eq!(reports[2].messages, 1);
        assert!(reports[3].gap);
        assert_eq!(reports[3].messages, 1);
    }

    #[test]
    fn unsynced_start_waits_for_a_start_line_unless_told() {
        let mut buffer = StreamBuffer::default();
        let (messages, reports) = collect(
            &mut buffer,
            &[
                (5, &MESSAGE[10..]),
                (5 + MESSAGE.len() as u32 - 10, OPTIONS),
            ],
        );
        assert_eq!(messages, vec![OPTIONS.to_vec()]);
        assert_eq!(reports[0].skipped_bytes, MESSAGE.len() - 10);

        let mut buffer = StreamBuffer::default();
        buffer.sync_at(10);
        let (messages, _) = collect(&mut buffer, &[(10, &MESSAGE[..3]), (13, &MESSAGE[3..])]);
        assert_eq!(messages, vec![MESSAGE.to_vec()]);
    }

    #[test]
    fn garbage_is_reported_and_resynced() {
        let mut buffer = StreamBuffer::default();
        buffer.sync_at(0);
        let junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (messages, reports) = collect(&mut buffer, &[(0, junk), (junk.len() as u32, OPTIONS)]);
        assert_eq!(messages, vec![OPTIONS.to_vec()]);
        assert!(matches!(
            reports[0].malformed,
            Some(ParseError::BadStartLine { .. })
        ));

        // The first line is checked as soon as it is complete.
        let mut buffer = StreamBuffer::default();
        buffer.sync_at(0);
        let report = buffer.push(0, b"INVITE nonsense\r\nTo: x", |_| {});
        assert!(report.malformed.is_some());
        assert_eq!(buffer.buffered(), 0);
    }

    #[test]
    fn overflow_discards_and_reports() {
        let config = StreamConfig {
            max_buffered: 100,
            ..StreamConfig::default()
        };
        let mut buffer = StreamBuffer::new(config);
        buffer.sync_at(0);
        let mut big = b"INVITE sip:a@b SIP/2.0\r\nSubject: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 200));
        let report = buffer.push(0, &big, |_| {});
        assert!(report.overflow);
        assert_eq!(buffer.buffered(), 0);

        let body = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 500\r\n\r\n";
        let mut buffer = StreamBuffer::new(config);
        buffer.sync_at(0);
        let report = buffer.push(0, body, |_| {});
        assert!(report.overflow, "{report:?}");
    }

    #[test]
    fn header_section_limit_applies_while_waiting() {
        let mut buffer = StreamBuffer::default();
        buffer.sync_at(0);
        let mut messages = 0;
        let mut seq = 0u32;
        let head = b"OPTIONS sip:a@b SIP/2.0\r\n";
        buffer.push(seq, head, |_| messages += 1);
        seq += head.len() as u32;
        let line = b"X-Filler: 0123456789012345678901234567890123456789\r\n";
        let mut overflowed = false;
        for _ in 0..2000 {
            let report = buffer.push(seq, line, |_| messages += 1);
            seq += line.len() as u32;
            overflowed |= report.overflow || report.malformed.is_some();
            assert!(buffer.buffered() <= 64 * 1024 + line.len());
        }
        assert!(overflowed);
        assert_eq!(messages, 0);
    }

    #[test]
    fn a_trickle_of_single_bytes_costs_linear_time() {
        // A long start line, then a long header section, one byte per segment:
        // re-scanning the buffer on each segment would take minutes here.
        let mut data = b"OPTIONS sip:".to_vec();
        data.extend(std::iter::repeat_n(b'a', 60_000));
        data.extend_from_slice(b"@pbx SIP/2.0\r\nSubject: ");
        data.extend(std::iter::repeat_n(b'b', 4_000));
        data.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let mut buffer = StreamBuffer::default();
        buffer.sync_at(0);
        let mut messages = Vec::new();
        let started = std::time::Instant::now();
        for (i, byte) in data.iter().enumerate() {
            buffer.push(i as u32, std::slice::from_ref(byte), |m| {
                messages.push(m.len())
            });
        }
        assert_eq!(messages, vec![data.len()]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn resync_test_recognises_start_lines() {
        assert!(starts_with_start_line(b"REGISTER sip:pbx SIP/2.0"));
        assert!(starts_with_start_line(b"\r\nINVITE SIPS:a@b SIP/2.0"));
        assert!(starts_with_start_line(b"INVITE tel:+1 SIP/2.0"));
        assert!(starts_with_start_line(b"SIP/2.0 200 OK"));
        assert!(!starts_with_start_line(b"SIP/2.0"));
        assert!(!starts_with_start_line(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4"));
        assert!(!starts_with_start_line(b"GET / HTTP/1.1"));
        assert!(!starts_with_start_line(b" sip:"));
        assert!(!starts_with_start_line(b""));
    }

    #[test]
    fn streams_evict_the_least_recently_used() {
        let mut streams: Streams<u32> = Streams::new(2, StreamConfig::default());
        let mut got = Vec::new();
        streams.open(1, 0);
        streams.open(2, 0);
        streams.push(1, 0, &OPTIONS[..10], |m| got.push(m.to_vec()));
        streams.push(2, 0, &OPTIONS[..10], |m| got.push(m.to_vec()));
        streams.push(1, 10, &OPTIONS[10..20], |m| got.push(m.to_vec())); // 1 is now recent
        streams.open(3, 0); // evicts 2
        assert_eq!(streams.len(), 2);
        assert_eq!(streams.evictions(), 1);
        streams.push(1, 20, &OPTIONS[20..], |m| got.push(m.to_vec()));
        assert_eq!(got, vec![OPTIONS.to_vec()]);
        // 2 lost its buffer: its continuation is not a start line, so it is skipped
        // (and re-creating 2 evicts 3, the least recently used now).
        let report = streams.push(2, 10, &OPTIONS[10..], |m| got.push(m.to_vec()));
        assert_eq!(report.skipped_bytes, OPTIONS.len() - 10);
        assert_eq!(got.len(), 1);
        assert_eq!(streams.evictions(), 2);
        assert!(streams.close(&2));
        assert!(!streams.close(&2));
        assert!(!streams.close(&3));
        assert_eq!(streams.len(), 1);
        assert!(!streams.is_empty());
    }
}
