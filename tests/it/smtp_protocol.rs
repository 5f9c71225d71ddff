//! Transcript tests for every SMTP command, the recipient table and PIPELINING. RFC 5321 (commands
//! and sequence), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 2920 (PIPELINING).
use crate::support;
use support::*;

const HOSTED: &str = "support@demo.inbound.test";

/// The record stored for the queue id in a `250 ... queued as ID` reply.
fn stored(srv: &TestServer, reply: &Reply) -> inbound::store::MessageRecord {
    assert_eq!(reply.code, 250, "{reply:?}");
    srv.ctx
        .store
        .get(&reply.last_word())
        .expect("store readable")
        .expect("a record for the queue id")
}

#[tokio::test(flavor = "multi_thread")]
async fn greeting_names_the_host_and_helo_gets_a_one_line_reply() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let greeting = c.expect("220").await;
    assert!(
        greeting.text().starts_with("mx.test.example"),
        "{greeting:?}"
    );
    let helo = c.cmd("HELO client.example", "250 mx.test.example").await;
    assert_eq!(
        helo.lines.len(),
        1,
        "HELO advertises no extensions: {helo:?}"
    );
    // A HELO session can still deliver mail.
    let r = c
        .send_message("a@example.com", &[HOSTED], &message("helo"))
        .await;
    let rec = stored(&srv, &r);
    assert_eq!(rec.helo, "client.example");
    c.cmd("QUIT", "221 2.0.0").await;
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ehlo_lists_extensions_and_without_a_domain_is_501() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.expect("220").await;
    c.cmd("EHLO", "501").await;
    c.cmd("HELO", "501").await;
    // Still no greeting accepted: MAIL is out of sequence.
    c.cmd("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    let ehlo = c.cmd("EHLO client.example", "250").await;
    assert!(ehlo.lines.len() > 1, "EHLO reply is multi-line: {ehlo:?}");
    for ext in [
        "PIPELINING",
        "SIZE 31457280",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == ext),
            "EHLO lacks {ext}: {ehlo:?}"
        );
    }
    // An MX does not offer AUTH, and BINARYMIME is deliberately absent.
    assert!(!ehlo.text().contains("AUTH"), "{ehlo:?}");
    assert!(!ehlo.text().contains("BINARYMIME"), "{ehlo:?}");
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "503 5.5.1").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn noop_vrfy_help_unknown_and_quit() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.expect("220").await;
    // These work before EHLO too.
    c.cmd("NOOP", "250 2.0.0").await;
    c.cmd("VRFY support", "252 2.5.0").await;
    c.cmd("HELP", "214").await;
    c.cmd("FOO bar", "500 5.5.2").await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("VRFY support@demo.inbound.test", "252").await;
    c.cmd("EXPN staff", "502 5.5.1").await;
    c.cmd("XYZZY", "500 5.5.2").await;
    c.cmd("QUIT", "221").await;
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_out_of_sequence_are_503() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.expect("220").await;
    c.cmd("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("MAIL FROM:<a@example.com>", "250 2.1.0").await;
    // Nested MAIL.
    c.cmd("MAIL FROM:<b@example.com>", "503 5.5.1").await;
    // DATA with no accepted recipient.
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RCPT TO:<nobody@nowhere.test>", "550 5.7.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: seq\r\n\r\nbody\r\n.\r\n").await;
    let r = c.expect("250 2.0.0").await;
    let rec = stored(&srv, &r);
    // The transaction really was a@example.com's, not the refused nested b@example.com.
    assert_eq!(rec.mail_from, "a@example.com");
    // The transaction is over: RCPT needs a new MAIL.
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rset_and_ehlo_abandon_the_transaction() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("RSET", "250 2.0.0").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    // A new MAIL is not nested after RSET.
    c.cmd("MAIL FROM:<b@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    // RFC 5321 §4.1.4: EHLO resets too.
    c.cmd("EHLO client.example", "250").await;
    c.cmd("DATA", "503 5.5.1").await;
    let r = c
        .send_message("c@example.com", &[HOSTED], &message("after-rset"))
        .await;
    assert_eq!(stored(&srv, &r).mail_from, "c@example.com");
    assert_eq!(
        srv.messages().len(),
        1,
        "nothing from the reset transactions"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_parameters_size_8bitmime_and_null_sender() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME", "250")
        .await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    let body = "Subject: caf\u{e9}\r\nContent-Transfer-Encoding: 8bit\r\n\r\nna\u{ef}ve\r\n";
    c.send_raw(body.as_bytes()).await;
    c.send_raw(b".\r\n").await;
    let r = c.expect("250").await;
    let rec = stored(&srv, &r);
    assert_eq!(rec.body_type, "8BITMIME");
    assert_eq!(srv.ctx.store.body(&rec).unwrap(), body.as_bytes());

    // The null reverse-path (bounces) is accepted and stored as empty.
    let r = c.send_message("", &[HOSTED], &message("bounce")).await;
    let rec = stored(&srv, &r);
    assert_eq!(rec.mail_from, "");
    assert_eq!(rec.body_type, "7BIT");

    // BINARYMIME is not offered.
    c.cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME", "555 5.5.4")
        .await;
    c.cmd("MAIL FROM:<a@example.com> FROBNICATE=yes", "555")
        .await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smtputf8_allows_non_ascii_addresses_and_is_required_for_them() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example>", "553 5.6.7")
        .await;
    c.cmd("MAIL FROM:<ascii@example.com>", "250").await;
    c.cmd("RCPT TO:<s\u{fc}pport@demo.inbound.test>", "553 5.6.7")
        .await;
    c.cmd("RSET", "250").await;

    c.cmd("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8", "250")
        .await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    let body = "From: J\u{f6}rg <j\u{f6}rg@b\u{fc}cher.example>\r\nSubject: gr\u{fc}\u{df}e\r\n\r\nhallo\r\n";
    c.send_raw(body.as_bytes()).await;
    c.send_raw(b".\r\n").await;
    let r = c.expect("250").await;
    let rec = stored(&srv, &r);
    assert!(rec.smtputf8);
    assert_eq!(rec.mail_from, "j\u{f6}rg@b\u{fc}cher.example");
    assert_eq!(srv.ctx.store.body(&rec).unwrap(), body.as_bytes());
    assert!(
        rec.trace_headers.contains("with UTF8SMTP"),
        "{}",
        rec.trace_headers
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recipients_resolve_to_hosted_inboxes_only() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250 2.1.5")
        .await;
    // Case-insensitive domain and local part.
    c.cmd("RCPT TO:<Support@DEMO.Inbound.TEST>", "250 2.1.5")
        .await;
    c.cmd("RCPT TO:<SALES@acme.inbound.test>", "250 2.1.5")
        .await;
    // Sub-addressing: the tag is kept.
    c.cmd("RCPT TO:<support+Billing@demo.inbound.test>", "250 2.1.5")
        .await;
    // An alias of the demo inbox.
    c.cmd("RCPT TO:<help@demo.inbound.test>", "250 2.1.5").await;
    // Unknown local part at a hosted domain.
    c.cmd("RCPT TO:<nobody@demo.inbound.test>", "550 5.1.1")
        .await;
    c.cmd("RCPT TO:<nobody+support@demo.inbound.test>", "550 5.1.1")
        .await;
    // A hosted domain as a prefix of a foreign one is foreign.
    c.cmd(
        "RCPT TO:<support@demo.inbound.test.evil.example>",
        "550 5.7.1",
    )
    .await;
    // No open relay.
    c.cmd("RCPT TO:<x@nowhere.test>", "550 5.7.1").await;
    c.cmd("RCPT TO:<support@inbound.test>", "550 5.7.1").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: r\r\n\r\nx\r\n.\r\n").await;
    let r = c.expect("250").await;
    let rec = stored(&srv, &r);
    let got: Vec<(&str, &str, Option<&str>)> = rec
        .rcpt
        .iter()
        .map(|r| (r.address.as_str(), r.inbox.as_str(), r.tag.as_deref()))
        .collect();
    // The second spelling of support@ is the same recipient and is recorded once.
    assert_eq!(
        got,
        [
            ("support@demo.inbound.test", "demo", None),
            ("SALES@acme.inbound.test", "sales", None),
            ("support+Billing@demo.inbound.test", "demo", Some("billing")),
            ("help@demo.inbound.test", "demo", None),
        ]
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recipient_cap_answers_452_and_keeps_the_first() {
    let srv = TestServer::start_with("[limits]\nmax_recipients = 2\n").await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("RCPT TO:<help@demo.inbound.test>", "250").await;
    c.cmd("RCPT TO:<sales@acme.inbound.test>", "452 4.5.3")
        .await;
    c.cmd("RCPT TO:<support+x@demo.inbound.test>", "452 4.5.3")
        .await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: cap\r\n\r\nx\r\n.\r\n").await;
    let rec = stored(&srv, &c.expect("250").await);
    let addrs: Vec<&str> = rec.rcpt.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        addrs,
        ["support@demo.inbound.test", "help@demo.inbound.test"]
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_transaction_replies_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.send_raw(
        b"MAIL FROM:<a@example.com>\r\n\
          RCPT TO:<support@demo.inbound.test>\r\n\
          RCPT TO:<x@nowhere.test>\r\n\
          RCPT TO:<sales@acme.inbound.test>\r\n\
          DATA\r\n",
    )
    .await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("550 5.7.1").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    // End of data, then a whole second transaction and QUIT in the same write.
    c.send_raw(
        b"Subject: one\r\n\r\nfirst\r\n.\r\n\
          MAIL FROM:<b@example.com>\r\n\
          RCPT TO:<help@demo.inbound.test>\r\n\
          DATA\r\n",
    )
    .await;
    let first = c.expect("250 2.0.0").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send_raw(b"Subject: two\r\n\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n")
        .await;
    let second = c.expect("250 2.0.0").await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    c.expect_closed().await;

    let one = stored(&srv, &first);
    assert_eq!(one.rcpt.len(), 2);
    assert_eq!(
        srv.ctx.store.body(&one).unwrap(),
        b"Subject: one\r\n\r\nfirst\r\n"
    );
    let two = stored(&srv, &second);
    assert_eq!(two.mail_from, "b@example.com");
    assert_eq!(
        srv.ctx.store.body(&two).unwrap(),
        b"Subject: two\r\n\r\nsecond\r\n"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_data_with_no_accepted_recipient_fails_and_the_session_goes_on() {
    // RFC 2920 §3.1: DATA after refused recipients gets 503 (no 354), and the commands pipelined
    // behind it are still answered in order.
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.send_raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@nowhere.test>\r\nDATA\r\nRSET\r\n")
        .await;
    c.expect("250").await;
    c.expect("550 5.7.1").await;
    c.expect("503 5.5.1").await;
    c.expect("250").await;
    assert!(srv.messages().is_empty());
    srv.stop().await;
}

/// Issue #11: invalid UTF-8 in an SMTPUTF8 envelope was stored with replacement characters.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_the_envelope_is_553_5_6_7() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.send_raw(b"MAIL FROM:<j\xf6rg@example.com> SMTPUTF8\r\n")
        .await;
    c.expect("553 5.6.7").await;
    // Also when the line arrives in pieces, split inside the bad sequence's neighbourhood.
    c.send_raw(b"MAIL FROM:<j\xc3").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    c.send_raw(b"\x28rg@example.com> SMTPUTF8\r\n").await;
    c.expect("553 5.6.7").await;
    // Valid UTF-8 goes through.
    c.cmd("MAIL FROM:<j\u{f6}rg@example.com> SMTPUTF8", "250")
        .await;
    c.send_raw(b"RCPT TO:<support\xff@demo.inbound.test>\r\n")
        .await;
    c.expect("553 5.6.7").await;
    srv.stop().await;
}

/// Issue #11: control characters in HELO were copied raw into the stored `Received:`.
#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_helo_are_escaped_in_received() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.expect("220").await;
    c.cmd("EHLO evil\x01\x1b[31mhost\x7f.example", "250").await;
    let r = c
        .send_message(
            "a@example.com",
            &["support@demo.inbound.test"],
            &message("helo-escape"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().unwrap();
    let raw = srv.ctx.store.raw_message(&rec).unwrap();
    let head = String::from_utf8_lossy(&raw[..400.min(raw.len())]).into_owned();
    assert!(
        head.contains("Received: from evil\\x01\\x1b[31mhost\\x7f.example ("),
        "{head}"
    );
    let received = head.split("\r\n\t").next().unwrap();
    assert!(!received.chars().any(|c| c.is_control()), "{received:?}");
    srv.stop().await;
}

/// Issue #11: the ASCII (`xn--`) form of a hosted internationalised domain was refused 550
/// 5.7.1; A-labels and U-labels are one domain, whichever form the config uses.
#[tokio::test(flavor = "multi_thread")]
async fn a_hosted_idn_domain_is_the_same_domain_in_either_form() {
    let srv = TestServer::start_with(
        "[[inbox]]\nid = \"buecher\"\naddress = \"support@b\u{fc}cher.example\"\n\n\
         [[inbox]]\nid = \"muenchen\"\naddress = \"info@XN--MNCHEN-3YA.example\"\n",
    )
    .await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com> SMTPUTF8", "250").await;
    c.cmd("RCPT TO:<support@xn--bcher-kva.example>", "250")
        .await;
    c.cmd("RCPT TO:<support@B\u{dc}CHER.example>", "250").await;
    c.cmd("RCPT TO:<info@m\u{fc}nchen.example>", "250").await;
    c.cmd("RCPT TO:<info@xn--mnchen-3ya.example>", "250").await;
    c.cmd("RCPT TO:<nobody@xn--bcher-kva.example>", "550 5.1.1")
        .await;
    c.cmd("RCPT TO:<support@xn--bcher-kvb.example>", "550 5.7.1")
        .await;
    let cfg = srv.ctx.config();
    let addrs: Vec<&str> = cfg
        .inboxes
        .list
        .iter()
        .map(|i| i.address.as_str())
        .collect();
    assert!(addrs.contains(&"info@m\u{fc}nchen.example"), "{addrs:?}");
    srv.stop().await;
}
