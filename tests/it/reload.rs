//! Reloading the config while mail flows: a session open in the middle of a transaction keeps
//! working and sees the new inboxes; a config that is invalid, that moves a connected inbox or
//! that changes what only a restart can change is refused whole, and the old one keeps serving.
//! In process through `Ctx::reload`, and through SIGHUP to the real `inbound serve`.
use crate::process;
use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inbound::context::{Ctx, ReloadError, ReloadSummary};
use inbound::server::admin::{execute, Request};
use support::*;

const NEW_INBOX: &str = "\n[[inbox]]\nid = \"billing\"\naddress = \"billing@demo.inbound.test\"\n";

async fn reload(ctx: &Arc<Ctx>) -> Result<ReloadSummary, ReloadError> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || ctx.reload())
        .await
        .expect("reload task")
}

/// A server started from `inbound.toml` in its data directory.
async fn server_from_file() -> (TestServer, std::path::PathBuf) {
    let dir = TempDir::new("reload");
    let file = dir.path().join("inbound.toml");
    ConfigBuilder::test(dir.path()).write(&file);
    let srv = TestServer::start_file(dir, &file).await;
    (srv, file)
}

fn rewrite(file: &Path, data_dir: &Path, extra: &str) {
    ConfigBuilder::test(data_dir).extra(extra).write(file);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_inbox_is_served_without_dropping_an_open_session() {
    let (srv, file) = server_from_file().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<alice@example.com>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("RCPT TO:<billing@demo.inbound.test>", "550 5.1.1")
        .await;

    rewrite(&file, srv.dir.path(), NEW_INBOX);
    let summary = reload(&srv.ctx).await.expect("a valid config is applied");
    assert_eq!(summary.inboxes_added, ["billing"]);
    assert!(summary.inboxes_removed.is_empty() && summary.changed.is_empty());
    assert!(summary.file.ends_with("inbound.toml"));
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["inboxes_added"][0], "billing");

    // The transaction in progress finishes on the same connection.
    c.cmd("DATA", "354").await;
    c.send_raw(&dot_stuff(&message("mid-reload"))).await;
    c.send_raw(b".\r\n").await;
    let first = c.expect("250").await.last_word();
    // The next transaction reaches the new inbox.
    let r = c
        .send_message(
            "alice@example.com",
            &["billing@demo.inbound.test"],
            &message("after-reload"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", "221").await;
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().unwrap();
    assert_eq!(rec.rcpt[0].inbox, "billing");
    assert_eq!(rec.routing[0].inbox, "billing");
    let rec = srv.ctx.store.get(&first).unwrap().unwrap();
    assert_eq!(rec.rcpt[0].inbox, "demo");

    let metrics = inbound::api::metrics_text(&srv.ctx);
    assert!(
        metrics.contains("inbound_config_reloads_total{result=\"applied\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_config_is_refused_with_every_error_and_the_old_one_keeps_serving() {
    let (srv, file) = server_from_file().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<alice@example.com>", "250").await;

    ConfigBuilder::test(srv.dir.path())
        .inbox_toml(
            "[[inbox]]\nid = \"sales\"\ncolour = \"blue\"\naddress = \"sales@acme.inbound.test\"",
        )
        .set("limits", "max_recipients = 0")
        .set("retention", "bodies = \"soon\"")
        .extra(NEW_INBOX)
        .write(&file);
    let err = reload(&srv.ctx).await.expect_err("an invalid config");
    let ReloadError::Invalid { errors, .. } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "inbox[1].colour",
        "limits.max_recipients",
        "retention.bodies",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errors:?}");
    }
    let text = err.to_string();
    assert!(text.contains("the running config is unchanged"), "{text}");
    let json = serde_json::to_value(&err).unwrap();
    assert_eq!(json["kind"], "invalid");
    assert!(json["errors"].as_array().unwrap().len() >= 3, "{json}");

    // The old config still serves, the same session included.
    c.cmd("RCPT TO:<billing@demo.inbound.test>", "550 5.1.1")
        .await;
    c.cmd("RCPT TO:<sales@acme.inbound.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(&dot_stuff(&message("still-served"))).await;
    c.send_raw(b".\r\n").await;
    c.expect("250").await;

    std::fs::remove_file(&file).unwrap();
    let err = reload(&srv.ctx).await.expect_err("a missing file");
    assert!(matches!(err, ReloadError::Unreadable { .. }), "{err:?}");
    let metrics = inbound::api::metrics_text(&srv.ctx);
    assert!(
        metrics.contains("inbound_config_reloads_total{result=\"refused\"} 2\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connected_inbox_keeps_its_address() {
    let (srv, file) = server_from_file().await;
    let (resp, _) = execute(
        &srv.ctx.store,
        &srv.ctx.config(),
        &Request::InboxConfirm {
            id: "demo".into(),
            address: "support@demo.inbound.test".into(),
        },
    );
    assert!(resp.ok, "{resp:?}");

    ConfigBuilder::test(srv.dir.path())
        .inbox_toml(
            "[[inbox]]\nid = \"demo\"\naddress = \"help-desk@demo.inbound.test\"\n\
                 aliases = [\"help@demo.inbound.test\"]",
        )
        .extra(NEW_INBOX)
        .write(&file);
    let err = reload(&srv.ctx)
        .await
        .expect_err("moving a connected inbox");
    let ReloadError::Refused { errors, .. } = &err else {
        panic!("expected Refused, got {err:?}");
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "inbox[0].address");
    assert!(errors[0].message.contains("connected"), "{errors:?}");
    // Nothing of the refused file was applied, not even the new inbox.
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<alice@example.com>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("RCPT TO:<billing@demo.inbound.test>", "550 5.1.1")
        .await;

    // Keeping the old address as an alias is the documented migration, and is accepted.
    ConfigBuilder::test(srv.dir.path())
        .inbox_toml(
            "[[inbox]]\nid = \"demo\"\naddress = \"help-desk@demo.inbound.test\"\n\
                 aliases = [\"help@demo.inbound.test\", \"support@demo.inbound.test\"]",
        )
        .write(&file);
    let summary = reload(&srv.ctx)
        .await
        .expect("the old address kept as an alias");
    assert_eq!(summary.inboxes_changed, ["demo"]);
    c.cmd("RCPT TO:<help-desk@demo.inbound.test>", "250").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_read_only_at_start_are_refused_by_name() {
    let (srv, file) = server_from_file().await;
    ConfigBuilder::test(srv.dir.path())
        .set("limits", "max_connections = 7")
        .set("dns", "attempts = 1")
        .add_listener("127.0.0.1:0")
        .write(&file);
    let err = reload(&srv.ctx).await.expect_err("a restart-only change");
    let ReloadError::Refused { errors, .. } = &err else {
        panic!("expected Refused, got {err:?}");
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["listener[1]", "limits.max_connections", "dns.attempts"]
    );
    assert!(
        errors.iter().all(|e| e.message.contains("restart")),
        "{errors:?}"
    );
    let json = serde_json::to_value(&err).unwrap();
    assert_eq!(json["kind"], "refused");
    assert_eq!(json["errors"][0]["path"], "listener[1]");
    // Still one listener, still serving.
    let mut c = srv.connect().await;
    c.hello().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_a_config_file_has_nothing_to_reload() {
    let srv = TestServer::start().await;
    let err = reload(&srv.ctx).await.expect_err("no file");
    assert_eq!(err, ReloadError::NoFile);
    assert!(err.to_string().contains("without --config"), "{err}");
    assert_eq!(serde_json::to_value(&err).unwrap()["kind"], "no_file");
}

fn wait_for_log(srv: &process::ServerProcess, needle: &str, count: usize) {
    let start = Instant::now();
    while std::fs::read_to_string(&srv.log)
        .unwrap_or_default()
        .matches(needle)
        .count()
        < count
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {needle:?} in the log\n{}",
            srv.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sighup(srv: &process::ServerProcess) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &srv.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `inbound serve --config FILE --listen ADDR`: SIGHUP re-reads FILE (and re-applies --listen,
/// so the file's own listener address is no change) while a session is in the middle of a
/// transaction; a bad file is refused and logged with its key path.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_inbound_serve() {
    let root = TempDir::new("hup");
    let data = root.path().join("data");
    let file = root.path().join("inbound.toml");
    let write = |extra: &str| {
        ConfigBuilder::child_process(&data, "127.0.0.1:2525")
            .extra(extra)
            .write(&file)
    };
    write("");
    let mut srv =
        process::ServerProcess::start(&file, process::free_port(), &root.path().join("log"));

    let mut c = Client::connect(srv.addr).await;
    c.hello().await;
    c.cmd("MAIL FROM:<alice@example.com>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("RCPT TO:<billing@demo.inbound.test>", "550 5.1.1")
        .await;

    write(NEW_INBOX);
    sighup(&srv);
    wait_for_log(&srv, "config reloaded", 1);
    c.cmd("RCPT TO:<billing@demo.inbound.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(&dot_stuff(&message("sighup"))).await;
    c.send_raw(b".\r\n").await;
    c.expect("250").await;

    write(&format!("{NEW_INBOX}[retention]\nbodies = \"soon\"\n"));
    sighup(&srv);
    wait_for_log(&srv, "config reload refused", 1);
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(log.contains("retention.bodies"), "{}", srv.log_text());
    // Still the reloaded config, on the same connection.
    let r = c
        .send_message(
            "alice@example.com",
            &["billing@demo.inbound.test"],
            &message("after-refusal"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", "221").await;

    let (status, _) = srv.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", srv.log_text());
}
