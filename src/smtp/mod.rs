//! The SMTP protocol side: the session state machine (`session`), the DATA decoder (`data`) and
//! every reply we send (`reply`).

pub mod data;
pub mod reply;
pub mod session;
