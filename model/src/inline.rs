//! Inline mode: SIP from sources that are neither trusted, a trunk nor
//! known-good passes through the agent (NFQUEUE) before the PBX sees it, so the
//! first packet of a known attack tool is dropped and never answered.
//!
//! Off by default: the copy (NFLOG) path bans within milliseconds without
//! putting the agent in the call path. Operators who want an attack tool to get
//! no answer at all turn it on.

/// How the kernel hands packets to the agent's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueBackend {
    /// nft's own `queue` statement, in the agent's table.
    Native,
    /// Kernels without nft `queue` support: the agent's table marks the
    /// packets and a chain of its own in iptables-nft's `security` table
    /// (after every filter chain) sends marked packets to the queue with the
    /// xt NFQUEUE target.
    #[default]
    Xt,
}

impl QueueBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueBackend::Native => "nft queue",
            QueueBackend::Xt => "iptables-nft NFQUEUE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inline {
    pub enabled: bool,
    /// The NFQUEUE number the agent reads.
    pub queue: u16,
    /// On: while no agent reads the queue (stopped, crashed, upgraded) or the
    /// queue is full, packets go on to the PBX unjudged: calls keep flowing.
    /// Off: they are dropped until the agent is back (fail closed).
    pub bypass: bool,
    /// The packet mark bit that selects packets for the queue (xt backend).
    pub mark: u32,
    /// Which backend renders the queue: a fact of the running kernel, probed
    /// by the agent at start, not configured.
    pub backend: QueueBackend,
}

impl Default for Inline {
    fn default() -> Self {
        Inline {
            enabled: false,
            queue: 5060,
            bypass: true,
            mark: 0x0050_0000,
            backend: QueueBackend::default(),
        }
    }
}

impl Inline {
    /// What `show` prints.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "off (SIP is copied to the agent, not held)".into();
        }
        format!(
            "on: queue {} via {}, {}",
            self.queue,
            self.backend.as_str(),
            if self.bypass {
                "bypass (SIP flows unjudged while the agent is away)"
            } else {
                "fail closed (SIP is dropped while the agent is away)"
            }
        )
    }
}
