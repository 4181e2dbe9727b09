//! edgepass: a tiny, fast and secure TCP/UDP tunnel and relay for routers and IoT devices.
//!
//! The binary parses a NodePass-style URL into a [`config::Config`] and calls [`run`]; the
//! integration tests call the same entry points in-process.
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod duration;
pub mod signal;
