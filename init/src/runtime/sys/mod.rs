//! The unsafe edge of the runtime: `clone3`, what a new child does before `exec`, and the
//! throw-away threads that join a cell's namespaces to start processes inside it.

pub mod child;
pub mod clone;
pub mod start;
