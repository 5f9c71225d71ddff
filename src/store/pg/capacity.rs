//! The server's connection limit + this node's `pool_size` and `committers` -> start, start
//! with a warning, or refuse. Checked once, when the store opens.
//!
//! A node opens up to `pool_size + committers` connections: the committers at start, the pool
//! as reads need it. A connection the server refuses later is an error at that moment (mail is
//! deferred with `451`, a read fails), so what can be known at start is said at start:
//!
//! - more than the server allows this role at all (`max_connections`, less the slots reserved
//!   for superusers when the role is not one): no number of retries helps; the node refuses to
//!   start and names the figures;
//! - fits alone, but not beside the client connections open now (other nodes, other
//!   applications): a WARN with the figures. Other nodes' pools grow later, so this is a
//!   lower bound: size `max_connections` for every node's `pool_size + committers`.

use super::{pg_error, Conn};
use crate::config::PostgresConfig;
use crate::store::StoreError;

/// What the server says about its connections, read on one of the node's own connections.
struct Limits {
    max_connections: i64,
    /// `superuser_reserved_connections`, plus `reserved_connections` (PostgreSQL 16 and newer)
    /// for roles without it: slots this role may not use.
    reserved: i64,
    superuser: bool,
    /// Client connections open now, the checking one excepted.
    in_use: i64,
}

fn read(conn: &mut Conn) -> Result<Limits, postgres::Error> {
    let rows = conn.query(
        "SELECT current_setting('max_connections')::bigint,
                current_setting('superuser_reserved_connections')::bigint,
                coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::bigint,
                current_setting('is_superuser') = 'on',
                (SELECT count(*) FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())",
        &[],
    )?;
    // One row: a SELECT without FROM.
    let r = &rows[0];
    let (su_reserved, reserved): (i64, i64) = (r.get(1), r.get(2));
    let superuser: bool = r.get(3);
    Ok(Limits {
        max_connections: r.get(0),
        reserved: if superuser { 0 } else { su_reserved + reserved },
        superuser,
        in_use: r.get(4),
    })
}

/// Refuse a node that cannot fit in the server's connections; warn about one that fits only
/// without the connections open now. `url` is masked.
pub(super) fn check(conn: &mut Conn, cfg: &PostgresConfig, url: &str) -> Result<(), StoreError> {
    let limits = read(conn).map_err(pg_error)?;
    let need = (cfg.pool_size + cfg.committers) as i64;
    let allowed = limits.max_connections - limits.reserved;
    let figures = format!(
        "pool_size {} + committers {}; the server allows {allowed}: max_connections {}{}",
        cfg.pool_size,
        cfg.committers,
        limits.max_connections,
        if limits.superuser {
            String::new()
        } else {
            format!(" less {} reserved for superusers", limits.reserved)
        }
    );
    if need > allowed {
        return Err(StoreError::Unavailable(format!(
            "the database at {url}: this node needs {need} connections ({figures}): raise \
             max_connections or lower [store] pool_size or committers"
        )));
    }
    if limits.in_use + need > allowed {
        tracing::warn!(
            in_use = limits.in_use,
            node_connections = need,
            pool_size = cfg.pool_size,
            committers = cfg.committers,
            allowed,
            max_connections = limits.max_connections,
            "PostgreSQL may run out of connections: with the {} open now and this node's up to \
             {need}, past the {allowed} max_connections allows, a refused connection defers mail \
             (451); raise max_connections or lower pool_size or committers on every node",
            limits.in_use
        );
    }
    Ok(())
}
