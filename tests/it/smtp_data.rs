//! Transcript tests for message content over the wire: DATA transparency and line endings
//! (RFC 5321 §4.1.1.4, §4.5.2), SMTP smuggling, long lines, and BDAT/CHUNKING (RFC 3030). Stored
//! bytes are compared with what the client meant to send.
use crate::support;
use support::*;

const HOSTED: &str = "support@demo.inbound.test";

fn record(srv: &TestServer, reply: &Reply) -> inbound::store::MessageRecord {
    assert_eq!(reply.code, 250, "{reply:?}");
    srv.ctx
        .store
        .get(&reply.last_word())
        .expect("store readable")
        .expect("a record for the queue id")
}

/// The body stored for the message a `250 ... queued as ID` reply names, checked against the
/// record's size and digest.
fn stored_body(srv: &TestServer, reply: &Reply) -> Vec<u8> {
    let rec = record(srv, reply);
    let body = srv.ctx.store.body(&rec).expect("body readable");
    assert_eq!(rec.size, body.len() as u64);
    assert_eq!(rec.sha256, sha256(&body));
    body
}

/// A BDAT command and its chunk, for one write.
fn bdat(chunk: &[u8], last: bool) -> Vec<u8> {
    let last = if last { " LAST" } else { "" };
    let mut w = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
    w.extend_from_slice(chunk);
    w
}

/// MAIL + RCPT + DATA up to the 354, for a test that then sends raw body bytes.
async fn start_data(c: &mut Client<tokio::net::TcpStream>) {
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leading_dots_are_unstuffed() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    start_data(&mut c).await;
    c.send_raw(b"Subject: dots\r\n\r\n..leading dot\r\n.\r\n")
        .await;
    // That lone "." ended it; now a message whose lines are dots only.
    let r = c.expect("250").await;
    assert_eq!(
        stored_body(&srv, &r),
        b"Subject: dots\r\n\r\n.leading dot\r\n"
    );

    start_data(&mut c).await;
    c.send_raw(b"Subject: more\r\n\r\n..\r\n...\r\n.x\r\nmid.dle\r\n.\r\n")
        .await;
    let r = c.expect("250").await;
    assert_eq!(
        stored_body(&srv, &r),
        b"Subject: more\r\n\r\n.\r\n..\r\nx\r\nmid.dle\r\n"
    );

    // The support helper's dot-stuffing round-trips any body.
    let body = b"Subject: rt\r\n\r\n.\r\n..\r\n. \r\n.\r\n\r\nend\r\n".to_vec();
    let r = c.send_message("a@example.com", &[HOSTED], &body).await;
    assert_eq!(stored_body(&srv, &r), body);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_lf_is_stored_as_crlf_and_bare_cr_is_kept() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    start_data(&mut c).await;
    c.send_raw(b"Subject: lf\nX-A: 1\n\nline one\nline\rtwo\r\n.\r\n")
        .await;
    let r = c.expect("250").await;
    assert_eq!(
        stored_body(&srv, &r),
        b"Subject: lf\r\nX-A: 1\r\n\r\nline one\r\nline\rtwo\r\n"
    );
    let rec = record(&srv, &r);
    assert_eq!(rec.subject, "lf");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lf_dot_lf_does_not_end_data_smuggling() {
    // The smuggled transaction would be a second message from a forged sender if `<LF>.<LF>`
    // ended the first one.
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    start_data(&mut c).await;
    c.send_raw(
        b"Subject: outer\r\n\r\nhello\n.\n\
          MAIL FROM:<ceo@victim.example>\r\n\
          RCPT TO:<support@demo.inbound.test>\r\n\
          DATA\r\n\
          Subject: smuggled\r\n\r\nwire money\r\n.\r\n",
    )
    .await;
    let r = c.expect("250 2.0.0").await;
    // The next reply answers our VRFY: nothing was executed from inside the message.
    c.cmd("VRFY x", "252").await;
    let body = stored_body(&srv, &r);
    assert_eq!(
        body,
        b"Subject: outer\r\n\r\nhello\r\n.\r\n\
          MAIL FROM:<ceo@victim.example>\r\n\
          RCPT TO:<support@demo.inbound.test>\r\n\
          DATA\r\n\
          Subject: smuggled\r\n\r\nwire money\r\n"
    );
    let all = srv.messages();
    assert_eq!(all.len(), 1, "exactly one message: {all:?}");
    assert_eq!(all[0].mail_from, "a@example.com");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lf_dot_crlf_does_not_end_data_smuggling() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    start_data(&mut c).await;
    // Split so the dot line arrives alone: the decision must not depend on read boundaries.
    c.send_raw(b"Subject: outer\r\n\r\nhello\n").await;
    c.send_raw(b".\r\n").await;
    c.send_raw(
        b"MAIL FROM:<ceo@victim.example>\r\n\
          RCPT TO:<support@demo.inbound.test>\r\n\
          DATA\r\n\
          smuggled\r\n\
          .\r\n",
    )
    .await;
    let r = c.expect("250 2.0.0").await;
    c.cmd("VRFY x", "252").await;
    assert_eq!(
        stored_body(&srv, &r),
        b"Subject: outer\r\n\r\nhello\r\n.\r\n\
          MAIL FROM:<ceo@victim.example>\r\n\
          RCPT TO:<support@demo.inbound.test>\r\n\
          DATA\r\n\
          smuggled\r\n"
    );
    assert_eq!(srv.messages().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_almost_terminators_are_content_too() {
    // `<CR><LF>.<LF>`, `<CR>.<CR><LF>` and `<CR>.<CR>`: each is followed by a smuggled
    // transaction, and only the final `<CR><LF>.<CR><LF>` ends the message.
    for (i, fake) in [&b"\r\n.\n"[..], b"\r.\r\n", b"\r.\r"].iter().enumerate() {
        let srv = TestServer::start().await;
        let mut c = srv.connect().await;
        c.hello().await;
        start_data(&mut c).await;
        let mut w = b"Subject: outer\r\n\r\nhello".to_vec();
        w.extend_from_slice(fake);
        w.extend_from_slice(b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<support@demo.inbound.test>\r\nDATA\r\nsmuggled\r\n.\r\n");
        c.send_raw(&w).await;
        let r = c.expect("250 2.0.0").await;
        c.cmd("VRFY x", "252").await;
        let body = stored_body(&srv, &r);
        assert!(
            body.ends_with(b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<support@demo.inbound.test>\r\nDATA\r\nsmuggled\r\n"),
            "variant {i}: {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(srv.messages().len(), 1, "variant {i}");
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn terminator_split_across_writes_still_ends_data() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    start_data(&mut c).await;
    for part in [
        &b"Subject: split\r\n\r\nbody\r"[..],
        b"\n",
        b".",
        b"\r",
        b"\n",
    ] {
        c.send_raw(part).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = c.expect("250").await;
    assert_eq!(stored_body(&srv, &r), b"Subject: split\r\n\r\nbody\r\n");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200kb_line_is_accepted_intact() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let mut body = b"Subject: long line\r\n\r\n".to_vec();
    body.extend((0..200 * 1024).map(|i| b'a' + (i % 26) as u8));
    body.extend_from_slice(b"\r\nshort line\r\n");
    let r = c.send_message("a@example.com", &[HOSTED], &body).await;
    let rec = record(&srv, &r);
    // Past the inline threshold: this one lives in a spool file.
    assert_eq!(rec.body_location, "spool");
    assert_eq!(stored_body(&srv, &r), body);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_message_is_accepted_and_stored_empty() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    start_data(&mut c).await;
    c.send_raw(b".\r\n").await;
    let r = c.expect("250").await;
    assert_eq!(stored_body(&srv, &r), b"");
    // The session is still in command mode.
    c.cmd("NOOP", "250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn several_messages_on_one_connection_are_kept_apart() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = message(&format!("msg{i}"));
        let r = c.send_message("a@example.com", &[HOSTED], &body).await;
        assert_eq!(stored_body(&srv, &r), body);
        ids.push(r.last_word());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "distinct queue ids");
    assert_eq!(srv.messages().len(), 5);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_chunks_are_concatenated_verbatim() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME", "250")
        .await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    // BDAT bodies are not dot-stuffed and have no terminator: `.\r\n` inside is content.
    let parts: [&[u8]; 3] = [b"Subject: chunks\r\n\r\n", b"..one\r\n.\r\n", b"two\r\n"];
    c.send_raw(format!("BDAT {}\r\n", parts[0].len()).as_bytes())
        .await;
    c.send_raw(parts[0]).await;
    c.expect(&format!("250 2.0.0 {} octets", parts[0].len()))
        .await;
    // Command and chunk in one write.
    c.send_raw(&bdat(parts[1], false)).await;
    c.expect("250 2.0.0").await;
    c.send_raw(&bdat(parts[2], true)).await;
    let r = c.expect("250 2.0.0").await;
    assert_eq!(stored_body(&srv, &r), parts.concat());
    assert_eq!(record(&srv, &r).body_type, "8BITMIME");
    c.cmd("NOOP", "250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_0_last_ends_the_message() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.send_raw(&bdat(b"Subject: zero\r\n\r\nx\r\n", false))
        .await;
    c.expect("250 2.0.0 20 octets").await;
    // `BDAT 0 LAST` alone in its write: the server must answer without waiting for more bytes.
    c.send("BDAT 0 LAST").await;
    let r = c.expect("250 2.0.0").await;
    assert_eq!(stored_body(&srv, &r), b"Subject: zero\r\n\r\nx\r\n");

    // A whole message as one empty LAST chunk, pipelined with its envelope.
    c.send_raw(
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<support@demo.inbound.test>\r\nBDAT 0 LAST\r\n",
    )
    .await;
    c.expect("250").await;
    c.expect("250").await;
    let r = c.expect("250 2.0.0").await;
    assert_eq!(stored_body(&srv, &r), b"");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_out_of_sequence_is_503_after_its_bytes_are_read() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    // The chunk looks like commands; it must be swallowed, not executed.
    c.send_raw(b"BDAT 12 LAST\r\nQUIT\r\nRSET\r\n").await;
    c.expect("503 5.5.1").await;
    c.cmd("NOOP", "250").await;
    // Without a recipient: same.
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.send_raw(b"BDAT 6\r\nQUIT\r\n").await;
    c.expect("503 5.5.1").await;
    c.cmd("NOOP", "250").await;
    // The session is usable: finish a message with BDAT.
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.send_raw(&bdat(b"Subject: b\r\n", true)).await;
    let r = c.expect("250").await;
    assert_eq!(stored_body(&srv, &r), b"Subject: b\r\n");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_after_bdat_is_503() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.send_raw(&bdat(b"hello", false)).await;
    c.expect("250").await;
    c.cmd("DATA", "503 5.5.1").await;
    // The BDAT transaction continues.
    c.send_raw(&bdat(b" world\n", true)).await;
    let r = c.expect("250").await;
    // BDAT content is stored exactly, bare LF included.
    assert_eq!(stored_body(&srv, &r), b"hello world\n");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_chunk_arriving_in_pieces() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.send_raw(format!("BDAT {} LAST\r\n", body.len()).as_bytes())
        .await;
    for piece in body.chunks(30_000) {
        c.send_raw(piece).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = c.expect("250 2.0.0").await;
    assert_eq!(stored_body(&srv, &r), body);
    srv.stop().await;
}
