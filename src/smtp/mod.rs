//! The SMTP protocol side: the session state machine (`session`), the DATA decoder (`data`) and
//! every reply we send (`reply`). The fuzzer drives a session from `crate::fuzzing`.

pub mod data;
pub mod reply;
pub mod session;
