//! The store conformance suite: each case runs against the embedded sled store and against a
//! real PostgreSQL (a throwaway cluster started by the test, `support::pg`), through the same
//! public interface the server uses, and must give the same answers on both.

use std::collections::BTreeSet;
use std::sync::Arc;

use inbound::config::{Config, PostgresConfig, StoreBackend, StoreConfig};
use inbound::store::model::{
    Contact, Conversation, ConversationStatus, Delivery, InboxState, OutboxItem, RoutingRecord,
};
use inbound::store::{keys, Body, MessageRecord, Store, TxError};

use crate::support::pg::PgCluster;
use crate::support::{self, TempDir};

/// An open store of one backend, with what must outlive it.
struct Opened {
    store: Store,
    name: &'static str,
    // Dropped after the store: the store's connections go before the cluster stops.
    _dir: TempDir,
    _pg: Option<PgCluster>,
}

fn pg_store_config(url: &str) -> StoreConfig {
    let mut cfg = Config::embedded_default().store;
    cfg.backend = StoreBackend::Postgres(PostgresConfig {
        url: url.to_string(),
        pool_size: 4,
        committers: 4,
        connect_timeout: std::time::Duration::from_secs(10),
        outbox_lease: PostgresConfig::DEFAULT_OUTBOX_LEASE,
    });
    cfg
}

fn open_sled() -> Opened {
    let dir = TempDir::new("conf");
    let store = Store::open(dir.path(), &Config::embedded_default().store).expect("open sled");
    Opened {
        store,
        name: "sled",
        _dir: dir,
        _pg: None,
    }
}

fn open_pg() -> Opened {
    let pg = PgCluster::start();
    let cfg = pg_store_config(&pg.database());
    let StoreBackend::Postgres(pg_cfg) = &cfg.backend else {
        unreachable!()
    };
    Store::migrate_postgres(pg_cfg).expect("migrate");
    let dir = TempDir::new("conf");
    let store = Store::open(dir.path(), &cfg).expect("open postgres");
    Opened {
        store,
        name: "postgres",
        _dir: dir,
        _pg: Some(pg),
    }
}

/// Run `case` on both backends.
fn on_both(case: impl Fn(&Opened)) {
    for open in [open_sled as fn() -> Opened, open_pg] {
        let o = open();
        assert_eq!(o.store.backend_name(), o.name);
        case(&o);
    }
}

/// A record as the pipeline makes one (the fields a store keeps; no routing yet).
fn record(subject: &str) -> MessageRecord {
    serde_json::from_value(serde_json::json!({
        "queue_id": keys::new_queue_id(),
        "received_at": keys::now_ms(),
        "client_ip": "127.0.0.1",
        "client_port": 2525,
        "helo": "client.example",
        "mail_from": "a@client.example",
        "rcpt": [],
        "size": 0,
        "sha256": "",
        "body_location": "inline",
        "body_type": "7BIT",
        "smtputf8": false,
        "trace_headers": "",
        "subject": subject,
    }))
    .expect("a record")
}

fn conversation(inbox: &str) -> Conversation {
    Conversation {
        id: keys::new_queue_id(),
        inbox: inbox.into(),
        created_at: keys::now_ms(),
        updated_at: keys::now_ms(),
        ..Default::default()
    }
}

fn outbox_item(due: u64) -> OutboxItem {
    let id = keys::new_queue_id();
    OutboxItem {
        id: id.clone(),
        created_at: keys::now_ms(),
        attempts: 0,
        next_attempt_at: due,
        last_error: None,
        delivery: Delivery::Webhook {
            endpoint: "e".into(),
            event: "test".into(),
            event_id: id,
            body: "{}".into(),
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A commit whose plan refuses leaves nothing behind (no record, body, conversation, contact,
/// outbox item, thread entry); one that succeeds makes all of them visible together.
#[test]
fn commit_is_atomic() {
    on_both(|o| {
        let rt = runtime();
        let store = &o.store;
        let conv = conversation("demo");
        let plan_for = |conv: Conversation, refuse: bool| -> inbound::store::Plan {
            Box::new(move |tx, rec: &mut MessageRecord| {
                tx.put_conversation(&conv)?;
                tx.put_thread_entry("demo", "<a@x>", &conv.id, &rec.queue_id)?;
                tx.put_contact(&Contact {
                    email: "a@x.example".into(),
                    ..Default::default()
                })?;
                tx.outbox_add(&outbox_item(0))?;
                rec.routing.push(RoutingRecord {
                    inbox: "demo".into(),
                    conversation: conv.id.clone(),
                    ..Default::default()
                });
                if refuse {
                    return Err(TxError::abort("refused by the test"));
                }
                Ok(())
            })
        };
        let refused = record("refused");
        let r = rt.block_on(store.commit(
            refused.clone(),
            Body::Inline(b"body".to_vec()),
            Some(plan_for(conv.clone(), true)),
        ));
        assert!(r.is_err(), "{}: a refused plan commits nothing", o.name);
        assert!(
            store.get(&refused.queue_id).unwrap().is_none(),
            "{}",
            o.name
        );
        assert!(
            store.conversation(&conv.id).unwrap().is_none(),
            "{}",
            o.name
        );
        assert!(
            store.contact("a@x.example").unwrap().is_none(),
            "{}",
            o.name
        );
        assert_eq!(store.outbox_depth().unwrap(), 0, "{}", o.name);
        let entry = store.view(|tx| tx.thread_entry("demo", "<a@x>")).unwrap();
        assert!(entry.is_none(), "{}", o.name);

        let ok = record("ok");
        let committed = rt
            .block_on(store.commit(
                ok.clone(),
                Body::Inline(b"the body\r\n".to_vec()),
                Some(plan_for(conv.clone(), false)),
            ))
            .unwrap();
        assert_eq!(committed.routing[0].conversation, conv.id);
        let stored = store.get(&ok.queue_id).unwrap().expect("record");
        assert_eq!(stored.routing[0].conversation, conv.id, "{}", o.name);
        assert_eq!(store.body(&stored).unwrap(), b"the body\r\n", "{}", o.name);
        assert!(
            store.conversation(&conv.id).unwrap().is_some(),
            "{}",
            o.name
        );
        assert!(
            store.contact("A@x.example").unwrap().is_some(),
            "{}",
            o.name
        );
        assert_eq!(store.outbox_depth().unwrap(), 1, "{}", o.name);
        let entry = store
            .view(|tx| tx.thread_entry("demo", "<a@x>"))
            .unwrap()
            .expect("thread entry");
        assert_eq!(
            (entry.conversation, entry.first),
            (conv.id.clone(), ok.queue_id.clone())
        );
    });
}

/// The same Message-ID recorded by many transactions at once: exactly one of them writes the
/// thread entry, every other one finds it (a duplicate), and the entry is the winner's.
#[test]
fn concurrent_message_ids_make_one_entry() {
    on_both(|o| {
        let store = &o.store;
        for round in 0..5 {
            let message_id = format!("<race-{round}@x>");
            let winners: Vec<Option<String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let message_id = &message_id;
                        s.spawn(move || {
                            let conv = keys::new_queue_id();
                            store
                                .update(|tx| {
                                    if tx.thread_entry("demo", message_id)?.is_some() {
                                        return Ok(None);
                                    }
                                    tx.put_thread_entry("demo", message_id, &conv, &conv)?;
                                    Ok(Some(conv.clone()))
                                })
                                .unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won: Vec<&String> = winners.iter().flatten().collect();
            assert_eq!(
                won.len(),
                1,
                "{}: one writer per Message-ID: {winners:?}",
                o.name
            );
            let entry = store
                .view(|tx| tx.thread_entry("demo", &message_id))
                .unwrap()
                .expect("entry");
            assert_eq!(&entry.conversation, won[0], "{}", o.name);
        }
    });
}

/// Ticket numbers are never given twice, open counts never go below zero, and a round robin
/// taken by many transactions at once hands out every turn exactly once.
#[test]
fn counters_and_round_robin_under_concurrency() {
    on_both(|o| {
        let store = &o.store;
        let (tickets, turns): (Vec<i64>, Vec<i64>) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = (Vec::new(), Vec::new());
                        for _ in 0..10 {
                            let (t, turn) = store
                                .update(|tx| {
                                    let t = tx.next_ticket_number()?;
                                    let turn = tx.round_robin_position("rule-a")?;
                                    tx.set_round_robin_position("rule-a", turn + 1)?;
                                    Ok((t, turn))
                                })
                                .unwrap();
                            mine.0.push(t);
                            mine.1.push(turn);
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).fold(
                (Vec::new(), Vec::new()),
                |mut acc, (t, r)| {
                    acc.0.extend(t);
                    acc.1.extend(r);
                    acc
                },
            )
        });
        let distinct: BTreeSet<i64> = tickets.iter().copied().collect();
        assert_eq!(distinct.len(), 60, "{}: ticket numbers given twice", o.name);
        assert!(tickets.iter().all(|&t| t >= 1), "{}", o.name);
        let turns: BTreeSet<i64> = turns.into_iter().collect();
        assert_eq!(turns, (0..60).collect(), "{}: every turn once", o.name);
        let rr = store.view(|tx| tx.round_robin_position("rule-a")).unwrap();
        assert_eq!(rr, 60, "{}", o.name);
        // Another rule's position is its own.
        assert_eq!(
            store.view(|tx| tx.round_robin_position("rule-b")).unwrap(),
            0
        );

        store
            .update(|tx| {
                tx.open_added("alice")?;
                tx.open_added("alice")?;
                tx.open_removed("alice")?;
                tx.open_removed("bob")?;
                Ok(())
            })
            .unwrap();
        let counts = store
            .view(|tx| Ok((tx.open_count("alice")?, tx.open_count("bob")?)))
            .unwrap();
        assert_eq!(counts, (1, 0), "{}", o.name);
    });
}

/// Outbox items: due ones in due order, a rescheduled one leaves the due set until its time,
/// removal and depth agree, an operator's view lists them all.
#[test]
fn outbox_add_due_reschedule_remove() {
    on_both(|o| {
        let store = &o.store;
        let now = keys::now_ms();
        let items = [
            outbox_item(now - 3000),
            outbox_item(now - 2000),
            outbox_item(now - 1000),
        ];
        let later = outbox_item(now + 3_600_000);
        store
            .update(|tx| {
                for i in items.iter().chain([&later]) {
                    tx.outbox_add(i)?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(store.outbox_depth().unwrap(), 4, "{}", o.name);
        assert_eq!(store.outbox_items().unwrap().len(), 4, "{}", o.name);
        assert_eq!(
            store.outbox_oldest().unwrap().map(|i| i.id),
            Some(items[0].id.clone())
        );
        let due: Vec<String> = store
            .outbox_due(now, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(
            due,
            items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
            "{}",
            o.name
        );

        // A failed attempt: settled (as the outbox worker does) with a later time.
        let rescheduled = store
            .update(|tx| {
                let old = tx.outbox_claimed(&items[0].id)?.expect("ours");
                let mut cur = old.clone();
                cur.attempts += 1;
                cur.last_error = Some("503".into());
                cur.next_attempt_at = now + 60_000;
                tx.outbox_update(&old, &cur)?;
                Ok(cur)
            })
            .unwrap();
        // Delivered: removed.
        store
            .update(|tx| {
                let old = tx.outbox_claimed(&items[1].id)?.expect("ours");
                tx.outbox_remove(&old)
            })
            .unwrap();
        assert_eq!(store.outbox_depth().unwrap(), 3, "{}", o.name);
        assert!(store.outbox_due(now + 30_000, 10).unwrap().is_empty() || o.name == "sled");
        let stored = store.view(|tx| tx.outbox_item(&items[0].id)).unwrap();
        assert_eq!(stored, Some(rescheduled), "{}", o.name);
        // When its time comes it is due again.
        let due: Vec<String> = store
            .outbox_due(now + 61_000, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert!(due.contains(&items[0].id), "{}: {due:?}", o.name);
        assert!(!due.contains(&items[1].id), "{}", o.name);
    });
}

/// Pages of contacts and messages: no gaps, no duplicates, a bounded scan; newest first.
#[test]
fn pages_and_newest() {
    on_both(|o| {
        let store = &o.store;
        let emails: Vec<String> = (0..10).map(|i| format!("c{i}@x.example")).collect();
        store
            .update(|tx| {
                for e in &emails {
                    tx.put_contact(&Contact {
                        email: e.clone(),
                        ..Default::default()
                    })?;
                }
                Ok(())
            })
            .unwrap();
        let walk = |limit: usize, max_scan: usize, keep: &(dyn Fn(&Contact) -> bool + Sync)| {
            let mut pages: Vec<Vec<String>> = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let p = store
                    .contacts_page(after.as_deref(), limit, max_scan, |c: &Contact| keep(c))
                    .unwrap();
                pages.push(p.items.into_iter().map(|c| c.email).collect());
                match p.next {
                    Some(n) => after = Some(n),
                    None => return pages,
                }
                assert!(pages.len() < 100, "no end");
            }
        };
        let all = walk(3, 1000, &|_| true);
        assert_eq!(
            all.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1],
            "{}",
            o.name
        );
        assert_eq!(all.concat(), emails);
        let exact = walk(5, 1000, &|_| true);
        assert_eq!(
            exact.iter().map(Vec::len).collect::<Vec<_>>(),
            [5, 5],
            "{}",
            o.name
        );
        let even = |c: &Contact| c.email[1..2].parse::<u32>().unwrap() % 2 == 0;
        let sparse = walk(2, 3, &even);
        let want: Vec<String> = emails
            .iter()
            .filter(|e| e[1..2].parse::<u32>().unwrap() % 2 == 0)
            .cloned()
            .collect();
        assert_eq!(sparse.concat(), want, "{}", o.name);
        let none = walk(5, 4, &|_| false);
        assert!(none.concat().is_empty());
        assert_eq!(none.len(), 3, "{}: 10 records read 4 at a time", o.name);

        // Messages newest first, with a cursor.
        let rt = runtime();
        let mut ids = Vec::new();
        for i in 0..5 {
            let r = rt
                .block_on(store.commit(record(&format!("m{i}")), Body::Inline(vec![]), None))
                .unwrap();
            ids.push(r.queue_id);
        }
        let newest: Vec<String> = store
            .list_newest(None, 3, 0, 100, |_| true)
            .unwrap()
            .into_iter()
            .map(|r| r.queue_id)
            .collect();
        assert_eq!(
            newest,
            vec![ids[4].clone(), ids[3].clone(), ids[2].clone()],
            "{}",
            o.name
        );
        let before: Vec<String> = store
            .list_newest(Some(&ids[2]), 10, 0, 100, |_| true)
            .unwrap()
            .into_iter()
            .map(|r| r.queue_id)
            .collect();
        assert_eq!(before, vec![ids[1].clone(), ids[0].clone()], "{}", o.name);
        let oldest: Vec<String> = store
            .list(None, 2)
            .unwrap()
            .into_iter()
            .map(|r| r.queue_id)
            .collect();
        assert_eq!(oldest, ids[..2], "{}", o.name);
    });
}

/// Retention's removals keep every index in step: a closed conversation goes with its ticket,
/// contact link, thread entries and the messages only it held; an expired body is gone while
/// its record stays.
#[test]
fn retention_removal_keeps_indexes_in_step() {
    on_both(|o| {
        let rt = runtime();
        let store = &o.store;
        let mut conv = conversation("demo");
        conv.status = ConversationStatus::Closed;
        conv.contact = "c@x.example".into();
        conv.ticket = Some("T1".into());
        let c2 = conv.clone();
        let plan: inbound::store::Plan = Box::new(move |tx, rec: &mut MessageRecord| {
            let mut conv = c2.clone();
            tx.add_to_conversation(&mut conv, &rec.queue_id)?;
            tx.put_conversation(&conv)?;
            tx.put_ticket(&inbound::store::model::Ticket {
                id: "T1".into(),
                conversation: conv.id.clone(),
                ..Default::default()
            })?;
            tx.put_contact(&Contact {
                email: "c@x.example".into(),
                conversation_count: 1,
                ..Default::default()
            })?;
            tx.link_contact("c@x.example", &conv.id)?;
            let mid =
                keys::thread_message_id(&rec.message_id, &rec.from, &rec.subject, &rec.sha256);
            tx.put_thread_entry("demo", &mid, &conv.id, &rec.queue_id)?;
            rec.routing.push(RoutingRecord {
                inbox: "demo".into(),
                conversation: conv.id.clone(),
                ..Default::default()
            });
            Ok(())
        });
        let mut rec = record("closed");
        rec.message_id = "<ret@x>".into();
        let rec = rt
            .block_on(store.commit(rec, Body::Inline(b"x".to_vec()), Some(plan)))
            .unwrap();
        assert_eq!(
            store
                .conversation_messages(&conv.id, None, 10)
                .unwrap()
                .items,
            std::slice::from_ref(&rec.queue_id)
        );
        assert_eq!(
            store.contact_conversations("c@x.example").unwrap(),
            std::slice::from_ref(&conv.id)
        );

        // A body expires: the record stays, marked.
        let other = rt
            .block_on(store.commit(record("other"), Body::Inline(b"gone".to_vec()), None))
            .unwrap();
        assert!(store.expire_body(&other.queue_id).unwrap(), "{}", o.name);
        let expired = store.get(&other.queue_id).unwrap().unwrap();
        assert_eq!(expired.body_location, inbound::store::BODY_EXPIRED);
        assert!(store.body(&expired).is_err(), "{}", o.name);

        let (convs, msgs) = store
            .delete_closed_conversations(&[conv.id.clone()], keys::now_ms() + 1)
            .unwrap();
        assert_eq!((convs, msgs), (1, 1), "{}", o.name);
        assert!(
            store.conversation(&conv.id).unwrap().is_none(),
            "{}",
            o.name
        );
        assert!(store.ticket("T1").unwrap().is_none(), "{}", o.name);
        assert!(store.get(&rec.queue_id).unwrap().is_none(), "{}", o.name);
        assert!(store
            .contact_conversations("c@x.example")
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .contact("c@x.example")
                .unwrap()
                .unwrap()
                .conversation_count,
            0
        );
        let mid = keys::thread_message_id(&rec.message_id, &rec.from, &rec.subject, &rec.sha256);
        assert!(store
            .view(|tx| tx.thread_entry("demo", &mid))
            .unwrap()
            .is_none());
        assert!(store
            .conversation_messages(&conv.id, None, 10)
            .unwrap()
            .items
            .is_empty());
        // The other message is untouched.
        assert!(store.get(&other.queue_id).unwrap().is_some(), "{}", o.name);
    });
}

/// Threading by In-Reply-To and dedup by Message-ID through the real pipeline over SMTP, on a
/// server whose store is each backend in turn.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_threading_and_dedup_on_both_backends() {
    let pg = PgCluster::start();
    let url = pg.database();
    {
        let StoreBackend::Postgres(c) = pg_store_config(&url).backend else {
            unreachable!()
        };
        Store::migrate_postgres(&c).unwrap();
    }
    for extra in [
        String::new(),
        format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
    ] {
        let srv = support::TestServer::start_with(&extra).await;
        let send = |body: Vec<u8>| {
            let srv = &srv;
            async move {
                let mut c = srv.connect().await;
                c.hello().await;
                let r = c
                    .send_message("a@client.example", &["support@demo.inbound.test"], &body)
                    .await;
                assert_eq!(r.code, 250, "{r:?}");
                srv.ctx.store.get(&r.last_word()).unwrap().expect("record")
            }
        };
        let first = send(b"From: Ann <ann@client.example>\r\nSubject: Help\r\nMessage-ID: <t1@client.example>\r\n\r\nHi.\r\n".to_vec()).await;
        let reply = send(b"From: Ann <ann@client.example>\r\nSubject: Re: Help\r\nMessage-ID: <t2@client.example>\r\nIn-Reply-To: <t1@client.example>\r\n\r\nMore.\r\n".to_vec()).await;
        let again = send(b"From: Ann <ann@client.example>\r\nSubject: Help\r\nMessage-ID: <t1@client.example>\r\n\r\nHi.\r\n".to_vec()).await;
        let conv = &first.routing[0].conversation;
        assert_eq!(
            &reply.routing[0].conversation,
            conv,
            "{}: the reply joins",
            srv.ctx.store.backend_name()
        );
        assert_eq!(&again.routing[0].conversation, conv);
        assert_eq!(
            again.routing[0].duplicate_of.as_deref(),
            Some(first.queue_id.as_str())
        );
        let c = srv.ctx.store.conversation(conv).unwrap().unwrap();
        // A duplicate is recorded as such, not counted again.
        assert_eq!(c.message_count, 2, "{}", srv.ctx.store.backend_name());
        srv.stop().await;
    }
}

/// Two nodes (two stores on one database) and the outbox lease: an item claimed by one is not
/// handed to the other; when the lease runs out the other takes it, and the first can no longer
/// settle it (its completion would undo the new owner's claim).
#[test]
fn outbox_lease_between_two_nodes() {
    let pg = PgCluster::start();
    let url = pg.database();
    let cfg = pg_store_config(&url);
    let StoreBackend::Postgres(pg_cfg) = &cfg.backend else {
        unreachable!()
    };
    Store::migrate_postgres(pg_cfg).unwrap();
    let (da, db) = (TempDir::new("na"), TempDir::new("nb"));
    let a = Arc::new(Store::open(da.path(), &cfg).unwrap());
    let b = Arc::new(Store::open(db.path(), &cfg).unwrap());
    assert_ne!(a.node_id(), b.node_id());
    let item = outbox_item(keys::now_ms() - 1);
    a.update(|tx| tx.outbox_add(&item)).unwrap();

    let claimed = a.outbox_due(keys::now_ms(), 10).unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        b.outbox_due(keys::now_ms(), 10).unwrap().is_empty(),
        "leased to a"
    );
    assert!(
        a.outbox_due(keys::now_ms(), 10).unwrap().is_empty(),
        "not handed out twice"
    );
    // The lease runs out (as if a died): its due time is now.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.execute("UPDATE outbox SET due = 0", &[]).unwrap();
    let taken = b.outbox_due(keys::now_ms(), 10).unwrap();
    assert_eq!(taken.len(), 1, "b takes the expired lease");
    // a comes back and tries to record its delivery: not its item any more.
    let settled = a.update(|tx| tx.outbox_claimed(&item.id)).unwrap();
    assert!(settled.is_none(), "a's lease is gone");
    let mine = b
        .update(|tx| tx.outbox_claimed(&item.id))
        .unwrap()
        .expect("b's");
    b.update(|tx| tx.outbox_remove(&mine)).unwrap();
    assert_eq!(a.outbox_depth().unwrap(), 0);
}

/// An API inbox definition as stored (the fields a created inbox has).
fn definition(id: &str, address: &str) -> inbound::store::model::InboxDefinition {
    serde_json::from_value(serde_json::json!({
        "spec": { "id": id, "address": address },
        "status": "active",
        "created_at": 1,
        "updated_at": 1,
    }))
    .expect("a definition")
}

/// Inboxes created through the API: definitions by id, addresses reserved for good (whatever
/// their case), released only on request, and one address claimed by many transactions at
/// once goes to exactly one inbox.
#[test]
fn inbox_definitions_and_address_reservations() {
    on_both(|o| {
        let store = &o.store;
        store
            .update(|tx| tx.put_inbox_definition(&definition("b-team", "B@acme.inbound.test")))
            .unwrap();
        store
            .update(|tx| tx.put_inbox_definition(&definition("a-team", "a@acme.inbound.test")))
            .unwrap();
        let ids: Vec<String> = store
            .inbox_definitions()
            .unwrap()
            .into_iter()
            .map(|d| d.spec.id)
            .collect();
        assert_eq!(ids, ["a-team", "b-team"], "{}: in id order", o.name);
        let b = store.inbox_definition("b-team").unwrap().expect("b-team");
        assert_eq!(b.address(), "B@acme.inbound.test");
        assert!(store.inbox_definition("nobody").unwrap().is_none());
        let owner = store
            .view(|tx| tx.inbox_address_owner("b@ACME.inbound.test"))
            .unwrap();
        assert_eq!(owner.as_deref(), Some("b-team"), "{}", o.name);
        store
            .update(|tx| tx.release_inbox_address("b@acme.inbound.test"))
            .unwrap();
        assert!(store
            .view(|tx| tx.inbox_address_owner("b@acme.inbound.test"))
            .unwrap()
            .is_none());

        let winners: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    s.spawn(move || {
                        let def = definition(&format!("t{i}"), "race@acme.inbound.test");
                        store
                            .update(|tx| {
                                if tx.inbox_address_owner(def.address())?.is_some() {
                                    return Ok(false);
                                }
                                tx.put_inbox_definition(&def)?;
                                Ok(true)
                            })
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            winners.iter().filter(|w| **w).count(),
            1,
            "{}: {winners:?}",
            o.name
        );
    });
}

/// Users and teams created through the API: kept by kind and id, listed in id order, changed in
/// place and removed, the same on both backends.
#[test]
fn people_definitions_by_kind_and_id() {
    use inbound::config::raw::{RawTeam, RawUser};
    use inbound::store::PersonDefinition;
    let user = |id: &str, email: &str| PersonDefinition {
        spec: RawUser {
            id: id.into(),
            name: None,
            email: Some(email.into()),
            available: None,
        },
        created_at: 1,
        updated_at: 1,
    };
    on_both(|o| {
        let store = &o.store;
        for (id, email) in [("zoe", "zoe@acme.example"), ("bob", "bob@acme.example")] {
            store.update(|tx| tx.put_person(&user(id, email))).unwrap();
        }
        let team = PersonDefinition {
            spec: RawTeam {
                id: "bob".into(),
                name: Some("A team sharing an id with a user".into()),
                members: vec!["zoe".into()],
            },
            created_at: 2,
            updated_at: 2,
        };
        store.update(|tx| tx.put_person(&team)).unwrap();
        let users: Vec<String> = store
            .people::<RawUser>()
            .unwrap()
            .into_iter()
            .map(|d| d.spec.id)
            .collect();
        assert_eq!(users, ["bob", "zoe"], "{}: users in id order", o.name);
        let teams = store.people::<RawTeam>().unwrap();
        assert_eq!(teams.len(), 1, "{}", o.name);
        assert_eq!(teams[0].spec.members, ["zoe"], "{}", o.name);

        // Changed in place, read back inside and outside a transaction.
        store
            .update(|tx| tx.put_person(&user("bob", "robert@acme.example")))
            .unwrap();
        let bob = store.person::<RawUser>("bob").unwrap().expect("bob");
        assert_eq!(bob.spec.email.as_deref(), Some("robert@acme.example"));
        let in_tx = store.view(|tx| tx.person::<RawUser>("bob")).unwrap();
        assert_eq!(in_tx.and_then(|d| d.spec.email), bob.spec.email);

        // Removing the user leaves the team of the same id.
        store
            .update(|tx| tx.remove_person::<RawUser>("bob"))
            .unwrap();
        assert!(
            store.person::<RawUser>("bob").unwrap().is_none(),
            "{}",
            o.name
        );
        assert!(
            store.person::<RawTeam>("bob").unwrap().is_some(),
            "{}",
            o.name
        );
    });
}

/// Two nodes sweep retention at once over the same messages: each due message is removed
/// once (the counts add up to the number due, not more), neither sweep fails, none is left.
#[test]
fn two_nodes_sweeping_at_once_remove_each_message_once() {
    let pg = PgCluster::start();
    let cfg = pg_store_config(&pg.database());
    let StoreBackend::Postgres(pg_cfg) = &cfg.backend else {
        unreachable!()
    };
    Store::migrate_postgres(pg_cfg).unwrap();
    let (da, db) = (TempDir::new("na"), TempDir::new("nb"));
    let a = Arc::new(Store::open(da.path(), &cfg).unwrap());
    let b = Arc::new(Store::open(db.path(), &cfg).unwrap());
    let rt = runtime();
    const N: usize = 60;
    for i in 0..N {
        let mut rec = record(&format!("spam {i}"));
        rec.quarantined = true;
        rt.block_on(a.commit(rec, Body::Inline(b"x".to_vec()), None))
            .unwrap();
    }
    let retention = inbound::config::RetentionConfig {
        quarantine: Some(std::time::Duration::from_secs(3600)),
        session_metadata: None,
        ..Default::default()
    };
    // A day from now: every message is past the hour.
    let later = keys::now_ms() + 86_400_000;
    let reports: Vec<_> = std::thread::scope(|s| {
        let sweeps: Vec<_> = [&a, &b]
            .map(|store| {
                let retention = &retention;
                s.spawn(move || inbound::store::retention::sweep_once(store, retention, later))
            })
            .into_iter()
            .collect();
        sweeps.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &reports {
        assert_eq!(r.error, None, "{r:?}");
    }
    let removed: usize = reports.iter().map(|r| r.quarantined_deleted).sum();
    assert_eq!(removed, N, "{reports:?}");
    assert!(a.list(None, 100).unwrap().is_empty());
}

/// Issue #13: many concurrent commits from one sender to one inbox, each updating the same
/// contact and inbox state rows (as every message's threading plan does) all succeed and none
/// loses an update. On PostgreSQL with several committers, their REPEATABLE READ transactions
/// used to fail each other on those rows until some ran out of attempts (`451 4.3.0`).
#[test]
fn concurrent_commits_to_one_contact_all_succeed() {
    const CLIENTS: usize = 20;
    const COMMITS: usize = 400;
    on_both(|o| {
        let rt = runtime();
        let store = &o.store;
        let plan = || -> inbound::store::Plan {
            Box::new(|tx, rec: &mut MessageRecord| {
                let conv = conversation("demo");
                tx.put_conversation(&conv)?;
                let mut contact = tx.contact("one@sender.example")?.unwrap_or(Contact {
                    email: "one@sender.example".into(),
                    ..Default::default()
                });
                if tx.link_contact("one@sender.example", &conv.id)? {
                    contact.conversation_count += 1;
                }
                tx.put_contact(&contact)?;
                tx.put_thread_entry("demo", &rec.queue_id, &conv.id, &rec.queue_id)?;
                let mut st = tx
                    .inbox_state("demo")?
                    .unwrap_or_else(|| InboxState::pending("demo", "support@demo.inbound.test"));
                st.messages += 1;
                tx.put_inbox_state(&st)?;
                Ok(())
            })
        };
        // As SMTP sessions commit: each client waits for its answer before its next message,
        // so batches stay small and the committers run side by side.
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for m in 0..COMMITS / CLIENTS {
                            let mut rec = record(&format!("m{c}.{m}"));
                            rec.rcpt = vec![inbound::store::RcptRecord {
                                address: "support@demo.inbound.test".into(),
                                inbox: "demo".into(),
                                tag: None,
                            }];
                            rec.attribution = Some(inbound::store::model::AttributionRecord {
                                email: "one@sender.example".into(),
                                name: None,
                                method: "header_from".into(),
                                forwarded_by: None,
                            });
                            let body = Body::Inline(b"x".to_vec());
                            out.push(store.commit(rec, body, Some(plan())).await);
                        }
                        out
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.extend(t.await.unwrap());
            }
            out
        });
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert!(
            failed.is_empty(),
            "{}: {} failed: {:?}",
            o.name,
            failed.len(),
            failed.first()
        );
        let contact = store.contact("one@sender.example").unwrap().unwrap();
        assert_eq!(contact.conversation_count, COMMITS as u64, "{}", o.name);
        let st = store.inbox_state("demo").unwrap().unwrap();
        assert_eq!(st.messages, COMMITS as u64, "{}", o.name);
        assert_eq!(
            store
                .contact_conversations("one@sender.example")
                .unwrap()
                .len(),
            COMMITS,
            "{}",
            o.name
        );
    });
}

/// Issue #13: a transaction reads its own writes, removals included, whether the backend
/// writes them at once (sled) or holds them back until the commit and writes each table in
/// one statement (PostgreSQL): a conversation, contact, ticket, inbox state, thread entry and
/// outbox item written and then read, updated, unlinked and removed in one transaction end
/// as the last operation left them.
#[test]
fn a_transaction_reads_its_own_writes_and_removals() {
    on_both(|o| {
        let store = &o.store;
        let conv = conversation("demo");
        let (kept, dropped) = (outbox_item(0), outbox_item(0));
        store
            .update(|tx| {
                let mut c = conv.clone();
                tx.start_conversation(&mut c, "q1")?;
                tx.add_to_conversation(&mut c, "q1")?;
                assert_eq!(
                    c.message_count, 1,
                    "{}: the first message counts once",
                    o.name
                );
                tx.put_conversation(&c)?;
                assert_eq!(tx.conversation(&c.id)?.map(|c| c.message_count), Some(1));

                tx.put_thread_entry("demo", "<own@x>", &c.id, "q1")?;
                let entry = tx.thread_entry("demo", "<own@x>")?.expect("own entry");
                assert_eq!(entry.first, "q1", "{}", o.name);
                tx.put_thread_entry("demo", "<gone@x>", &c.id, "q1")?;

                let contact = Contact {
                    email: "own@sender.example".into(),
                    conversation_count: 1,
                    ..Default::default()
                };
                tx.put_contact(&contact)?;
                tx.link_new_contact("own@sender.example", &c.id)?;
                assert!(
                    !tx.link_contact("own@sender.example", &c.id)?,
                    "{}: a new link is there for the rest of the transaction",
                    o.name
                );
                assert_eq!(
                    tx.contact("own@sender.example")?
                        .map(|c| c.conversation_count),
                    Some(1)
                );

                let mut st = InboxState::pending("demo", "support@demo.inbound.test");
                for _ in 0..3 {
                    st = tx.inbox_state("demo")?.unwrap_or(st);
                    st.messages += 1;
                    tx.put_inbox_state(&st)?;
                }

                tx.outbox_add(&kept)?;
                tx.outbox_add(&dropped)?;
                assert!(tx.outbox_item(&kept.id)?.is_some(), "{}", o.name);
                // One node settles every item; a shared store only those it holds a lease
                // on, and nobody holds one on an item not yet committed.
                assert_eq!(
                    tx.outbox_claimed(&kept.id)?.is_some(),
                    o.name == "sled",
                    "{}",
                    o.name
                );
                let mut later = kept.clone();
                later.attempts = 1;
                later.last_error = Some("first try failed".into());
                tx.outbox_update(&kept, &later)?;
                tx.outbox_remove(&dropped)?;
                assert!(tx.outbox_item(&dropped.id)?.is_none(), "{}", o.name);
                Ok(())
            })
            .unwrap();
        // A later transaction removes some of it: the removal wins over the earlier writes.
        store
            .update(|tx| {
                assert!(tx.thread_entry("demo", "<gone@x>")?.is_some());
                tx.remove_thread_entry("demo", "<gone@x>")?;
                assert!(tx.thread_entry("demo", "<gone@x>")?.is_none(), "{}", o.name);
                Ok(())
            })
            .unwrap();

        let c = store.conversation(&conv.id).unwrap().expect("conversation");
        assert_eq!(c.message_count, 1, "{}", o.name);
        let entry = store
            .view(|tx| tx.thread_entry("demo", "<own@x>"))
            .unwrap()
            .expect("entry");
        assert_eq!(entry.conversation, conv.id, "{}", o.name);
        assert!(store
            .view(|tx| tx.thread_entry("demo", "<gone@x>"))
            .unwrap()
            .is_none());
        assert_eq!(
            store.contact_conversations("own@sender.example").unwrap(),
            vec![conv.id.clone()],
            "{}",
            o.name
        );
        let st = store.view(|tx| tx.inbox_state("demo")).unwrap().unwrap();
        assert_eq!(st.messages, 3, "{}: the last of three writes", o.name);
        let items = store.outbox_items().unwrap();
        assert_eq!(items.len(), 1, "{}: {items:?}", o.name);
        assert_eq!(items[0].id, kept.id, "{}", o.name);
        assert_eq!(items[0].attempts, 1, "{}: the update of a new item", o.name);
    });
}

/// Issue #13: the committer's batches. The same Message-ID committed by many sessions at once,
/// so that copies meet in one batch (PostgreSQL reads a batch's thread entries ahead, all
/// absent, and holds the first copy's entry back until the commit): exactly one copy writes
/// the entry, every other one is a duplicate of it. Then a message whose entry is in the
/// store (read ahead as present) removes it and writes its own: the removal is seen.
#[test]
fn copies_in_one_batch_are_duplicates_and_removals_are_seen() {
    on_both(|o| {
        let rt = runtime();
        let store = &o.store;
        let template = record("same");
        let key = keys::thread_message_id(
            &template.message_id,
            &template.from,
            &template.subject,
            &template.sha256,
        );
        let plan = |key: String| -> inbound::store::Plan {
            Box::new(move |tx, rec: &mut MessageRecord| {
                let conv = match tx.thread_entry("demo", &key)? {
                    Some(e) => e.conversation,
                    None => {
                        let conv = conversation("demo");
                        tx.put_conversation(&conv)?;
                        tx.put_thread_entry("demo", &key, &conv.id, &rec.queue_id)?;
                        conv.id
                    }
                };
                rec.routing.push(RoutingRecord {
                    inbox: "demo".into(),
                    conversation: conv,
                    ..Default::default()
                });
                Ok(())
            })
        };
        let copy = || {
            let mut rec = template.clone();
            rec.queue_id = keys::new_queue_id();
            rec.rcpt = vec![inbound::store::RcptRecord {
                address: "support@demo.inbound.test".into(),
                inbox: "demo".into(),
                tag: None,
            }];
            rec
        };
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (store, rec, plan) = (store.clone(), copy(), plan(key.clone()));
                    tokio::spawn(async move {
                        store
                            .commit(rec, Body::Inline(b"x".to_vec()), Some(plan))
                            .await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap().expect("commit"));
            }
            out
        });
        let conversations: BTreeSet<&str> = results
            .iter()
            .map(|r| r.routing[0].conversation.as_str())
            .collect();
        assert_eq!(conversations.len(), 1, "{}: {conversations:?}", o.name);
        let entry = store
            .view(|tx| tx.thread_entry("demo", &key))
            .unwrap()
            .expect("entry");
        assert!(
            results.iter().any(|r| r.queue_id == entry.first),
            "{}: the entry is one copy's",
            o.name
        );

        let last = copy();
        let replaced: inbound::store::Plan = Box::new(|tx, rec: &mut MessageRecord| {
            let key =
                keys::thread_message_id(&rec.message_id, &rec.from, &rec.subject, &rec.sha256);
            assert!(tx.thread_entry("demo", &key)?.is_some());
            tx.remove_thread_entry("demo", &key)?;
            assert!(
                tx.thread_entry("demo", &key)?.is_none(),
                "a removal is seen"
            );
            tx.put_thread_entry("demo", &key, "new-conversation", &rec.queue_id)?;
            Ok(())
        });
        rt.block_on(store.commit(last.clone(), Body::Inline(b"x".to_vec()), Some(replaced)))
            .expect("commit");
        let entry = store
            .view(|tx| tx.thread_entry("demo", &key))
            .unwrap()
            .expect("entry");
        assert_eq!(
            (entry.conversation.as_str(), entry.first.as_str()),
            ("new-conversation", last.queue_id.as_str()),
            "{}",
            o.name
        );
    });
}

/// A commit plan that panics (a bug of ours, not the sender's) fails its own message with an
/// error, and the committer goes on: the next message to the same inbox commits. On
/// PostgreSQL every inbox has one committer (#13): had the panic ended it, that inbox's mail
/// would have had nobody left to commit it.
#[test]
fn a_plan_that_panics_fails_its_message_and_the_committer_goes_on() {
    on_both(|o| {
        let rt = runtime();
        let store = &o.store;
        let to_demo = || {
            let mut rec = record("panic");
            rec.rcpt = vec![inbound::store::RcptRecord {
                address: "support@demo.inbound.test".into(),
                inbox: "demo".into(),
                tag: None,
            }];
            rec
        };
        let panics: inbound::store::Plan = Box::new(|_, _| panic!("a plan's bug"));
        let r = rt.block_on(store.commit(to_demo(), Body::Inline(b"x".to_vec()), Some(panics)));
        assert!(r.is_err(), "{}: {r:?}", o.name);
        let next = to_demo();
        let committed = rt.block_on(store.commit(next.clone(), Body::Inline(b"x".to_vec()), None));
        assert!(committed.is_ok(), "{}: {committed:?}", o.name);
        assert!(store.get(&next.queue_id).unwrap().is_some(), "{}", o.name);
    });
}
