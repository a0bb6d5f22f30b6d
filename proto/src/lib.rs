//! The control plane's wire protocol, package `palisade.v1`: the agent's
//! `AgentService` (enrolment and the sync stream) and the operators'
//! `OperatorService`. Generated from `proto/palisade/v1/palisade.proto`.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("palisade.v1");
}

/// The protocol version this build speaks (sent in `Hello`).
pub const PROTOCOL_VERSION: u32 = 1;
