//! What the controller and the agent both need from the operating system,
//! written once with one set of guarantees (and built for musl, like the
//! agent): durable atomic file writes, running a command with a deadline,
//! facts from `/proc`, and confining a path to directories.

pub mod command;
pub mod durable;
pub mod host;
pub mod paths;
