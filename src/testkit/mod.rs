//! The kit the integration tests and `inbound bench` share, compiled only with the `testkit`
//! feature (the tests enable it through the package's self dev-dependency, `bench` through its
//! own feature): an SMTP client (`smtp`), a loopback DNS server (`dns`), a DKIM/ARC signer with
//! test keys (`sign`), a server config builder (`config`) and a throwaway PostgreSQL cluster
//! (`pg`). Nothing in the server imports it.

pub mod config;
pub mod dns;
pub mod pg;
pub mod sign;
pub mod smtp;
