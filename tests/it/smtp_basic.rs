//! Transcript tests for the basic ESMTP dialogue.
use crate::support;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn ehlo_advertises_extensions_and_a_message_is_queued() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let ehlo = c.hello().await;
    let text = ehlo.text();
    for ext in [
        "PIPELINING",
        "SIZE 31457280",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(text.contains(ext), "EHLO lacks {ext}: {text}");
    }
    let body = message("first");
    let r = c
        .send_message("alice@example.com", &["support@demo.inbound.test"], &body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let id = r.last_word();
    c.cmd("QUIT", "221").await;
    let stored = srv
        .ctx
        .store
        .get(&id)
        .unwrap()
        .expect("record for the queue id");
    assert_eq!(stored.sha256, sha256(&body));
    assert_eq!(srv.ctx.store.body(&stored).unwrap(), body);
    srv.stop().await;
}
