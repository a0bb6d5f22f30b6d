//! Live events for operators watching the fleet (`palisade events`): what
//! the watch decided that is not a ban (bans go up as reports of their own):
//! a source becoming known-good or ceasing to be, an extension failing to
//! authenticate, per-user ports opened and closed. Emitted from any thread;
//! the controller sync task forwards them while it is connected and they
//! are dropped otherwise (they are a live view, the logs and metrics keep
//! the record).

use std::net::IpAddr;
use std::sync::OnceLock;
use tokio::sync::broadcast;

/// Events held for a slow or reconnecting forwarder.
const BUFFER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    pub addr: Option<IpAddr>,
    pub summary: String,
}

fn bus() -> &'static broadcast::Sender<Event> {
    static BUS: OnceLock<broadcast::Sender<Event>> = OnceLock::new();
    BUS.get_or_init(|| broadcast::channel(BUFFER).0)
}

/// Publishes `event` to whoever listens (nobody: dropped).
pub fn emit(kind: &'static str, addr: IpAddr, summary: String) {
    metrics::counter!("palisade_events_total", "kind" => kind).increment(1);
    let _ = bus().send(Event {
        kind,
        addr: Some(addr),
        summary,
    });
}

/// Every event from now on.
pub fn subscribe() -> broadcast::Receiver<Event> {
    bus().subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_see_what_is_emitted_after_they_subscribed() {
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        emit("known-good", addr, "before".into());
        let mut rx = subscribe();
        emit("known-good", addr, "after".into());
        let e = rx.try_recv().unwrap();
        assert_eq!((e.kind, e.summary.as_str()), ("known-good", "after"));
        assert!(rx.try_recv().is_err());
    }
}
