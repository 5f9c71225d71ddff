//! Harnesses for the cargo-fuzz targets in `fuzz/`, and for the plain tests that replay their
//! corpora: arbitrary bytes -> one SMTP session (`session`), or -> every stage that reads a
//! message (`message`). Compiled only with the `fuzzing` feature (the tests and `fuzz/` turn it
//! on), so the production binary carries none of it.

pub mod message;
pub mod session;
