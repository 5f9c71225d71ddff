//! Issue #11, against the real binary: what one hostile input or a bad neighbour may cost is
//! bounded. Memory per message (a header bomb, RSS from /proc), file descriptors (half-open HTTP
//! connections under a low RLIMIT_NOFILE), the modes of the files the server creates, and the
//! shutdown deadline with a webhook receiver that never answers.
use crate::process;
use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use process::{free_port, ServerProcess};
use support::{Client, ConfigBuilder, TempDir};

const MIB: u64 = 1024 * 1024;

/// A References header of `bytes` bytes, folded into lines of ids.
fn references_bomb(bytes: usize) -> Vec<u8> {
    let mut m = b"From: a@example.com\r\nSubject: bomb\r\nReferences:".to_vec();
    let mut i = 0u64;
    while m.len() < bytes {
        m.extend_from_slice(format!(" <id{i:012}@bomb.example>\r\n").as_bytes());
        i += 1;
    }
    m.extend_from_slice(b"\r\nbody\r\n.\r\n");
    m
}

/// Issue #11: one 24 MiB References header took the process to 633 MiB (eight to 2.27 GiB).
/// Now the header section is capped while it streams in: 552 5.3.4, memory stays near idle.
#[tokio::test(flavor = "multi_thread")]
async fn a_24_mib_references_header_is_refused_552_and_memory_stays_bounded() {
    let dir = TempDir::new("bomb");
    let cfg = dir.path().join("inbound.toml");
    ConfigBuilder::child_process(&dir.path().join("data"), "127.0.0.1:0").write(&cfg);
    let srv = ServerProcess::start(&cfg, free_port(), &dir.path().join("log"));
    let idle_kb = srv.status_kb("VmHWM");
    let bomb = references_bomb(24 * MIB as usize);
    let mut c = Client::connect(srv.addr).await;
    c.expect("220").await;
    c.cmd("EHLO bomber.example", "250").await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(&bomb).await;
    let reply = c.expect("552 5.3.4").await.text();
    assert!(reply.contains("header"), "{reply}");
    // The connection stays usable.
    c.cmd("NOOP", "250").await;
    let peak_kb = srv.status_kb("VmHWM");
    eprintln!("VmHWM idle {idle_kb} kB, after the header bomb {peak_kb} kB");
    assert!(
        peak_kb < idle_kb + 96 * 1024,
        "a refused header bomb raised the peak RSS from {idle_kb} kB to {peak_kb} kB"
    );
}

/// Issue #11: 1,100 half-sent HTTP requests without a token were never timed out; SMTP accepts
/// then failed with EMFILE. Under a low RLIMIT_NOFILE that the server cannot raise, the API's
/// connection cap and SMTP's clamped permits leave SMTP its descriptors.
#[tokio::test(flavor = "multi_thread")]
async fn half_open_api_connections_under_a_low_file_limit_do_not_stop_smtp() {
    let dir = TempDir::new("fds");
    let cfg = dir.path().join("inbound.toml");
    let api_port = free_port();
    ConfigBuilder::child_process(&dir.path().join("data"), "127.0.0.1:0")
        .set("api", &format!("listen = \"127.0.0.1:{api_port}\""))
        .write(&cfg);
    let srv = ServerProcess::start_via(
        &["prlimit", "--nofile=512:512", "--"],
        &cfg,
        free_port(),
        &dir.path().join("log"),
    );
    assert!(
        srv.log_text().contains("RLIMIT_NOFILE"),
        "no warning about the file limit\n{}",
        srv.log_text()
    );
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..700 {
        match TcpStream::connect_timeout(&api, Duration::from_secs(2)) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /v1/messages HTTP/1.1\r\nHost: x\r\n");
                held.push(s);
            }
            Err(_) => break,
        }
    }
    // SMTP still greets and takes a message, while the half-open requests are held.
    for i in 0..3 {
        let mut c = Client::connect(srv.addr).await;
        c.expect("220").await;
        c.cmd("EHLO client.example", "250").await;
        c.cmd("MAIL FROM:<a@example.com>", "250").await;
        c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
        c.cmd("DATA", "354").await;
        c.send_raw(format!("Subject: fd {i}\r\n\r\nhi\r\n.\r\n").as_bytes())
            .await;
        c.expect("250").await;
        c.cmd("QUIT", "221").await;
    }
    assert!(
        !srv.log_text().contains("Too many open files"),
        "{}",
        srv.log_text()
    );
    drop(held);
}

/// Every file under the data directory, with its mode.
fn modes(dir: &std::path::Path, out: &mut Vec<(String, u32, bool)>) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let md = e.metadata().unwrap();
        let mode = md.permissions().mode() & 0o777;
        out.push((e.path().display().to_string(), mode, md.is_dir()));
        if md.is_dir() {
            modes(&e.path(), out);
        }
    }
}

/// Issue #11: under umask 022 data files were 0644 and directories 0755, so mail was readable
/// by every local user. Whatever the umask, the server creates everything 0600/0700.
#[tokio::test(flavor = "multi_thread")]
async fn data_files_are_private_under_umask_022() {
    let dir = TempDir::new("modes");
    let data = dir.path().join("data");
    let cfg = dir.path().join("inbound.toml");
    ConfigBuilder::child_process(&data, "127.0.0.1:0").write(&cfg);
    let mut srv = ServerProcess::start_via(
        &["sh", "-c", "umask 022; exec \"$@\"", "sh"],
        &cfg,
        free_port(),
        &dir.path().join("log"),
    );
    let mut c = Client::connect(srv.addr).await;
    c.expect("220").await;
    c.cmd("EHLO client.example", "250").await;
    // One small message (inline in the database), one large (a spool file).
    for size in [100usize, 200_000] {
        c.cmd("MAIL FROM:<a@example.com>", "250").await;
        c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
        c.cmd("DATA", "354").await;
        let body = "x".repeat(size);
        c.send_raw(format!("Subject: private\r\n\r\n{body}\r\n.\r\n").as_bytes())
            .await;
        c.expect("250").await;
    }
    c.cmd("QUIT", "221").await;
    srv.terminate(Duration::from_secs(30));
    let mut all = Vec::new();
    modes(&data, &mut all);
    assert!(
        all.iter().any(|(p, ..)| p.contains("spool/msg/")),
        "{all:?}"
    );
    let open: Vec<_> = all.iter().filter(|(_, m, _)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:#?}");
    use std::os::unix::fs::PermissionsExt;
    let top = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(top, 0o700);
}

/// Issue #11: SIGTERM with a webhook receiver that accepts and never answers took 30 s with
/// `shutdown_timeout = "5s"`; and webhook URLs were logged with their query strings, where
/// receivers put tokens.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_hanging_webhook_honours_shutdown_timeout_and_logs_no_url_query() {
    let dir = TempDir::new("hang");
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    let extra = format!(
        r#"
[outbox]
retry_initial = "100ms"
retry_max = "200ms"
poll_interval = "50ms"

[[webhook]]
id = "hangs"
url = "http://127.0.0.1:{}/hook?token=hang-secret-in-query"
secret = "whsec-test-0123456789abcdef"
timeout = "60s"

[[webhook]]
id = "refuses"
url = "http://user:pw-in-userinfo@127.0.0.1:{refused_port}/refused/path?token=dead-secret-in-query"
secret = "whsec-test-0123456789abcdef"
"#,
        hanging.local_addr().unwrap().port()
    );
    let cfg = dir.path().join("inbound.toml");
    ConfigBuilder::child_process(&dir.path().join("data"), "127.0.0.1:0")
        .extra(&extra)
        .write(&cfg);
    let mut srv = ServerProcess::start(&cfg, free_port(), &dir.path().join("log"));
    let mut c = Client::connect(srv.addr).await;
    c.expect("220").await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: hook\r\n\r\nhi\r\n.\r\n").await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;
    // The receiver takes the connection and never answers.
    let (_held, _) = hanging.accept().unwrap();
    // Let the refused endpoint fail and be logged a few times.
    let start = std::time::Instant::now();
    while !srv.log_text().contains("/refused/path") && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, took) = srv.terminate(Duration::from_secs(25));
    assert!(status.success(), "{status}\n{}", srv.log_text());
    assert!(
        took < Duration::from_secs(5 + 5),
        "shutdown took {took:?} with shutdown_timeout = 5s"
    );
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(log.contains("http://127.0.0.1:"), "{log}");
    assert!(log.contains("/refused/path"), "{log}");
    for secret in [
        "hang-secret-in-query",
        "dead-secret-in-query",
        "pw-in-userinfo",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// A store of `count` messages of 4 KiB, written through the same plan and transaction as the
/// committer's (threading, contacts, counters, the body inline), without a flush per message:
/// what a server that took them over SMTP would have on disk, in seconds instead of minutes.
fn fill_store(data_dir: &std::path::Path, count: usize) {
    use inbound::pipeline::{self, auth::Assessment, threading, Envelope};
    use inbound::store::{keys, spool::Finished, RcptRecord, Store};
    let cfg = std::sync::Arc::new(ConfigBuilder::child_process(data_dir, "127.0.0.1:0").parse());
    let store = Store::open(data_dir, &cfg.store).expect("open the store");
    let assessment = Assessment::skipped("test fill");
    let padding = "All work and no play makes a long thread of mail about nothing at all.\r\n"
        .repeat(4096 / 72);
    for i in 0..count {
        // 1,000 customers; every fourth message answers the one before it (a thread grows).
        let sender = format!("customer{}@example.com", i % 1000);
        let reply = match i % 4 {
            0 => String::new(),
            _ => format!("In-Reply-To: <m{}@example.com>\r\n", i - 1),
        };
        let raw = format!(
            "From: <{sender}>\r\nTo: support@demo.inbound.test\r\nSubject: order {}\r\nMessage-ID: <m{i}@example.com>\r\n{reply}\r\n{padding}",
            i / 4
        )
        .into_bytes();
        let env = Envelope {
            client_ip: "192.0.2.1".parse().unwrap(),
            client_port: 25,
            helo: "mail.example.com".into(),
            esmtp: true,
            tls: None,
            mail_from: sender,
            rcpt: vec![RcptRecord {
                address: "support@demo.inbound.test".into(),
                inbox: "demo".into(),
                tag: None,
            }],
            body_type: "8BITMIME",
            smtputf8: false,
        };
        let analysis = pipeline::analyse(&raw, &env, &cfg);
        let now = keys::now_ms();
        let body = Finished::inline(keys::new_queue_id(), raw);
        let input = pipeline::thread_input(&cfg, &env, &analysis, &body.sha256, &assessment, now);
        let record = pipeline::prepare(&cfg.hostname, &env, &body, now, &assessment, &analysis);
        store
            .apply_volatile(&record, &body.body, Some(&threading::plan(input)))
            .expect("commit");
    }
    store.flush().expect("flush");
}

/// Anonymous resident memory of a process (heap and stacks, not the binary's own pages), kB.
fn anon_kb(srv: &ServerProcess) -> u64 {
    srv.status_kb("RssAnon")
}

/// Issue #11: RSS grew with the store, and most of all after a restart: sled rebuilds its page
/// table (kept in memory, one entry per page of every tree) from its snapshot, and 0.34.7 gave
/// every entry room for four log pointers where one is used. The patched sled
/// (vendor/sled/PATCHES.md) sizes them exactly, and the snapshot it read goes back to the kernel
/// after the open (`util::release_free_memory`).
///
/// Measured here: what a restarted server holds (RssAnon, after one message over SMTP) on top of
/// the same server on an empty store, per stored message, on 40,000 messages of 4 KiB: 201 bytes
/// with sled 0.34.7 as published, 124 with the patch (debug build, one run each). The bound sits
/// between the two, so this fails on the old page table; 160 bytes a message is 31 MiB over the
/// issue's 200,000 messages, where the unpatched table cost 38.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_on_a_large_store_keeps_its_page_table_small() {
    const MESSAGES: usize = 40_000;
    const BYTES_PER_MESSAGE: u64 = 160;
    let dir = TempDir::new("rss");
    let (empty_dir, full_dir) = (dir.path().join("empty"), dir.path().join("full"));
    fill_store(&full_dir, MESSAGES);
    let mut anon = Vec::new();
    for (name, data) in [("empty", &empty_dir), ("full", &full_dir)] {
        let cfg = dir.path().join(format!("{name}.toml"));
        ConfigBuilder::child_process(data, "127.0.0.1:0").write(&cfg);
        let mut srv =
            ServerProcess::start(&cfg, free_port(), &dir.path().join(format!("{name}.log")));
        // One message through SMTP: the server is serving, not only open.
        let mut c = Client::connect(srv.addr).await;
        c.expect("220").await;
        c.cmd("EHLO client.example", "250").await;
        c.cmd("MAIL FROM:<a@example.com>", "250").await;
        c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
        c.cmd("DATA", "354").await;
        c.send_raw(b"Subject: after the restart\r\n\r\nhi\r\n.\r\n")
            .await;
        c.expect("250").await;
        c.cmd("QUIT", "221").await;
        anon.push(anon_kb(&srv));
        eprintln!(
            "{name} store: RssAnon {} kB, VmRSS {} kB, VmHWM {} kB",
            anon_kb(&srv),
            srv.status_kb("VmRSS"),
            srv.status_kb("VmHWM")
        );
        srv.terminate(Duration::from_secs(30));
    }
    let per_message = (anon[1].saturating_sub(anon[0])) * 1024 / MESSAGES as u64;
    eprintln!("{per_message} bytes resident per stored message after a restart");
    assert!(
        per_message <= BYTES_PER_MESSAGE,
        "a restart on {MESSAGES} messages holds {per_message} bytes per message (RssAnon {} kB on an empty store, {} kB on the full one): the page table is as large as sled 0.34.7 unpatched made it",
        anon[0],
        anon[1]
    );
}
