//! Policy → nftables: rendering (pure), reading the live table back, planning the
//! transaction between them (pure), and applying it (the only part with I/O).

pub mod apply;
mod expr;
pub mod live;
pub mod plan;
pub mod queue;
pub mod render;
pub mod shell;

pub use apply::{Nft, NftError};
pub use live::LiveTable;
pub use plan::{plan, DynMode, Plan, PlanSummary};
pub use render::{render, Desired, SetRole, TABLE};
pub use shell::NftShell;
