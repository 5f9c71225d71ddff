//! The embedded, versioned schema: `inbound store migrate` applies what is missing in one
//! transaction (two nodes migrating at once take turns on a lock); `serve` checks that the
//! database is at exactly the version it knows and refuses otherwise, saying which.

use super::{pg_error, Conn};
use crate::store::StoreError;

/// The schema version this build writes and reads.
pub const VERSION: i32 = 1;

/// Each version's SQL, in order: entry `n` takes the database from version `n` to `n + 1`.
const STEPS: [&str; VERSION as usize] = [include_str!("schema.sql")];

/// The database's schema version; 0 when inbound has never migrated it.
fn current(conn: &mut Conn) -> Result<i32, postgres::Error> {
    let exists = conn.query(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = 'inbound_schema'",
        &[],
    )?;
    if exists.is_empty() {
        return Ok(0);
    }
    let row = conn.query("SELECT coalesce(max(version), 0) FROM inbound_schema", &[])?;
    Ok(row.first().map(|r| r.get(0)).unwrap_or(0))
}

/// Refuse a database this build cannot use, naming `url` (its password masked).
pub(super) fn check(conn: &mut Conn, url: &str) -> Result<(), StoreError> {
    let v = current(conn).map_err(pg_error)?;
    match v {
        VERSION => Ok(()),
        0 => Err(StoreError::Unavailable(format!(
            "the database at {url} has no inbound schema: run `inbound store migrate` first"
        ))),
        v if v > VERSION => Err(StoreError::Unavailable(format!(
            "the database at {url} has schema version {v}, newer than this inbound knows ({VERSION}): upgrade inbound"
        ))),
        v => Err(StoreError::Unavailable(format!(
            "the database at {url} has schema version {v}; this inbound needs {VERSION}: run `inbound store migrate`"
        ))),
    }
}

/// Bring the database to `VERSION`. Returns (version before, version after).
pub(super) fn migrate(conn: &mut Conn) -> Result<(i32, i32), StoreError> {
    let mut tx = conn.client.transaction().map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS inbound_schema (version integer NOT NULL);
         LOCK TABLE inbound_schema IN EXCLUSIVE MODE;",
    )
    .map_err(pg_error)?;
    let before: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM inbound_schema", &[])
        .map_err(pg_error)?
        .get(0);
    if before > VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {before}, newer than this inbound knows ({VERSION})"
        )));
    }
    for (i, step) in STEPS.iter().enumerate().skip(before as usize) {
        tx.batch_execute(step).map_err(pg_error)?;
        tx.execute(
            "INSERT INTO inbound_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .map_err(pg_error)?;
    }
    tx.commit().map_err(pg_error)?;
    Ok((before, VERSION))
}
