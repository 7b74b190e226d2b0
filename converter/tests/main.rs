//! The converter's integration tests (its CLI, DFQ, the exporters, the passes), one module per file,
//! built as one test binary: each binary links the crate and its dependencies (tract
//! among them), and a binary per file cost a link and a build of the shared code each:
//! the runtime's and the converter's 12 binaries took 41 s (79 CPU-seconds) to build
//! after a change, as two 24 s (45), on 2 cores; CI builds the runtime's for both ARM
//! targets too. A new test file is a new `mod` line here.

mod cli;
mod dfq;
mod dfq_sqnr;
mod exporters;
mod local_map;
mod passes;
