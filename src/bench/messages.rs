//! The messages a run sends: plain RFC 5322 messages of an exact size with unique Message-IDs,
//! or the same DKIM-signed by a sender domain the bench's loopback DNS server vouches for.

use super::*;

/// The DKIM selector of the bench sender domain.
pub(super) const DKIM_SELECTOR: &str = "bench";
/// The loopback DNS server of `--mode auth` (started once per process, on a thread and runtime
/// of its own that outlive every run): SPF authorises 127.0.0.1 for the sender domain, its DKIM
/// key, and DMARC p=reject; every other name is NXDOMAIN, so no query leaves the machine.
pub(super) fn auth_dns() -> Result<SocketAddr> {
    static DNS: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    if let Some(a) = DNS.get() {
        return Ok(*a);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-dns".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return drop(tx.send(Err(e))),
            };
            rt.block_on(async {
                let dns = TestDns::start().await;
                dns.add_txt(PLAIN_FROM_DOMAIN, "v=spf1 ip4:127.0.0.1 -all");
                dns.add_txt(&format!("_dmarc.{PLAIN_FROM_DOMAIN}"), "v=DMARC1; p=reject");
                TestKey::rsa().publish(&dns, DKIM_SELECTOR, PLAIN_FROM_DOMAIN);
                let _ = tx.send(Ok(dns.addr()));
                // Serve until the process exits.
                std::future::pending::<()>().await
            })
        })
        .context("starting the bench DNS server")?;
    let addr = rx
        .recv()
        .context("the bench DNS server did not start")?
        .context("starting the bench DNS server")?;
    Ok(*DNS.get_or_init(|| addr))
}

/// Plain messages with a DKIM-Signature of the sender domain. The signature covers From, To,
/// Subject and Date and the body, not the Message-ID, so one signature per sender serves every
/// message: the server verifies each one in full while the client signs once.
pub(super) struct SignedMessages {
    pub(super) plain: PlainMessages,
    pub(super) signatures: std::sync::Mutex<std::collections::HashMap<u32, Vec<u8>>>,
}

impl SignedMessages {
    pub(super) fn new(plain: PlainMessages) -> Result<SignedMessages> {
        Ok(SignedMessages {
            plain,
            signatures: Default::default(),
        })
    }

    pub(super) fn signature(&self, sender: u32) -> Vec<u8> {
        let mut map = self.signatures.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(sender)
            .or_insert_with(|| {
                let mut template = Vec::new();
                self.plain.render(
                    MessageId {
                        run: 0,
                        client: 0,
                        seq: 0,
                        sender,
                    },
                    &mut template,
                );
                // The rendered message is dot-stuffed and terminated; sign the message itself.
                let unstuffed = template
                    .strip_suffix(b".\r\n")
                    .map(|m| m.to_vec())
                    .unwrap_or_default()
                    .split(|&b| b == b'\n')
                    .map(|line| {
                        line.strip_prefix(b"..")
                            .map(|l| [b".", l].concat())
                            .unwrap_or(line.to_vec())
                    })
                    .collect::<Vec<_>>()
                    .join(&b'\n');
                sign::dkim_signature(
                    &unstuffed,
                    PLAIN_FROM_DOMAIN,
                    DKIM_SELECTOR,
                    &TestKey::rsa(),
                    &["From", "To", "Subject", "Date"],
                )
                .into_bytes()
            })
            .clone()
    }
}

impl Messages for SignedMessages {
    fn mail_from(&self, sender: u32) -> String {
        self.plain.mail_from(sender)
    }

    fn render(&self, id: MessageId, out: &mut Vec<u8>) {
        let sig = self.signature(id.sender);
        self.plain.render(id, out);
        out.splice(0..0, sig);
    }
}

/// Which message a client sends: unique across runs, clients and sequence numbers.
#[derive(Debug, Clone, Copy)]
pub(super) struct MessageId {
    pub(super) run: u64,
    pub(super) client: u32,
    pub(super) seq: u64,
    /// Which of the `--senders` sends it.
    pub(super) sender: u32,
}

/// A source of benchmark messages for one size.
pub(super) trait Messages: Send + Sync {
    /// The envelope sender (MAIL FROM) of `sender`'s messages.
    fn mail_from(&self, sender: u32) -> String;
    /// Replace `out` with message `id` as sent after the 354: dot-stuffed and terminated by
    /// `.<CRLF>`. Unstuffed, it is exactly the size the source was built for.
    fn render(&self, id: MessageId, out: &mut Vec<u8>);
}

/// Plain messages: From, To, Subject, Date, MIME-Version, Content-Type and a unique Message-ID,
/// then text lines up to the exact size. The sender and the Message-ID have fixed widths, so the
/// padding is computed once and shared.
pub(super) struct PlainMessages {
    /// Header fields after the From address, up to and including `Message-ID: <`.
    pub(super) head: Vec<u8>,
    /// After the Message-ID's local part: its domain, the end of the header section.
    pub(super) head_tail: &'static [u8],
    /// The body, dot-stuffed, with the terminator.
    pub(super) body: Vec<u8>,
}

/// Width of `{run:016x}.{client:05}.{seq:09}`.
pub(super) const MESSAGE_ID_LOCAL_CHARS: usize = 16 + 1 + 5 + 1 + 9;
pub(super) const MAX_CLIENTS: usize = 99_999;
pub(super) const MAX_MESSAGES: u64 = 999_999_999;
pub(super) const MAX_SENDERS: u32 = 999_999;
/// `From: Bench <` and the address, whose local part is `bench{sender:06}`.
pub(super) const FROM_FIELD: &str = "From: Bench <";

pub(super) fn plain_sender(sender: u32) -> String {
    format!("bench{sender:06}@{PLAIN_FROM_DOMAIN}")
}

impl PlainMessages {
    pub(super) fn new(size: u64, rcpt: &str, date_ms: u64) -> Result<PlainMessages> {
        let head = format!(
            ">\r\nTo: <{rcpt}>\r\nSubject: inbound bench, {size} bytes\r\n\
             Date: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\
             Message-ID: <",
            crate::util::rfc5322_date(date_ms)
        )
        .into_bytes();
        let head_tail: &'static [u8] = b"@bench.inbound.test>\r\n\r\n";
        let head_len = FROM_FIELD.len()
            + plain_sender(0).len()
            + head.len()
            + MESSAGE_ID_LOCAL_CHARS
            + head_tail.len();
        let body = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_sub(head_len))
            .and_then(padding);
        let Some(body) = body else {
            let min = head_len + LINE_CHARS + 2;
            bail!("size {size} is too small: its header section is {head_len} bytes; use {min}+");
        };
        let mut body = dot_stuff(&body);
        body.extend_from_slice(b".\r\n");
        Ok(PlainMessages {
            head,
            head_tail,
            body,
        })
    }
}

impl Messages for PlainMessages {
    fn mail_from(&self, sender: u32) -> String {
        plain_sender(sender)
    }

    fn render(&self, id: MessageId, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(FROM_FIELD.as_bytes());
        out.extend_from_slice(plain_sender(id.sender).as_bytes());
        out.extend_from_slice(&self.head);
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{:016x}.{:05}.{:09}", id.run, id.client, id.seq);
        out.extend_from_slice(self.head_tail);
        out.extend_from_slice(&self.body);
    }
}

/// `bytes` of body text: lines of `LINE_CHARS` characters and CRLF, the last one or two shorter so
/// the total is exact. `None` when no set of lines adds up (1 byte).
pub(super) fn padding(bytes: usize) -> Option<Vec<u8>> {
    const TEXT: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
        tempor incididunt ut labore et dolore magna aliqua 0123456789 ";
    let line = LINE_CHARS + 2;
    let (mut full, rest) = (bytes / line, bytes % line);
    let mut tail: Vec<usize> = Vec::new();
    match rest {
        0 => {}
        // A lone byte cannot be a line: split one full line and the byte into two lines.
        1 if full > 0 => {
            full -= 1;
            let first = (line + 1).div_ceil(2);
            tail.extend([first - 2, line + 1 - first - 2]);
        }
        1 => return None,
        r => tail.push(r - 2),
    }
    let mut out = Vec::with_capacity(bytes);
    let lengths = std::iter::repeat_n(LINE_CHARS, full).chain(tail);
    for (i, chars) in lengths.enumerate() {
        let start = (i * 7) % TEXT.len();
        out.extend((0..chars).map(|k| TEXT[(start + k) % TEXT.len()]));
        out.extend_from_slice(b"\r\n");
    }
    debug_assert_eq!(out.len(), bytes);
    Some(out)
}
