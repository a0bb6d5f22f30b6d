//! The responsive firewall's brain: SIP parsing, transaction tracking, detectors; no I/O.

pub mod detect;
pub mod event;
pub mod judge;
pub mod pbxlog;
pub mod sip;
pub mod track;

pub use detect::{Finding, Reason};
pub use event::{Event, Kind};
pub use judge::{Action, Exempt, Judge, Verdict};
pub use track::{Direction, Tracker};
