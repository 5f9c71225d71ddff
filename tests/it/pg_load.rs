//! One server on PostgreSQL under concurrent SMTP load from one sender (#13): every message
//! updates the same inbox state and contact rows, the worst case for REPEATABLE READ commits.
//! Counts only, no timings.

use inbound::config::{PostgresConfig, StoreBackend};
use inbound::store::Store;

use crate::support::pg::PgCluster;
use crate::support::{Client, ConfigBuilder, TempDir, TestServer};

const CLIENTS: usize = 20;
const MESSAGES_PER_CLIENT: usize = 20;

/// 20 clients × 20 messages, all from one sender to one inbox, on a node with 4 committers:
/// every message gets `250` (none `451 4.3.0` from committers exhausting their retries on the
/// hot rows), and each is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sender_under_load_gets_no_451() {
    let pg = PgCluster::start();
    let url = pg.database();
    let migrate_url = url.clone();
    tokio::task::spawn_blocking(move || {
        Store::migrate_postgres(&PostgresConfig::for_tool(migrate_url))
    })
    .await
    .unwrap()
    .expect("migrate");
    let dir = TempDir::new("pg-load");
    let cfg = ConfigBuilder::test(dir.path())
        .set("store", "backend = \"postgres\"")
        .set("store", &format!("url = \"{url}\""))
        .set("store", "committers = 4")
        .set("limits", "messages_per_ip_per_minute = 1000000")
        .set("limits", "max_connections_per_ip = 100")
        .parse();
    assert!(matches!(cfg.store.backend, StoreBackend::Postgres(_)));
    let srv = TestServer::start_config(dir, cfg).await;
    let addr = srv.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                client.hello().await;
                let mut codes = Vec::new();
                for m in 0..MESSAGES_PER_CLIENT {
                    let body = format!(
                        "From: <one@sender.example>\r\nTo: support@demo.inbound.test\r\n\
                         Subject: load {c}.{m}\r\nMessage-ID: <load.{c}.{m}@sender.example>\r\n\
                         \r\nHello.\r\n"
                    );
                    let r = client
                        .send_message(
                            "one@sender.example",
                            &["support@demo.inbound.test"],
                            body.as_bytes(),
                        )
                        .await;
                    codes.push((r.code, r.last_word()));
                }
                codes
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut accepted = 0;
    for c in clients {
        for (code, word) in c.await.unwrap() {
            if code == 250 {
                accepted += 1;
            } else {
                refused.push((code, word));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {} refused, e.g. {:?}",
        refused.len(),
        CLIENTS * MESSAGES_PER_CLIENT,
        refused.first()
    );
    assert_eq!(accepted, CLIENTS * MESSAGES_PER_CLIENT);
    let store = srv.ctx.store.clone();
    let contact = tokio::task::spawn_blocking(move || store.contact("one@sender.example"))
        .await
        .unwrap()
        .unwrap()
        .expect("the sender's contact");
    assert_eq!(
        contact.conversation_count as usize,
        CLIENTS * MESSAGES_PER_CLIENT
    );
}
