//! Message bytes -> header summary (Subject, From, Message-ID), RFC 5322 §3.6 with RFC 2047
//! decoding by mail-parser. Only the header section is read; malformed input yields empty fields.

use mail_parser::MessageParser;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub subject: String,
    /// The first From address, lower-cased domain not enforced: as written.
    pub from: String,
    pub message_id: String,
}

pub fn summarize(head: &[u8]) -> Summary {
    let Some(msg) = MessageParser::new().parse_headers(head) else {
        return Summary::default();
    };
    Summary {
        subject: msg.subject().unwrap_or_default().to_string(),
        from: msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_string(),
        message_id: msg.message_id().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_headers() {
        let s = summarize(
            b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.de>\r\nSubject: =?utf-8?b?SMOkbGxv?=\r\nMessage-ID: <a@b>\r\n\r\nbody",
        );
        assert_eq!(s.from, "j@example.de");
        assert_eq!(s.subject, "Hällo");
        assert_eq!(s.message_id, "a@b");
        assert_eq!(summarize(b"\x00\xff garbage"), Summary::default());
    }
}
