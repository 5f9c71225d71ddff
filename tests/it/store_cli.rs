//! `inbound store migrate` and `inbound store copy` against a throwaway PostgreSQL, and what
//! `serve` says about a database it cannot use.

use crate::process::inbound;
use crate::support::pg::PgCluster;
use crate::support::ConfigBuilder;
use crate::support::{TempDir, TestServer};

fn pg_extra(url: &str) -> String {
    format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n")
}

/// A config file for `serve` on this database (the server is never expected to start).
fn serve_config(dir: &TempDir, url: &str) -> String {
    let path = dir.path().join("inbound.toml");
    ConfigBuilder::child_process(&dir.path().join("data"), "127.0.0.1:0")
        .extra(&pg_extra(url))
        .write(&path);
    path.to_string_lossy().into_owned()
}

#[test]
fn migrate_applies_the_schema_once_and_serve_refuses_a_newer_one() {
    let pg = PgCluster::start();
    let url = pg.database();
    let dir = TempDir::new("mig");
    let config = serve_config(&dir, &url);

    // Before any migration `serve` says what to do.
    inbound(&["serve", "--config", &config]).assert_fails_with("serve", "inbound store migrate");

    let out = inbound(&["store", "migrate", "--config", &config]);
    out.assert_ok("migrate");
    assert!(
        out.stdout_text().contains("from version 0 to 1"),
        "{}",
        out.stdout_text()
    );
    let again = inbound(&["store", "migrate", "--url", &url]);
    again.assert_ok("migrate again");
    assert!(again.stdout_text().contains("already at version 1"));

    // A newer inbound migrated the database: this one must not write to it.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.execute("INSERT INTO inbound_schema (version) VALUES (99)", &[])
        .unwrap();
    inbound(&["serve", "--config", &config]).assert_fails_with(
        "serve",
        "schema version 99, newer than this inbound knows (1)",
    );
    inbound(&["store", "migrate", "--url", &url]).assert_fails_with("migrate", "newer");
}

#[test]
fn serve_names_an_unreachable_database_with_its_password_masked() {
    let port = crate::process::free_port();
    let url = format!("postgres://inbound:s3cret@127.0.0.1:{port}/mail");
    let dir = TempDir::new("unreach");
    let config = serve_config(&dir, &url);
    let out = inbound(&["serve", "--config", &config]);
    out.assert_fails_with(
        "serve",
        &format!("cannot connect to PostgreSQL at postgres://inbound:***@127.0.0.1:{port}/mail"),
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
    // About the database, not the data directory's disk (that is sled's failure).
    assert!(!out.stderr.contains("bytes free"), "{}", out.stderr);
}

/// A sled store with inline and spooled bodies, a thread, a duplicate and a ticket is copied;
/// both sides' counts and checksums match, and a server on the database serves the same data.
#[tokio::test(flavor = "multi_thread")]
async fn copy_moves_a_stopped_sled_store_into_postgres() {
    let srv = TestServer::start().await;
    let send = |body: Vec<u8>| {
        let srv = &srv;
        async move {
            let mut c = srv.connect().await;
            c.hello().await;
            let r = c
                .send_message("a@client.example", &["support@demo.inbound.test"], &body)
                .await;
            assert_eq!(r.code, 250, "{r:?}");
            r.last_word()
        }
    };
    let head = "From: Ann <ann@client.example>\r\nSubject: Help\r\nMessage-ID: <c1@client.example>\r\n\r\n";
    let first = send(format!("{head}Hi.\r\n").into_bytes()).await;
    let big: String = "0123456789abcdef".repeat(20_000); // spooled, not inline
    let reply = send(
        format!("From: Ann <ann@client.example>\r\nSubject: Re: Help\r\nMessage-ID: <c2@client.example>\r\nIn-Reply-To: <c1@client.example>\r\n\r\n{big}\r\n")
            .into_bytes(),
    )
    .await;
    let dup = send(format!("{head}Hi.\r\n").into_bytes()).await;
    let store = srv.ctx.store.clone();
    let records: Vec<_> = [&first, &reply, &dup]
        .iter()
        .map(|q| store.get(q).unwrap().unwrap())
        .collect();
    assert_eq!(records[1].body_location, "spool", "the big body is spooled");
    let raws: Vec<Vec<u8>> = records
        .iter()
        .map(|r| store.raw_message(r).unwrap())
        .collect();
    let conv = records[0].routing[0].conversation.clone();
    drop(store);
    let dir = srv.stop().await;

    let pg = PgCluster::start();
    let url = pg.database();
    let out = inbound(&[
        "store",
        "copy",
        "--from-data-dir",
        &dir.path().to_string_lossy(),
        "--to",
        &url,
    ]);
    out.assert_ok("store copy");
    let text = out.stdout_text();
    let side = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} line in {text}"))
            .to_string()
    };
    assert_eq!(side("source"), side("destination"));
    assert!(side("source").contains("messages=3 bodies=3 "), "{text}");
    assert!(side("source").contains("conversations=1 "), "{text}");
    assert!(side("source").contains("ticket_sequence=1 "), "{text}");
    assert!(text.contains("copy complete"), "{text}");

    // Into a database that now holds data: refused.
    inbound(&[
        "store",
        "copy",
        "--from-data-dir",
        &dir.path().to_string_lossy(),
        "--to",
        &url,
    ])
    .assert_fails_with("second copy", "not empty");

    // The CLI reads the database with no node running.
    let cli_dir = TempDir::new("clipg");
    let cli_config = serve_config(&cli_dir, &url);
    let listed = inbound(&["messages", "list", "--config", &cli_config, "--json"]);
    listed.assert_ok("messages list on postgres");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let text = listed.to_string();
    for q in [&first, &reply, &dup] {
        assert!(text.contains(q.as_str()), "{q} missing from {text}");
    }

    // A node on the database serves what the sled server stored, byte for byte.
    let node = TestServer::start_in(TempDir::new("copied"), &pg_extra(&url)).await;
    let store = node.ctx.store.clone();
    assert_eq!(store.backend_name(), "postgres");
    for (q, raw) in [&first, &reply, &dup].iter().zip(&raws) {
        let r = store.get(q).unwrap().expect("copied record");
        assert_eq!(&store.raw_message(&r).unwrap(), raw);
    }
    let c = store.conversation(&conv).unwrap().expect("conversation");
    assert_eq!(c.message_count, 2, "the duplicate is not counted");
    assert!(c.ticket.is_some());
    // The thread index came along: a new reply on the database joins the copied thread, and the
    // next ticket number continues after the copied one.
    let mut client = node.connect().await;
    client.hello().await;
    let r = client
        .send_message(
            "a@client.example",
            &["support@demo.inbound.test"],
            b"From: Ann <ann@client.example>\r\nSubject: Re: Help\r\nMessage-ID: <c3@client.example>\r\nIn-Reply-To: <c2@client.example>\r\n\r\nAgain.\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let joined = store.get(&r.last_word()).unwrap().unwrap();
    assert_eq!(joined.routing[0].conversation, conv);
    drop(store);
    node.stop().await;
}
