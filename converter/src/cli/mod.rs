//! The subcommands of the `edgemed` CLI, one module each: its clap options (`Args`)
//! and `run`, which does the work and reports on stderr or stdout. `main.rs` parses
//! the command line and calls them.

pub mod bagnet3d;
pub mod export;
pub mod inspect;
pub mod manifest;
pub mod quantize;
pub mod verify;
