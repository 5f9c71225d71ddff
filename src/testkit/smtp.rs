//! SMTP client of the tests and the bench: commands and raw bytes out, replies in (their code, or
//! code and every line). RFC 5321 §4.2 (replies, multi-line with `-`), §4.5.2 (dot-stuffing).
//!
//! Two ways to use it over one connection type:
//! - transcript style, for tests, panicking on anything unexpected:
//!   `c.cmd("RCPT TO:<x@nowhere.test>", "550 5.7.1").await`;
//! - fallible and cheap per message, for the bench: `write` a pipelined group, `reply_code` for
//!   each reply (no allocation: the line buffer is reused, `last_line` shows the final line of
//!   the reply just read).
//!
//! The stream is read through one buffer and written straight through, so `into_inner` hands
//! back the bare stream (for STARTTLS) as long as the server has sent nothing unasked for.

use std::io::{Error, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a reply may take before `read_reply` gives up, unless `timeout` is changed.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client<S> {
    io: BufReader<S>,
    /// The line last read, with its line ending.
    line: Vec<u8>,
    /// How long one reply line may take: past it, a read fails with `TimedOut` (`read_reply`
    /// answers `None`) and the connection is in an unknown state.
    pub timeout: Duration,
}

/// One reply: its code and its lines' text (without the code and separator).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The last word of the last line (the queue id of a `250 ... queued as ID`).
    pub fn last_word(&self) -> String {
        self.lines
            .last()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_string()
    }
}

impl Client<TcpStream> {
    /// Connect, or panic (tests).
    pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
        Client::try_connect(addr).await.expect("connect")
    }

    /// Connect with Nagle off: every write is a whole command group or a whole message, and
    /// holding it back would only add latency.
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<Client<TcpStream>> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client::new(stream))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Client<S> {
        Client {
            io: BufReader::with_capacity(4096, stream),
            line: Vec::with_capacity(512),
            timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// The bare stream; bytes already read into the buffer and not yet taken are lost.
    pub fn into_inner(self) -> S {
        self.io.into_inner()
    }

    // -- Fallible, for the bench ---------------------------------------------------------------

    /// Write bytes as they are and flush them.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.io.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// Read one line into `self.line`; 0 at EOF.
    async fn next_line(&mut self) -> std::io::Result<usize> {
        self.line.clear();
        tokio::time::timeout(self.timeout, self.io.read_until(b'\n', &mut self.line))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "no reply within the timeout"))?
    }

    /// Read one reply line: its code and whether more lines follow (`250-`).
    async fn reply_line(&mut self) -> std::io::Result<(u16, bool)> {
        if self.next_line().await? == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let code = std::str::from_utf8(self.line.get(..3).unwrap_or_default())
            .ok()
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidData,
                    format!("not an SMTP reply: {:?}", self.last_line()),
                )
            })?;
        Ok((code, self.line.get(3) == Some(&b'-')))
    }

    /// Read one whole reply and return its code only: nothing is allocated.
    pub async fn reply_code(&mut self) -> std::io::Result<u16> {
        loop {
            let (code, more) = self.reply_line().await?;
            if !more {
                return Ok(code);
            }
        }
    }

    /// The line last read, without its line ending (after `reply_code`: the reply's last line).
    pub fn last_line(&self) -> String {
        String::from_utf8_lossy(&self.line).trim_end().to_string()
    }

    /// Read one whole reply, every line.
    pub async fn try_read_reply(&mut self) -> std::io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let (code, more) = self.reply_line().await?;
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches(['\r', '\n']);
            lines.push(text.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    // -- Transcript style, for tests -----------------------------------------------------------

    /// Send one command line (CRLF added).
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Send raw bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.write(bytes).await.expect("write");
    }

    /// Try to send; false when the server has closed the connection.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.write(bytes).await.is_ok()
    }

    /// Read one (possibly multi-line) reply; `None` on EOF or timeout. A line that is no reply
    /// fails the test.
    pub async fn read_reply(&mut self) -> Option<Reply> {
        match self.try_read_reply().await {
            Ok(r) => Some(r),
            Err(e) if e.kind() == ErrorKind::InvalidData => panic!("{e}"),
            Err(_) => None,
        }
    }

    /// Read a reply and assert that it starts with `prefix` ("250", "550 5.1.1").
    pub async fn expect(&mut self, prefix: &str) -> Reply {
        let r = self
            .read_reply()
            .await
            .unwrap_or_else(|| panic!("expected {prefix:?}, got EOF/timeout"));
        let full = format!("{} {}", r.code, r.lines.last().cloned().unwrap_or_default());
        assert!(full.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    /// `send` then `expect`.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> Reply {
        self.send(line).await;
        self.expect(prefix).await
    }

    /// Whether the server closed the connection (EOF within the timeout).
    pub async fn expect_closed(&mut self) {
        let n = match self.next_line().await {
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                panic!("server should close the connection")
            }
            r => r.unwrap_or(0),
        };
        assert_eq!(n, 0, "expected EOF, got {:?}", self.last_line());
    }

    /// Greeting + EHLO.
    pub async fn hello(&mut self) -> Reply {
        self.expect("220").await;
        self.cmd("EHLO client.example", "250").await
    }

    /// A whole transaction with DATA; returns the final reply.
    pub async fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>"), "250").await;
        }
        self.cmd("DATA", "354").await;
        self.send_raw(&dot_stuff(body)).await;
        self.send_raw(b".\r\n").await;
        self.read_reply().await.expect("reply to end of data")
    }
}

/// Dot-stuff a CRLF message for DATA (RFC 5321 §4.5.2: a line that starts with a dot gets one
/// more) and make sure it ends with CRLF. The terminator `.<CRLF>` is not added.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 2);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
