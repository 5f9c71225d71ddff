//! Notification mail: rendering (RFC 5322 + MIME, safe against header injection from the
//! customer text it quotes) and delivery through the configured relay with mail-send.

use std::time::Duration;

use mail_send::smtp::message::Message;
use mail_send::{SmtpClient, SmtpClientBuilder};

use crate::config::outbound::{RelayConfig, RelaySecurity};

use super::worker::Outcome;

pub struct Compose<'a> {
    pub from_name: &'a str,
    pub from: &'a str,
    pub to: &'a [String],
    pub subject: &'a str,
    /// Plain text, lines ending in CRLF.
    pub text: &'a str,
    /// Without angle brackets.
    pub message_id: &'a str,
    pub date_ms: u64,
    /// Recorded in `X-Inbound-Purpose`.
    pub purpose: &'a str,
}

/// A header value on one line: control characters (CR, LF above all) become spaces, so text
/// taken from a customer's message cannot add header fields.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// RFC 2047 encoded-words for a non-ASCII header text (B encoding, UTF-8), split so that each
/// word stays under 75 characters and no character is cut.
fn encode_words(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!(
                "=?UTF-8?B?{}?=",
                crate::util::base64(chunk.as_bytes())
            ));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!(
            "=?UTF-8?B?{}?=",
            crate::util::base64(chunk.as_bytes())
        ));
    }
    words.join("\r\n ")
}

/// `Name <address>` with the name quoted or encoded as needed.
fn mailbox(name: &str, address: &str) -> String {
    let name = one_line(name);
    if name.is_empty() {
        return format!("<{address}>");
    }
    if !name.is_ascii() {
        return format!("{} <{address}>", encode_words(&name));
    }
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        format!("{name} <{address}>")
    } else {
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{quoted}\" <{address}>")
    }
}

/// The complete message, CRLF line endings. ASCII text with short lines goes as 7bit; anything
/// else as base64 (a relay without 8BITMIME must still take it).
pub fn render(c: &Compose<'_>) -> String {
    let mut out = String::with_capacity(c.text.len() + 1024);
    let mut header = |name: &str, value: &str| {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    };
    header("From", &mailbox(c.from_name, c.from));
    header(
        "To",
        &c.to
            .iter()
            .map(|a| format!("<{}>", one_line(a)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    header("Subject", &encode_words(&one_line(c.subject)));
    header("Date", &crate::util::rfc5322_date(c.date_ms));
    header("Message-ID", &format!("<{}>", one_line(c.message_id)));
    // RFC 3834: automatic mail; auto-responders must not answer it, and our own ingest treats it
    // as automatic if it ever comes back.
    header("Auto-Submitted", "auto-generated");
    header("X-Inbound-Purpose", &one_line(c.purpose));
    header("MIME-Version", "1.0");
    header("Content-Type", "text/plain; charset=utf-8");
    let text = c.text.replace("\r\n", "\n").replace('\n', "\r\n");
    let seven_bit = text.is_ascii() && text.split("\r\n").all(|l| l.len() <= 998);
    if seven_bit {
        header("Content-Transfer-Encoding", "7bit");
        out.push_str("\r\n");
        out.push_str(&text);
    } else {
        header("Content-Transfer-Encoding", "base64");
        out.push_str("\r\n");
        let encoded = crate::util::base64(text.as_bytes());
        for line in encoded.as_bytes().chunks(76) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push_str("\r\n");
        }
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out
}

/// Send one rendered message through the relay. The relay's 5xx is permanent (the item is
/// dropped and logged); anything else (refused connection, timeout, 4xx, TLS trouble) is
/// retried later.
pub async fn send(relay: &RelayConfig, helo: &str, to: &[String], message: &str) -> Outcome {
    let msg = Message::new(
        relay.from.as_str(),
        to.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        message.as_bytes(),
    );
    let builder = match SmtpClientBuilder::new(relay.host.clone(), relay.port) {
        Ok(b) => b,
        Err(e) => return Outcome::Retry(format!("relay TLS setup: {e}")),
    };
    let mut builder = builder
        .implicit_tls(relay.security == RelaySecurity::Tls)
        .helo_host(helo)
        .timeout(relay.timeout.max(Duration::from_millis(100)));
    if relay.accept_invalid_certs {
        builder = builder.allow_invalid_certs();
    }
    if let Some((user, pass)) = &relay.credentials {
        builder = builder.credentials((user.clone(), pass.clone()));
    }
    let result = match relay.security {
        RelaySecurity::None => match builder.connect_plain().await {
            Ok(client) => send_and_quit(client, msg).await,
            Err(e) => Err(e),
        },
        _ => match builder.connect().await {
            Ok(client) => send_and_quit(client, msg).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => Outcome::Delivered(format!("accepted by relay {}:{}", relay.host, relay.port)),
        Err(mail_send::Error::UnexpectedReply(r)) if r.code() >= 500 => {
            Outcome::Permanent(format!("relay refused: {} {}", r.code(), r.message()))
        }
        Err(mail_send::Error::AuthenticationFailed(r)) => {
            // A wrong password is the operator's to fix (a reload can); keep the mail meanwhile.
            Outcome::Retry(format!(
                "relay authentication failed: {} {}",
                r.code(),
                r.message()
            ))
        }
        Err(e) => Outcome::Retry(format!("relay {}:{}: {e}", relay.host, relay.port)),
    }
}

/// One transaction on a connected client (clear or TLS), then QUIT.
async fn send_and_quit<T>(mut client: SmtpClient<T>, msg: Message<'_>) -> mail_send::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let r = client.send(msg).await;
    let _ = client.quit().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose<'a>(subject: &'a str, text: &'a str, to: &'a [String]) -> Compose<'a> {
        Compose {
            from_name: "ACME \"Support\"",
            from: "support@acme.example",
            to,
            subject,
            text,
            message_id: "x.1@host",
            date_ms: 0,
            purpose: "test",
        }
    }

    #[test]
    fn header_injection_from_a_subject_is_neutralised() {
        let to = vec!["a@b.example".to_string()];
        let m = render(&compose("hi\r\nBcc: evil@x.example", "body\r\n", &to));
        assert!(!m.contains("\r\nBcc:"), "{m}");
        assert!(m.contains("Subject: hi  Bcc: evil@x.example\r\n"), "{m}");
        assert!(m.contains("From: \"ACME \\\"Support\\\"\" <support@acme.example>\r\n"));
    }

    #[test]
    fn non_ascii_is_encoded() {
        let to = vec!["a@b.example".to_string()];
        let m = render(&compose(
            "Bestätigungscode für Ihr Postfach – überall",
            "Grüße\n",
            &to,
        ));
        assert!(m.is_ascii(), "{m}");
        assert!(m.contains("Subject: =?UTF-8?B?"));
        assert!(m.contains("Content-Transfer-Encoding: base64"));
        let parsed = mail_parser::MessageParser::default()
            .parse(m.as_bytes())
            .unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Bestätigungscode für Ihr Postfach – überall")
        );
        assert_eq!(parsed.body_text(0).as_deref(), Some("Grüße\r\n"));
    }
}
