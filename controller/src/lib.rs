//! Palisade's controller: the fleet's control plane.
//!
//! - [`store`]: durable state (sled) behind the [`store::Store`] trait;
//! - [`pki`]: the controller's CA, server certificate and the signing of
//!   agent and operator certificates ([`identity`] says how an identity is
//!   encoded in a certificate);
//! - [`token`]: one-time enrolment tokens;
//! - [`server`]: the gRPC server over mutual TLS ([`agent_service`],
//!   [`operator_service`]) and the fan-out ([`fleet`]); [`explain`] asks a
//!   tenant's hosts why an address is allowed or blocked;
//! - [`client`]: connecting to it (the `palisade` CLI, tests);
//! - [`sandbox`]: an in-process controller and simulated agents for tests.

pub mod agent_service;
pub mod auth;
pub mod client;
pub mod explain;
pub mod fleet;
pub mod identity;
pub mod operator_service;
pub mod pki;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod token;
