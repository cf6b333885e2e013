//! Helpers for the appliance tier (see tests/appliance.rs).
