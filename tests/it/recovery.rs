//! Recovery at start: what a crash can leave behind is removed, what was acknowledged stays.
//! A half-written body in `spool/tmp/`, a spool file in `spool/msg/` whose record never
//! committed, and an inline body in the database without its record were never answered 250
//! (store/mod.rs, "Order of a commit"), so the next start removes them.
use crate::support;

use std::path::Path;
use std::time::Duration;

use inbound::store::keys::new_queue_id;
use support::*;

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Open the database directly (the server is stopped), retrying while the previous owner's
/// threads let go of the lock.
fn open_db(dir: &Path) -> sled::Db {
    for _ in 0..100 {
        match sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    panic!("cannot open {}/db", dir.display());
}

/// Drop a database opened with `open_db` and wait until its file lock is really free: sled's
/// I/O threads let go of the file a moment after the handle is dropped, and a server started
/// in that moment would find the store locked.
fn close_db(db: sled::Db, dir: &Path) {
    use std::os::fd::AsRawFd;
    drop(db);
    let path = dir.join("db").join("db");
    for _ in 0..200 {
        let file = std::fs::File::open(&path).expect("the database file");
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} stayed locked", path.display());
}

fn large_message(subject: &str) -> Vec<u8> {
    let mut m = message(subject);
    while m.len() < 200 * 1024 {
        m.extend_from_slice(format!("{subject} filler line {}\r\n", m.len()).as_bytes());
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn start_removes_partial_and_unacknowledged_files_and_keeps_messages() {
    // Two acknowledged messages: one inline, one in a spool file.
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let small = message("kept-small");
    let large = large_message("kept-large");
    let r1 = c
        .send_message("alice@example.com", &["support@demo.inbound.test"], &small)
        .await;
    assert_eq!(r1.code, 250, "{r1:?}");
    let r2 = c
        .send_message("alice@example.com", &["sales@acme.inbound.test"], &large)
        .await;
    assert_eq!(r2.code, 250, "{r2:?}");
    let (small_id, large_id) = (r1.last_word(), r2.last_word());
    c.cmd("QUIT", "221").await;
    let dir = srv.stop().await;
    let data = dir.path().to_path_buf();
    let spool = data.join("spool");
    assert_eq!(
        file_names(&spool.join("msg")),
        [format!("{large_id}.eml")],
        "only the large body is a spool file"
    );

    // What a crash leaves: a half-written body (named like a queue id, as the session names
    // them, and one with another name), a published body whose record never committed, and an
    // inline body without its record.
    let partial_id = new_queue_id();
    std::fs::write(
        spool.join("tmp").join(&partial_id),
        &large_message("partial")[..70_000],
    )
    .unwrap();
    std::fs::write(spool.join("tmp").join("stray.partial"), b"Subject: half").unwrap();
    let orphan_id = new_queue_id();
    std::fs::write(
        spool.join("msg").join(format!("{orphan_id}.eml")),
        large_message("orphan"),
    )
    .unwrap();
    let orphan_inline_id = new_queue_id();
    let db = open_db(&data);
    db.open_tree("bodies")
        .unwrap()
        .insert(orphan_inline_id.as_bytes(), message("orphan-inline"))
        .unwrap();
    db.flush().unwrap();
    close_db(db, &data);

    let srv = TestServer::start_in(dir, "").await;
    assert!(
        file_names(&spool.join("tmp")).is_empty(),
        "spool/tmp after recovery: {:?}",
        file_names(&spool.join("tmp"))
    );
    assert_eq!(
        file_names(&spool.join("msg")),
        [format!("{large_id}.eml")],
        "the orphan spool file should be gone, the acknowledged one kept"
    );
    let ids: Vec<String> = srv.messages().into_iter().map(|m| m.queue_id).collect();
    assert_eq!(ids, [small_id.clone(), large_id.clone()]);
    for (id, body) in [(&small_id, &small), (&large_id, &large)] {
        let rec = srv.ctx.store.get(id).unwrap().expect("record kept");
        assert_eq!(rec.sha256, sha256(body), "{id}");
        assert_eq!(
            &srv.ctx.store.body(&rec).unwrap(),
            body,
            "{id} byte-identical"
        );
    }

    // The recovered server keeps accepting mail.
    let mut c = srv.connect().await;
    c.hello().await;
    let after = large_message("after-recovery");
    let r = c
        .send_message("alice@example.com", &["support@demo.inbound.test"], &after)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", "221").await;
    let dir = srv.stop().await;

    let db = open_db(dir.path());
    assert!(
        db.open_tree("bodies")
            .unwrap()
            .get(orphan_inline_id.as_bytes())
            .unwrap()
            .is_none(),
        "the inline body without a record should be gone"
    );
    assert!(
        db.open_tree("messages")
            .unwrap()
            .get(orphan_id.as_bytes())
            .unwrap()
            .is_none(),
        "recovery must not invent a record for an orphan"
    );
}
