//! The runtime's integration tests (the CLI end to end, volumes, aging, PCam HDF5), one module per file,
//! built as one test binary: each binary links the crate and its dependencies (tract
//! among them), and a binary per file cost a link and a build of the shared code each:
//! the runtime's and the converter's 12 binaries took 41 s (79 CPU-seconds) to build
//! after a change, as two 24 s (45), on 2 cores; CI builds the runtime's for both ARM
//! targets too. A new test file is a new `mod` line here.

mod aging;
mod brain_age_cli;
mod cli;
mod cli_coherence;
mod pcam_h5;
mod volumes;
