//! Issue #15's "message as integrators expect it": `GET /v1/messages/{id}` reads text, HTML,
//! stripped text, headers, addresses, date and attachment details from the stored body. The mail
//! is written by Python's `email` package (its own charset codecs and transfer encodings, not
//! ours) and sent over SMTP to the real server; the stripped text is checked over the
//! attribution corpus's real client layouts in 33 languages.
use crate::support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::*;

const DEMO: &str = "support@demo.inbound.test";

async fn send(srv: &TestServer, body: &[u8]) -> String {
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c.send_message("customer@example.com", &[DEMO], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    r.last_word()
}

/// Builds each case with Python's email package: the names and subject as RFC 2047 words in the
/// case's charset, the text (and HTML) in that charset with the transfer encoding Python picks
/// for it (quoted-printable for ISO-8859-1, base64 for UTF-8, 7bit for ISO-2022-JP, ...).
const PYTHON_BUILDER: &str = r#"
import email.policy, json, sys
from email.charset import Charset, QP
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr

out = []
for c in json.load(sys.stdin):
    cs = c["charset"]
    if c.get("qp"):
        ch = Charset(cs); ch.body_encoding = QP; cs_text = ch
    else:
        cs_text = cs
    body = MIMEText(c["text"], "plain", cs_text)
    if c.get("html"):
        alt = MIMEMultipart("alternative")
        alt.attach(body)
        alt.attach(MIMEText(c["html"], "html", cs_text))
        body = alt
    if c.get("attach"):
        m = MIMEMultipart("mixed")
        m.attach(body)
        img = MIMEImage(b"\x89PNG\r\n\x1a\n0000", "png")
        img.add_header("Content-ID", "<logo@example.com>")
        m.attach(img)
        pdf = MIMEApplication(b"%PDF-1.4 hello", "pdf")
        pdf.add_header("Content-Disposition", "attachment", filename=("utf-8", "", c["file"]))
        m.attach(pdf)
    else:
        m = body
    m["From"] = formataddr((c["from_name"], "customer@example.com"), charset=cs)
    m["To"] = formataddr((c["to_name"], "support@demo.inbound.test"), charset=cs)
    m["Cc"] = "Team <team@example.com>, other@example.com"
    m["Reply-To"] = formataddr((c["from_name"], "reply@example.com"), charset=cs)
    m["Subject"] = Header(c["subject"], cs)
    m["Date"] = "Sun, 22 Nov 2026 11:00:00 +0100"
    m["Message-ID"] = "<" + c["id"] + "@example.com>"
    m["X-Case"] = c["id"]
    out.append(m.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n")).hex())
print(json.dumps(out))
"#;

fn python_build(cases: &Value) -> Vec<Vec<u8>> {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_BUILDER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (tests/run.sh installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(cases.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// Each case: charset, names, subject, the reply as written (new text over a quoted history in
/// that language's layout), and the new text alone.
fn cases() -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({"id": "latin1", "charset": "iso-8859-1", "qp": true,
                "from_name": "Hélène Dupré", "to_name": "Équipe support",
                "subject": "Re: Facture réglée ?",
                "text": "Merci, c'est réglé.\n\nLe lun. 8 janv. 2024 à 10:15, Jeanne <jeanne@example.fr> a écrit :\n> Essayez de redémarrer.\n"}),
            "Merci, c'est réglé.",
        ),
        (
            json!({"id": "cp1252", "charset": "windows-1252",
                "from_name": "Jürgen Müller", "to_name": "Kundendienst",
                "subject": "AW: Rechnung über 20 €",
                "text": "Danke – der Betrag über 20 € ist angekommen.\n\n-- \nJürgen Müller\nBäckerei\n\n-----Ursprüngliche Nachricht-----\nVon: Support\nGesendet: Montag\nAn: Jürgen\nBetreff: Rechnung\n",
                "html": "<p>Danke – der Betrag über 20 € ist angekommen.</p>"}),
            "Danke – der Betrag über 20 € ist angekommen.",
        ),
        (
            json!({"id": "iso2022jp", "charset": "iso-2022-jp",
                "from_name": "山田太郎", "to_name": "サポート",
                "subject": "Re: 請求書について",
                "text": "ありがとうございます。解決しました。\n\n2024年1月8日(月) 10:15 山田 <yamada@example.jp>:\n\n> 請求書が届きません。\n"}),
            "ありがとうございます。解決しました。",
        ),
        (
            json!({"id": "sjis", "charset": "shift_jis",
                "from_name": "佐藤花子", "to_name": "サポート",
                "subject": "Re: 返品",
                "text": "返品の件、了解しました。\n\n2024年1月8日 10:15 佐藤 <sato@example.jp> 書きました:\n> 返品をお願いします。\n"}),
            "返品の件、了解しました。",
        ),
        (
            json!({"id": "koi8r", "charset": "koi8-r",
                "from_name": "Иван Петров", "to_name": "Поддержка",
                "subject": "Re: Счёт",
                "text": "Спасибо, всё работает.\n\n8 января 2024 г., 10:15 пользователь Анна <anna@example.ru> написал:\n> Попробуйте перезапустить.\n"}),
            "Спасибо, всё работает.",
        ),
        (
            json!({"id": "utf8b64", "charset": "utf-8", "attach": true, "file": "Überweisung März.pdf",
                "from_name": "Zoë Ångström", "to_name": "Support",
                "subject": "Re: Ticket 42 ✓",
                "text": "Works now 👍\n\nOn Mon, Jan 8, 2024 at 10:15 AM Support <support@demo.inbound.test> wrote:\n> Please try again.\n> \n> -- \n> Support\n",
                "html": "<div>Works now 👍</div><img src=\"cid:logo@example.com\"><blockquote>Please try again.</blockquote>"}),
            "Works now 👍",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn message_detail_decodes_charsets_headers_addresses_and_parts() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let cases = cases();
    let built = python_build(&Value::Array(cases.iter().map(|c| c.0.clone()).collect()));
    for ((case, stripped), raw) in cases.iter().zip(&built) {
        let id = send(&srv, raw).await;
        let m = api.ok(&format!("/v1/messages/{id}")).await;
        let name = case["id"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        // Line ends as sent (CRLF on the wire); the characters as written.
        let got_text = m["text"].as_str().unwrap().replace("\r\n", "\n");
        assert_eq!(got_text.trim_end(), text.trim_end(), "{name}: text");
        assert_eq!(m["stripped_text"], *stripped, "{name}: stripped_text");
        match case.get("html") {
            Some(h) => assert_eq!(
                m["html"].as_str().unwrap().trim_end(),
                h.as_str().unwrap(),
                "{name}: html, as sent"
            ),
            None => assert!(m["html"].is_null(), "{name}: no html part"),
        }
        assert_eq!(m["subject"], case["subject"], "{name}: subject");
        assert_eq!(
            m["to"],
            json!([{"name": case["to_name"], "email": DEMO}]),
            "{name}: to"
        );
        assert_eq!(
            m["cc"],
            json!([{"name": "Team", "email": "team@example.com"},
                   {"name": null, "email": "other@example.com"}]),
            "{name}: cc"
        );
        assert_eq!(
            m["reply_to"],
            json!([{"name": case["from_name"], "email": "reply@example.com"}]),
            "{name}: reply_to"
        );
        assert_eq!(m["date"], "2026-11-22T10:00:00Z", "{name}: date in UTC");
        assert_eq!(m["received_at"].as_str().unwrap().len(), 20, "{name}");
        // Header fields in order, names as written, encoded words decoded.
        let headers: Vec<(String, String)> = m["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap().to_string(),
                    h["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let names: Vec<&str> = headers.iter().map(|h| h.0.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(at("From") < at("To") && at("To") < at("Subject") && at("Subject") < at("X-Case"));
        let value = |n: &str| headers[at(n)].1.clone();
        assert_eq!(
            value("Subject"),
            case["subject"].as_str().unwrap(),
            "{name}"
        );
        assert!(
            value("From").contains(case["from_name"].as_str().unwrap()),
            "{name}: {}",
            value("From")
        );
        assert_eq!(value("X-Case"), name);
        // Our trace fields are not the message's.
        assert!(
            !names.contains(&"Authentication-Results"),
            "{name}: {names:?}"
        );
    }
    // The multipart case: an inline image named by Content-ID, a file attachment.
    let id = send(&srv, built.last().unwrap()).await;
    let m = api.ok(&format!("/v1/messages/{id}")).await;
    let atts = m["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2, "{atts:?}");
    assert_eq!(atts[0]["content_id"], "logo@example.com");
    assert_eq!(atts[0]["inline"], true);
    assert_eq!(atts[0]["disposition"], Value::Null);
    assert_eq!(atts[1]["name"], "Überweisung März.pdf");
    assert_eq!(atts[1]["disposition"], "attachment");
    assert_eq!(atts[1]["inline"], false);
    assert_eq!(atts[1]["content_id"], Value::Null);

    // Retention took the body: the record's fields stay, the content is null, and the
    // answer still validates against the document (Api checks every answer).
    assert!(srv.ctx.store.expire_body(&id).unwrap());
    let m = api.ok(&format!("/v1/messages/{id}")).await;
    assert_eq!(m["body"], "expired");
    assert_eq!(m["subject"], "Re: Ticket 42 ✓");
    for key in [
        "text",
        "html",
        "stripped_text",
        "headers",
        "to",
        "cc",
        "reply_to",
        "date",
    ] {
        assert!(m[key].is_null(), "{key} after expiry: {}", m[key]);
    }
    assert!(m["attachments"][0]["inline"].is_null());
    assert_eq!(m["attachments"][1]["name"], "Überweisung März.pdf");
    srv.stop().await;
}

/// One entry of the attribution corpus's expected.json (the fields used here).
#[derive(serde::Deserialize)]
struct Expect {
    client: String,
    lang: String,
    format: String,
    email: String,
    method: String,
}

/// Every manual forward of the corpus (real client layouts, 33 languages, legacy charsets,
/// plain, HTML-only and alternative bodies): the stripped text is the forwarder's note alone,
/// never the forwarded block (whose author's address is what the history names).
#[test]
fn stripped_text_leaves_out_every_forwarded_block_of_the_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attribution");
    let expected: BTreeMap<String, Expect> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let (mut checked, mut wrong) = (0, Vec::new());
    let mut languages = std::collections::BTreeSet::new();
    for (name, e) in &expected {
        let body_forward = e.method.starts_with("manual_forward:")
            && matches!(e.format.as_str(), "plain" | "html" | "alternative");
        if !body_forward {
            continue;
        }
        let raw = std::fs::read(dir.join(name)).unwrap();
        let content = inbound::pipeline::body::read(&raw).expect("parses");
        let stripped = content.stripped_text.unwrap_or_default();
        checked += 1;
        languages.insert(e.lang.clone());
        if stripped.to_lowercase().contains(&e.email.to_lowercase()) {
            wrong.push(format!("{name} ({}): {stripped:?}", e.client));
        }
    }
    assert!(checked > 300, "only {checked} forwards in the corpus");
    assert!(languages.len() >= 33, "{languages:?}");
    assert!(
        wrong.is_empty(),
        "{} of {checked} keep the forwarded block:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
