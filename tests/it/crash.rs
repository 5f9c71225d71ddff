//! Durability across a crash: the real binary is SIGKILLed while several clients are sending, then
//! restarted on the same data directory, three times over. What is asserted, precisely:
//!
//! - every message answered `250 ... queued as ID` is in the store under ID, its record's SHA-256
//!   equals the hash of the body the client sent, and the stored body hashes to the same value;
//! - every other stored message is one whose end-of-data `.` the client had finished sending but
//!   whose reply it never read (the server may commit and die before the 250 leaves): its body is
//!   byte-identical to what was sent. A message the client had not finished sending, or that was
//!   answered 4xx/5xx, is never stored; no body is stored twice;
//! - after restart `spool/tmp/` is empty and `spool/msg/` holds exactly the bodies of records
//!   kept in the spool (no orphans, none missing);
//! - the CLI (`messages list --json`, through the running server's admin socket) and the store
//!   opened directly after a clean SIGTERM stop agree on the set of messages.
//!
//! SIGKILL ends the process, not the machine: data the kernel had accepted survives it whether
//! or not it was fsynced. This proves the commit order (record only after body, 250 only after
//! commit) and recovery; it cannot prove the fsyncs themselves.
use crate::process;
use crate::support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inbound::store::{MessageRecord, Store};
use process::{config_text, free_port, inbound, ServerProcess};
use support::{dot_stuff, sha256, TempDir};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CLIENTS: usize = 6;
const ROUNDS: usize = 5;
/// Bodies over the store's inline threshold (64 KiB by default) go through spool files.
const LARGE_BYTES: usize = 96 * 1024;

/// What the clients learned, shared between their tasks.
#[derive(Default)]
struct Ledger {
    /// queue id -> SHA-256 of the body, for every 250.
    acked: HashMap<String, String>,
    /// Bodies sent completely (through the final `.`) whose reply never arrived.
    unanswered: HashSet<String>,
    /// Bodies answered with anything but 250: they must not be stored.
    refused: HashSet<String>,
    /// Every body a client started to send.
    started: HashSet<String>,
    large_acked: usize,
}

/// A body unique to (round, client, seq): headers, lines with leading dots (dot-stuffing), long
/// lines, and for `large` enough text to exceed the inline threshold.
fn body(round: usize, client: usize, seq: usize, large: bool) -> Vec<u8> {
    let tag = format!("r{round}-c{client}-m{seq}");
    let mut b = format!(
        "From: Crash Tester <crash@example.com>\r\nTo: support@demo.inbound.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@crash.example>\r\n\r\n"
    )
    .into_bytes();
    let target = if large {
        LARGE_BYTES + seq * 4099
    } else {
        300 + seq * 37
    };
    let mut n = 0u64;
    while b.len() < target {
        n += 1;
        let line = match n % 4 {
            0 => format!(".leading dot {tag} {n}\r\n"),
            1 => format!("{tag} line {n} {}\r\n", "x".repeat((n % 97) as usize)),
            2 => format!("..two dots {n}\r\n"),
            _ => format!("{}\r\n", "long-".repeat(40 + (n % 50) as usize)),
        };
        b.extend_from_slice(line.as_bytes());
    }
    b
}

/// One client: connect, send messages one after another until the server goes away or `stop`.
async fn client(
    port: u16,
    round: usize,
    id: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(line.trim_end().to_string());
            }
        }
    }
    async fn cmd(
        r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        w: &mut tokio::net::tcp::OwnedWriteHalf,
        line: &str,
    ) -> Option<String> {
        w.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
        reply(r).await
    }
    if !reply(&mut r).await.is_some_and(|l| l.starts_with("220")) {
        return;
    }
    if !cmd(&mut r, &mut w, "EHLO crash.example")
        .await
        .is_some_and(|l| l.starts_with("250"))
    {
        return;
    }
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        // Every third message is large, so kills land in spool writes as well as in commits.
        let large = (seq + id).is_multiple_of(3);
        let data = body(round, id, seq, large);
        let hash = sha256(&data);
        let ok = |l: Option<String>, code: &str| l.is_some_and(|l| l.starts_with(code));
        if !ok(
            cmd(&mut r, &mut w, "MAIL FROM:<crash@example.com>").await,
            "250",
        ) || !ok(
            cmd(&mut r, &mut w, "RCPT TO:<support@demo.inbound.test>").await,
            "250",
        ) || !ok(cmd(&mut r, &mut w, "DATA").await, "354")
        {
            return;
        }
        ledger.lock().unwrap().started.insert(hash.clone());
        // Send the body in pieces so that a kill can land in the middle of it.
        let mut wire = dot_stuff(&data);
        wire.extend_from_slice(b".\r\n");
        let last = wire.len() - 5;
        for (i, piece) in wire[..last].chunks(16 * 1024).enumerate() {
            if w.write_all(piece).await.is_err() {
                return;
            }
            // Two clients send slowly, so a kill finds them in the middle of a body (with a
            // temporary spool file open on the server for large ones).
            if id < 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            } else if i % 2 == 1 {
                tokio::task::yield_now().await;
            }
        }
        if w.write_all(&wire[last..]).await.is_err() {
            // Whether the last bytes reached the server is unknown: treat as unanswered.
            ledger.lock().unwrap().unanswered.insert(hash);
            return;
        }
        match reply(&mut r).await {
            Some(l) if l.starts_with("250") => {
                let qid = l.split_whitespace().last().unwrap_or_default().to_string();
                let mut led = ledger.lock().unwrap();
                if large {
                    led.large_acked += 1;
                }
                led.acked.insert(qid, hash);
            }
            Some(_) => {
                ledger.lock().unwrap().refused.insert(hash);
            }
            None => {
                ledger.lock().unwrap().unanswered.insert(hash);
                return;
            }
        }
    }
}

fn write_config(root: &Path, data: &Path) -> std::path::PathBuf {
    let path = root.join("inbound.toml");
    std::fs::write(&path, config_text(data, "127.0.0.1:0", "")).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let root = TempDir::new("crash");
    let data = root.path().join("data");
    let config = write_config(root.path(), &data);
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    for round in 0..ROUNDS {
        let port = free_port();
        let log = root.path().join(format!("server-{round}.log"));
        let mut srv = ServerProcess::start(&config, port, &log);
        let stop = Arc::new(AtomicBool::new(false));
        let before = ledger.lock().unwrap().acked.len();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|id| tokio::spawn(client(port, round, id, ledger.clone(), stop.clone())))
            .collect();
        // Let a fair number of messages through, then kill at an arbitrary moment.
        let started = Instant::now();
        loop {
            let enough = {
                let l = ledger.lock().unwrap();
                l.acked.len() >= before + 24 && l.large_acked >= (round + 1) * 3
            };
            if enough {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "round {round}: the clients made too little progress\n{}",
                srv.log_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(7 + 13 * round as u64)).await;
        srv.kill();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
    }

    // Restart once more: recovery runs, then inspect through the CLI while it is serving.
    let port = free_port();
    let log = root.path().join("server-final.log");
    let mut srv = ServerProcess::start(&config, port, &log);
    let spool = data.join("spool");
    let tmp_left: Vec<_> = std::fs::read_dir(spool.join("tmp"))
        .expect("spool/tmp exists")
        .collect();
    assert!(
        tmp_left.is_empty(),
        "spool/tmp not empty after restart: {tmp_left:?}"
    );
    let data_arg = data.to_string_lossy().into_owned();
    let listed = inbound(&[
        "messages",
        "list",
        "--data-dir",
        &data_arg,
        "--json",
        "--limit",
        "1000000",
    ]);
    listed.assert_ok("messages list --json on the running server");
    let via_cli: Vec<serde_json::Value> =
        serde_json::from_slice(&listed.stdout).expect("messages list --json prints messages");
    let (status, _) = srv.terminate(Duration::from_secs(15));
    assert!(status.success(), "clean stop after SIGTERM: {status}");

    let store = Store::open(&data, &inbound::config::Config::embedded_default().store)
        .expect("open the store after the server stopped");
    let stored = store.list(None, usize::MAX).expect("list the store");
    let cli_ids: HashSet<&str> = via_cli.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let store_ids: HashSet<&str> = stored.iter().map(|r| r.queue_id.as_str()).collect();
    assert_eq!(
        cli_ids, store_ids,
        "the CLI (admin socket) and the store disagree"
    );

    let ledger = ledger.lock().unwrap();
    let mut problems = Vec::new();
    let by_id: HashMap<&str, &MessageRecord> =
        stored.iter().map(|r| (r.queue_id.as_str(), r)).collect();
    for (id, hash) in &ledger.acked {
        match by_id.get(id.as_str()) {
            None => problems.push(format!("acknowledged {id} is missing")),
            Some(rec) if &rec.sha256 != hash => problems.push(format!(
                "acknowledged {id}: record hash differs from body sent"
            )),
            Some(_) => {}
        }
    }
    let mut seen_hashes = HashSet::new();
    let mut unacked_present = 0;
    for rec in &stored {
        let body = store.body(rec).expect("read stored body");
        if sha256(&body) != rec.sha256 || body.len() as u64 != rec.size {
            problems.push(format!(
                "{}: stored body does not match its record",
                rec.queue_id
            ));
        }
        if !seen_hashes.insert(rec.sha256.clone()) {
            problems.push(format!("{}: the same body is stored twice", rec.queue_id));
        }
        if ledger.acked.contains_key(&rec.queue_id) {
            continue;
        }
        if ledger.unanswered.contains(&rec.sha256) {
            unacked_present += 1;
        } else if ledger.refused.contains(&rec.sha256) {
            problems.push(format!("{}: stored although it was refused", rec.queue_id));
        } else if ledger.started.contains(&rec.sha256) {
            problems.push(format!(
                "{}: stored although its data was never completely sent",
                rec.queue_id
            ));
        } else {
            problems.push(format!("{}: a body no client sent", rec.queue_id));
        }
    }
    let mut spool_files: Vec<String> = std::fs::read_dir(spool.join("msg"))
        .expect("spool/msg exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    spool_files.sort();
    let mut spooled: Vec<String> = stored
        .iter()
        .filter(|r| r.body_location == "spool")
        .map(|r| format!("{}.eml", r.queue_id))
        .collect();
    spooled.sort();
    if spool_files != spooled {
        problems.push(format!(
            "spool/msg holds {} files for {} spooled records",
            spool_files.len(),
            spooled.len()
        ));
    }
    let tmp_left: Vec<_> = std::fs::read_dir(spool.join("tmp")).unwrap().collect();
    if !tmp_left.is_empty() {
        problems.push(format!("spool/tmp not empty after stop: {tmp_left:?}"));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        process::log_tail(&log)
    );
    // The run must have covered both storage paths and every round.
    assert!(
        ledger.acked.len() >= ROUNDS * 24,
        "{} acked",
        ledger.acked.len()
    );
    assert!(
        ledger.large_acked >= ROUNDS * 3,
        "{} large acked",
        ledger.large_acked
    );
    assert!(
        stored.iter().any(|r| r.body_location == "inline"),
        "no inline body was stored"
    );
    assert!(!spooled.is_empty(), "no spooled body was stored");
    let cut_short = ledger
        .started
        .len()
        .saturating_sub(ledger.acked.len() + ledger.unanswered.len() + ledger.refused.len());
    eprintln!(
        "crash test: {} acknowledged ({} large), {} unanswered at kill of which {} were committed, {} cut short in their data, {} refused",
        ledger.acked.len(),
        ledger.large_acked,
        ledger.unanswered.len(),
        unacked_present,
        cut_short,
        ledger.refused.len()
    );
}
