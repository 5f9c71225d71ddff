//! `inbound store copy`: a stopped embedded store (sled and its spool) into an empty PostgreSQL
//! database, in one transaction. Every table is counted and hashed twice: from the embedded
//! store as it is read (in the form the database stores it: spooled bodies inline, counters in
//! their tables), and from the database after the commit, read back in the same key order. The
//! two must agree; the command prints both.
//!
//! What is derived is not copied: the outbox schedule (the `due` column is the item's own time)
//! and its depth gauge (counted), the health probe.

use std::path::Path;

use postgres::types::ToSql;
use ring::digest;

use super::{pg_error, schema, Conn};
use crate::config::PostgresConfig;
use crate::store::model::{Conversation, MessageRecord, OutboxItem};
use crate::store::ops::ThreadEntry;
use crate::store::tx::{decode_counter, TreeId};
use crate::store::{Engine, Spool, StoreError};

/// One column's value.
#[derive(Debug)]
enum Val {
    Text(String),
    Int(i64),
    Bytes(Vec<u8>),
}

impl Val {
    fn hash(&self, h: &mut digest::Context) {
        let (tag, bytes): (u8, &[u8]) = match self {
            Val::Text(s) => (b't', s.as_bytes()),
            Val::Int(_) => (b'i', &[]),
            Val::Bytes(b) => (b'b', b),
        };
        h.update(&[tag]);
        match self {
            Val::Int(n) => h.update(&n.to_be_bytes()),
            _ => {
                h.update(&(bytes.len() as u64).to_be_bytes());
                h.update(bytes);
            }
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Val::Text(s) => s,
            Val::Int(n) => n,
            Val::Bytes(b) => b,
        }
    }
}

/// A destination table: its name, columns (with their type), and key columns for the order.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, char)],
    key: &'static str,
}

/// Every table copied, in the order they are written and hashed. The type is `t` text, `i`
/// bigint, `b` bytea.
const TABLES: &[Table] = &[
    Table {
        name: "messages",
        columns: &[("queue_id", 't'), ("received_at", 'i'), ("record", 't')],
        key: "queue_id",
    },
    Table {
        name: "bodies",
        columns: &[("queue_id", 't'), ("body", 'b')],
        key: "queue_id",
    },
    Table {
        name: "thread_index",
        columns: &[
            ("inbox", 't'),
            ("message_id", 't'),
            ("conversation", 't'),
            ("first_queue_id", 't'),
        ],
        key: "inbox, message_id",
    },
    Table {
        name: "conversations",
        columns: &[("id", 't'), ("created_at", 'i'), ("record", 't')],
        key: "id",
    },
    Table {
        name: "conversation_messages",
        columns: &[("conversation", 't'), ("queue_id", 't')],
        key: "conversation, queue_id",
    },
    Table {
        name: "contacts",
        columns: &[("email", 't'), ("record", 't')],
        key: "email",
    },
    Table {
        name: "contact_conversations",
        columns: &[("email", 't'), ("conversation", 't')],
        key: "email, conversation",
    },
    Table {
        name: "tickets",
        columns: &[("id", 't'), ("record", 't')],
        key: "id",
    },
    Table {
        name: "inbox_states",
        columns: &[("id", 't'), ("record", 't')],
        key: "id",
    },
    Table {
        name: "user_states",
        columns: &[("name", 't'), ("record", 't')],
        key: "name",
    },
    Table {
        name: "open_counts",
        columns: &[("name", 't'), ("open", 'i')],
        key: "name",
    },
    Table {
        name: "round_robin",
        columns: &[("rule", 't'), ("position", 'i')],
        key: "rule",
    },
    Table {
        name: "outbox",
        columns: &[("id", 't'), ("due", 'i'), ("record", 't')],
        key: "id",
    },
    Table {
        name: "inbox_definitions",
        columns: &[("id", 't'), ("record", 't')],
        key: "id",
    },
    Table {
        name: "inbox_addresses",
        columns: &[("address", 't'), ("inbox", 't')],
        key: "address",
    },
    Table {
        name: "people",
        columns: &[("kind", 't'), ("id", 't'), ("record", 't')],
        key: "kind, id",
    },
    Table {
        name: "store_state",
        columns: &[("key", 't'), ("value", 't')],
        key: "key",
    },
];

/// Counts and checksum of one side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySide {
    /// Rows per table, in `TABLES` order, then `ticket_sequence` (the last number given).
    pub counts: Vec<(&'static str, i64)>,
    /// SHA-256 over every table's rows in key order, hex.
    pub checksum: String,
}

/// What `inbound store copy` did.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub source: CopySide,
    pub destination: CopySide,
}

/// Hashes and counts rows table by table.
struct Tally {
    all: digest::Context,
    table: Option<(&'static str, digest::Context, i64)>,
    counts: Vec<(&'static str, i64)>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            all: digest::Context::new(&digest::SHA256),
            table: None,
            counts: Vec::new(),
        }
    }

    fn begin(&mut self, name: &'static str) {
        self.end();
        let mut h = digest::Context::new(&digest::SHA256);
        h.update(name.as_bytes());
        self.table = Some((name, h, 0));
    }

    fn row(&mut self, row: &[Val]) {
        let (_, h, n) = self.table.as_mut().expect("a table begun");
        for v in row {
            v.hash(h);
        }
        *n += 1;
    }

    fn end(&mut self) {
        if let Some((name, h, n)) = self.table.take() {
            self.all.update(h.finish().as_ref());
            self.counts.push((name, n));
        }
    }

    fn finish(mut self, ticket_sequence: i64) -> CopySide {
        self.end();
        self.all.update(&ticket_sequence.to_be_bytes());
        self.counts.push(("ticket_sequence", ticket_sequence));
        CopySide {
            counts: self.counts,
            checksum: crate::util::hex(self.all.finish().as_ref()),
        }
    }
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::Io(std::io::Error::other("a key or record is not UTF-8")))
}

/// Split `a \0 b` (composite keys of the embedded store).
fn pair(key: &[u8]) -> Result<(String, String), StoreError> {
    let at = key.iter().position(|&b| b == 0).ok_or_else(|| {
        StoreError::Io(std::io::Error::other(
            "a composite key without its separator",
        ))
    })?;
    Ok((text(&key[..at])?, text(&key[at + 1..])?))
}

/// The rows of `table` read from the embedded store, in key order, each given to `out`.
fn source_rows(
    engine: &Engine,
    spool: &Spool,
    table: &str,
    out: &mut dyn FnMut(Vec<Val>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let records = |tree: TreeId, out: &mut dyn FnMut(Vec<Val>) -> Result<(), StoreError>| {
        for kv in engine.tree(tree).iter() {
            let (k, v) = kv?;
            out(vec![Val::Text(text(&k)?), Val::Text(text(&v)?)])?;
        }
        Ok::<_, StoreError>(())
    };
    let links = |tree: TreeId, out: &mut dyn FnMut(Vec<Val>) -> Result<(), StoreError>| {
        for kv in engine.tree(tree).iter() {
            let (a, b) = pair(&kv?.0)?;
            out(vec![Val::Text(a), Val::Text(b)])?;
        }
        Ok::<_, StoreError>(())
    };
    // Counters of one kind (`prefix` + name), in key order.
    let counters = |prefix: &str, out: &mut dyn FnMut(Vec<Val>) -> Result<(), StoreError>| {
        for kv in engine.tree(TreeId::Counters).scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv?;
            let name = text(&k[prefix.len()..])?;
            out(vec![Val::Text(name), Val::Int(decode_counter(Some(v)))])?;
        }
        Ok::<_, StoreError>(())
    };
    match table {
        "messages" => {
            for kv in engine.tree(TreeId::Messages).iter() {
                let mut r: MessageRecord = serde_json::from_slice(&kv?.1)?;
                if r.body_location == "spool" {
                    r.body_location = "inline".into();
                }
                out(vec![
                    Val::Text(r.queue_id.clone()),
                    Val::Int(r.received_at as i64),
                    Val::Text(serde_json::to_string(&r)?),
                ])?;
            }
        }
        "bodies" => {
            let bodies = engine.tree(TreeId::Bodies);
            for kv in engine.tree(TreeId::Messages).iter() {
                let r: MessageRecord = serde_json::from_slice(&kv?.1)?;
                let body = match r.body_location.as_str() {
                    "inline" => bodies
                        .get(r.queue_id.as_bytes())?
                        .map(|b| b.to_vec())
                        .unwrap_or_default(),
                    "spool" => spool.read(&r.queue_id).map_err(|e| {
                        StoreError::Io(std::io::Error::new(
                            e.kind(),
                            format!("reading the spooled body of {}: {e}", r.queue_id),
                        ))
                    })?,
                    _ => continue, // expired: no body
                };
                out(vec![Val::Text(r.queue_id), Val::Bytes(body)])?;
            }
        }
        "thread_index" => {
            for kv in engine.tree(TreeId::MessageIds).iter() {
                let (k, v) = kv?;
                let (inbox, message_id) = pair(&k)?;
                let e = ThreadEntry::decode(&v);
                out(vec![
                    Val::Text(inbox),
                    Val::Text(message_id),
                    Val::Text(e.conversation),
                    Val::Text(e.first),
                ])?;
            }
        }
        "conversations" => {
            for kv in engine.tree(TreeId::Conversations).iter() {
                let (k, v) = kv?;
                let c: Conversation = serde_json::from_slice(&v)?;
                out(vec![
                    Val::Text(text(&k)?),
                    Val::Int(c.created_at as i64),
                    Val::Text(text(&v)?),
                ])?;
            }
        }
        "conversation_messages" => links(TreeId::ConversationMessages, out)?,
        "contacts" => records(TreeId::Contacts, out)?,
        "contact_conversations" => links(TreeId::ContactConversations, out)?,
        "tickets" => records(TreeId::Tickets, out)?,
        "inbox_states" => records(TreeId::Inboxes, out)?,
        "user_states" => records(TreeId::Users, out)?,
        "open_counts" => counters("open:", out)?,
        "round_robin" => counters("rr:", out)?,
        "outbox" => {
            for kv in engine.tree(TreeId::Outbox).iter() {
                let (k, v) = kv?;
                let item: OutboxItem = serde_json::from_slice(&v)?;
                out(vec![
                    Val::Text(text(&k)?),
                    Val::Int(item.next_attempt_at as i64),
                    Val::Text(text(&v)?),
                ])?;
            }
        }
        "inbox_definitions" | "inbox_addresses" => {
            // One tree, two kinds of key: `i\0<id>` -> definition, `a\0<address>` -> inbox id.
            let prefix: &[u8] = if table == "inbox_definitions" {
                b"i\0"
            } else {
                b"a\0"
            };
            for kv in engine.tree(TreeId::InboxDefinitions).scan_prefix(prefix) {
                let (k, v) = kv?;
                out(vec![
                    Val::Text(text(&k[prefix.len()..])?),
                    Val::Text(text(&v)?),
                ])?;
            }
        }
        "people" => {
            // `<kind>\0<id>` -> definition (users and teams created through the API).
            for kv in engine.tree(TreeId::People).iter() {
                let (k, v) = kv?;
                let key = text(&k)?;
                let (kind, id) = key.split_once('\0').unwrap_or((key.as_str(), ""));
                out(vec![
                    Val::Text(kind.to_string()),
                    Val::Text(id.to_string()),
                    Val::Text(text(&v)?),
                ])?;
            }
        }
        "store_state" => {
            // Small string values (retention cursors); the counters have tables of their own,
            // and what is derived stays behind.
            for kv in engine.tree(TreeId::Counters).iter() {
                let (k, v) = kv?;
                let key = text(&k)?;
                let derived = ["open:", "rr:", "seq:", "outbox:", "health:"];
                if derived.iter().any(|p| key.starts_with(p)) {
                    continue;
                }
                out(vec![Val::Text(key), Val::Text(text(&v)?)])?;
            }
        }
        other => unreachable!("no source for table {other}"),
    }
    Ok(())
}

/// The last ticket number given by the embedded store.
fn source_ticket_sequence(engine: &Engine) -> Result<i64, StoreError> {
    Ok(decode_counter(
        engine.tree(TreeId::Counters).get(b"seq:ticket")?,
    ))
}

/// Read back every table from the database, hashed as the source was.
fn destination(conn: &mut Conn) -> Result<CopySide, StoreError> {
    let mut tally = Tally::new();
    for t in TABLES {
        tally.begin(t.name);
        let cols: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            cols.join(", "),
            t.name,
            t.key
        );
        for row in conn.client.query(&sql, &[]).map_err(pg_error)? {
            let vals: Vec<Val> = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| match ty {
                    'i' => Val::Int(row.get(i)),
                    'b' => Val::Bytes(row.get(i)),
                    _ => Val::Text(row.get(i)),
                })
                .collect();
            tally.row(&vals);
        }
    }
    Ok(tally.finish(destination_ticket_sequence(conn)?))
}

fn destination_ticket_sequence(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(conn
        .client
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM ticket_numbers",
            &[],
        )
        .map_err(pg_error)?
        .get(0))
}

/// Copy the stopped embedded store under `data_dir` into the database `cfg` names, which must
/// hold no inbound data (its schema is applied first if missing).
pub(in crate::store) fn copy(
    data_dir: &Path,
    cache_bytes: u64,
    cfg: &PostgresConfig,
) -> Result<CopyReport, StoreError> {
    let db_path = crate::store::Store::data_path(data_dir);
    if !db_path.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no store in {}", data_dir.display()),
        )));
    }
    let engine = Engine::open(Some(&db_path), cache_bytes)?;
    let spool = Spool::open(&data_dir.join("spool"))?;
    super::off_runtime(|| {
        let mut conn = Conn::connect(cfg)?;
        schema::migrate(&mut conn)?;
        let before = destination(&mut conn)?;
        if before.counts.iter().any(|&(_, n)| n != 0) {
            let used: Vec<String> = before
                .counts
                .iter()
                .filter(|c| c.1 != 0)
                .map(|(t, n)| format!("{t}: {n}"))
                .collect();
            return Err(StoreError::Unavailable(format!(
                "the database at {} is not empty ({}): copy only into an empty database",
                crate::util::mask_url_password(&cfg.url),
                used.join(", ")
            )));
        }
        let mut tally = Tally::new();
        let mut tx = conn.client.transaction().map_err(pg_error)?;
        for t in TABLES {
            tally.begin(t.name);
            let cols: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            let insert = tx
                .prepare(&format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    t.name,
                    cols.join(", "),
                    marks.join(", ")
                ))
                .map_err(pg_error)?;
            source_rows(&engine, &spool, t.name, &mut |row| {
                tally.row(&row);
                let params: Vec<&(dyn ToSql + Sync)> = row.iter().map(Val::param).collect();
                tx.execute(&insert, &params).map(drop).map_err(pg_error)
            })?;
        }
        let tickets = source_ticket_sequence(&engine)?;
        if tickets > 0 {
            tx.execute("SELECT setval('ticket_numbers', $1, true)", &[&tickets])
                .map_err(pg_error)?;
        }
        tx.commit().map_err(pg_error)?;
        let source = tally.finish(tickets);
        let destination = destination(&mut conn)?;
        Ok(CopyReport {
            source,
            destination,
        })
    })
}
