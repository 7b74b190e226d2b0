//! The subcommands of the `edgemed` CLI, one module each: its clap options (`Args`)
//! and `run`, which does the work and reports on stderr or stdout. `main.rs` parses
//! the command line and calls them. What several of them share is here.

pub mod bagnet3d;
pub mod export;
pub mod inspect;
pub mod manifest;
pub mod quantize;
pub mod verify;

use std::path::Path;

use anyhow::Result;
use edgemed_onnx::fsutil::{self, Existing};
use edgemed_runtime::formats::manifest::MANIFEST_FILE;

/// Checks, before any work, that a command's outputs can be written without destroying
/// an input, each other or (without `--force`) an earlier result, as both binaries do
/// ([`fsutil::check_outputs`]); and that none takes the name of the manifest the
/// converter keeps beside the models it writes.
pub fn check_outputs(outputs: &[&Path], inputs: &[&Path], force: bool) -> Result<()> {
    if let Some(o) = outputs.iter().find(|o| o.file_name().is_some_and(|n| n == MANIFEST_FILE)) {
        anyhow::bail!(
            "{}: {MANIFEST_FILE} is the model manifest edgemed keeps beside the models it writes; give another file name",
            o.display()
        );
    }
    fsutil::check_outputs(outputs, inputs, Existing::from_flags(force, false))?;
    Ok(())
}
/// `--format` of the commands that print a report.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document for programs.
    Json,
}

impl Format {
    /// `--format`, or JSON with the old `--json` flag; a table by default.
    pub fn chosen(format: Option<Format>, json: bool) -> Format {
        match (format, json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) => Format::Table,
        }
    }
}
