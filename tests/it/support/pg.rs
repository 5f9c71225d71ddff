//! The throwaway PostgreSQL cluster of the tests: the kit's own (`inbound::testkit::pg`), which
//! `inbound bench --store postgres` starts too, so there is one place that knows how.

#[allow(unused_imports)]
pub use inbound::testkit::pg::{bin_dir, PgCluster};
