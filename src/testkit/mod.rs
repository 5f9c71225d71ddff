//! The kit the integration tests and `inbound bench` share, compiled only with the `testkit`
//! feature (the tests enable it through the package's self dev-dependency, `bench` through its
//! own feature): an SMTP client (`smtp`), a loopback DNS server (`dns`), a DKIM/ARC signer with
//! test keys (`sign`) and a server config builder (`config`). Nothing in the server imports it.

pub mod config;
pub mod dns;
pub mod sign;
pub mod smtp;
