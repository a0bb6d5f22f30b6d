//! The NFQUEUE the ruleset sends unknown sources' SIP to in inline mode: each
//! packet waits in the kernel until the agent says accept or drop.
//!
//! Written by hand over `netlink-sys`: `netlink-packet-netfilter` has NFLOG but
//! no NFQUEUE, and the `nfq` crate hides its socket, so it cannot be polled
//! beside the NFLOG socket or woken to stop. The protocol part is small: a
//! config message (bind, copy mode, flags), packet messages (id + payload) and
//! verdicts, all in `linux/netfilter/nfnetlink_queue.h`.
//!
//! Verdicts go out in batches: drops one by one, then a single
//! `VERDICT_BATCH` accepting every packet up to the last id read. A packet
//! the agent has forgotten (a verdict for an id the kernel no longer holds)
//! gets `ENOENT` back, which is counted and ignored, never fatal.

use netlink_sys::Socket;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_PAYLOAD: u16 = 10;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Packets the kernel holds for us at most; beyond it, fail-open decides.
const QUEUE_MAXLEN: u32 = 4096;

/// The agent's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

pub struct NfQueue {
    sock: Socket,
    buf: Vec<u8>,
    queue: u16,
    seq: u32,
}

/// What one read brought.
#[derive(Debug, Default)]
pub struct Batch {
    pub packets: usize,
    pub dropped: usize,
    /// Verdicts the kernel refused (the packet was gone).
    pub stale: usize,
}

impl NfQueue {
    /// Binds queue `queue`. With `fail_open`, the kernel accepts what it cannot
    /// queue (queue full); the rule's own `bypass` covers "no agent at all".
    pub fn open(queue: u16, fail_open: bool, timeout: Duration) -> io::Result<NfQueue> {
        let sock = super::nflog::socket(timeout)?;
        // A flood must not make the kernel report ENOBUFS on every read: the
        // queue length and fail-open already say what happens to the excess.
        let _ = sock.set_no_enobufs(true);
        let mut q = NfQueue {
            sock,
            buf: vec![0; 1 << 18],
            queue,
            seq: 0,
        };
        let mut cmd = Vec::new();
        // struct nfqnl_msg_config_cmd { u8 command; u8 _pad; __be16 pf; }
        put_attr(&mut cmd, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
        q.configure(&cmd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind NFQUEUE {queue} (is another program reading it?): {e}"),
            )
        })?;
        let mut params = Vec::new();
        // struct nfqnl_msg_config_params { __be32 copy_range; u8 copy_mode; } (packed)
        let mut p = 0xffffu32.to_be_bytes().to_vec();
        p.push(NFQNL_COPY_PACKET);
        put_attr(&mut params, NFQA_CFG_PARAMS, &p);
        put_attr(
            &mut params,
            NFQA_CFG_QUEUE_MAXLEN,
            &QUEUE_MAXLEN.to_be_bytes(),
        );
        let flags = if fail_open { NFQA_CFG_F_FAIL_OPEN } else { 0 };
        put_attr(&mut params, NFQA_CFG_FLAGS, &flags.to_be_bytes());
        put_attr(
            &mut params,
            NFQA_CFG_MASK,
            &NFQA_CFG_F_FAIL_OPEN.to_be_bytes(),
        );
        q.configure(&params)?;
        Ok(q)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn message(&mut self, kind: u16, flags: u16, attrs: &[u8]) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg { u8 family; u8 version; __be16 res_id; }
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.queue.to_be_bytes());
        out.extend_from_slice(attrs);
        out
    }

    fn configure(&mut self, attrs: &[u8]) -> io::Result<()> {
        let msg = self.message(NFQNL_MSG_CONFIG, NLM_F_ACK, attrs);
        let seq = self.seq;
        self.sock.send(&msg, 0)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for (kind, hdr_seq, body) in messages(&self.buf[..n]) {
                if kind == NLMSG_ERROR && hdr_seq == seq {
                    let code = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
            }
        }
    }

    /// Reads what the kernel has queued, asks `judge` about each packet (its
    /// payload from the network header on) and sends the verdicts. `Ok(None)`:
    /// nothing arrived within the timeout, or at once when `wait` is false.
    pub fn read(
        &mut self,
        wait: bool,
        mut judge: impl FnMut(&[u8]) -> Verdict,
    ) -> io::Result<Option<Batch>> {
        let flags = if wait { 0 } else { nix::libc::MSG_DONTWAIT };
        let n = match self.sock.recv(&mut &mut self.buf[..], flags) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut batch = Batch::default();
        let mut drops = Vec::new();
        let mut last: Option<u32> = None;
        let packet_kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
        for (kind, _, body) in messages(&self.buf[..n]) {
            if kind == NLMSG_ERROR {
                // An answer to one of our verdicts: the packet was gone.
                batch.stale += 1;
                continue;
            }
            if kind != packet_kind || body.len() < 4 {
                continue;
            }
            let mut id = None;
            let mut payload: &[u8] = &[];
            for (attr, value) in attrs(&body[4..]) {
                match attr {
                    NFQA_PACKET_HDR if value.len() >= 4 => {
                        id = Some(u32::from_be_bytes(value[..4].try_into().expect("4 bytes")))
                    }
                    NFQA_PAYLOAD => payload = value,
                    _ => {}
                }
            }
            let Some(id) = id else { continue };
            batch.packets += 1;
            if judge(payload) == Verdict::Drop {
                drops.push(id);
            }
            last = Some(last.map_or(id, |l: u32| l.max(id)));
        }
        batch.dropped = drops.len();
        let mut out = Vec::new();
        for id in drops {
            let mut a = Vec::new();
            put_attr(&mut a, NFQA_VERDICT_HDR, &verdict_hdr(NF_DROP, id));
            out.extend(self.message(NFQNL_MSG_VERDICT, 0, &a));
        }
        if let Some(last) = last {
            // Every packet up to `last` without a verdict yet: accepted.
            let mut a = Vec::new();
            put_attr(&mut a, NFQA_VERDICT_HDR, &verdict_hdr(NF_ACCEPT, last));
            out.extend(self.message(NFQNL_MSG_VERDICT_BATCH, 0, &a));
        }
        if !out.is_empty() {
            self.sock.send(&out, 0)?;
        }
        Ok(Some(batch))
    }
}

/// struct nfqnl_msg_verdict_hdr { __be32 verdict; __be32 id; }
fn verdict_hdr(verdict: u32, id: u32) -> [u8; 8] {
    let mut out = [0; 8];
    out[..4].copy_from_slice(&verdict.to_be_bytes());
    out[4..].copy_from_slice(&id.to_be_bytes());
    out
}

fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (align4(len) - len), 0);
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netlink messages in `buf`: (type, sequence, body after the header).
/// Stops at the first malformed header rather than trusting its length.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let hdr = buf.get(offset..offset + 16)?;
        let len = u32::from_ne_bytes(hdr[..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(hdr[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(hdr[8..12].try_into().ok()?);
        if len < 16 || offset + len > buf.len() {
            return None;
        }
        let body = &buf[offset + 16..offset + len];
        offset += align4(len);
        Some((kind, seq, body))
    })
}

/// The attributes in `buf`: (type without flag bits, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let hdr = buf.get(offset..offset + 4)?;
        let len = u16::from_ne_bytes([hdr[0], hdr[1]]) as usize;
        let kind = u16::from_ne_bytes([hdr[2], hdr[3]]) & 0x3fff;
        if len < 4 || offset + len > buf.len() {
            return None;
        }
        let value = &buf[offset + 4..offset + len];
        offset += align4(len);
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_garbage_ends_the_walk() {
        let mut buf = Vec::new();
        put_attr(&mut buf, NFQA_PACKET_HDR, &[0, 0, 0, 7, 8, 0, 1]);
        put_attr(&mut buf, NFQA_PAYLOAD, b"hello");
        let got: Vec<_> = attrs(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (NFQA_PACKET_HDR, &[0, 0, 0, 7, 8, 0, 1][..]));
        assert_eq!(got[1], (NFQA_PAYLOAD, &b"hello"[..]));
        // A length running past the end is not followed.
        let mut bad = buf.clone();
        bad[0] = 200;
        assert_eq!(attrs(&bad).count(), 0);
        assert_eq!(messages(&[1, 2, 3]).count(), 0);
        let mut msg = vec![0u8; 16];
        msg[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(messages(&msg).count(), 0, "a header claiming too much");
    }
}
