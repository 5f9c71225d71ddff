//! The SMTP protocol side: the session state machine (`session`), the DATA decoder (`data`) and
//! every reply we send (`reply`); `fuzzing` drives a session over in-memory bytes for the fuzzer.

pub mod data;
pub mod fuzzing;
pub mod reply;
pub mod session;
