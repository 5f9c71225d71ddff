//! One SMTP connection: bytes in -> replies out, and finished messages handed to the pipeline and
//! the store. RFC 5321 (commands, replies, timeouts), RFC 2920 (PIPELINING: replies are buffered
//! until the client's pipelined input is used up), RFC 3030 (CHUNKING/BDAT), RFC 3207 (STARTTLS),
//! RFC 1870 (SIZE), RFC 6531 (SMTPUTF8).
//!
//! The session owns its read and write buffers and nothing else: limits are checked through
//! `Limits`, messages are made durable through `Store::commit`, and a 250 for a message is written
//! only after that returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::{RequestReceiver, MAX_LINE_LENGTH};
use smtp_proto::{Error as ProtoError, MailFrom, RcptTo, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

mod envelope;
mod log;
mod message;

use log::RejectLine;

use super::data::{DataDecoder, HeaderMeter};
use super::reply::{write_multiline, Reply};
use crate::config::Recipient;
use crate::context::Ctx;
use crate::metrics::Rejection;
use crate::pipeline::{self, Envelope, PendingSpf, Refusal};
use crate::store::keys::new_queue_id;
use crate::store::{BodyBuffer, RcptRecord};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How a session ended, for the caller that owns the socket.
pub enum Outcome {
    /// The connection is finished (QUIT, 421, error, EOF).
    Closed,
    /// The client asked for TLS and got 220: the caller upgrades the stream and continues with
    /// `Session::resume`.
    StartTls,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client left our replies unread for `limits.write_timeout`; the connection is dropped
    /// without a goodbye (it would not read one).
    #[error("client read no reply for {}ms", .0.as_millis())]
    WriteTimeout(Duration),
}

/// When the body bytes of one DATA, or of one BDAT chunk, began to arrive and how many have:
/// the minimum data rate is measured against it.
#[derive(Clone, Copy)]
struct DataClock {
    started: Instant,
    bytes: u64,
}

/// What the state machine is reading.
enum Input {
    Command,
    /// After a too-long command line: skip to its end, then back to commands.
    SkipLine,
    Data(DataDecoder),
    Bdat {
        left: usize,
        last: bool,
    },
}

struct Transaction {
    mail_from: String,
    body_type: &'static str,
    smtputf8: bool,
    rcpt: Vec<RcptRecord>,
    body: Option<BodyBuffer>,
    /// The reply this transaction ends with instead of a 250 (size exceeded, disk error).
    error: Option<Reply>,
    /// Body bytes received so far through BDAT (DATA counts in its decoder).
    bdat_bytes: u64,
    /// The header section's length so far, against `limits.max_header_bytes`.
    header: HeaderMeter,
    used_bdat: bool,
    /// SPF, running since MAIL FROM; `None` when this client is not checked.
    spf: Option<PendingSpf>,
}

/// Everything about a session except its stream, so STARTTLS can move it onto a TLS stream.
pub struct SessionState {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    input: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    receiver: RequestReceiver,
    mode: Input,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<String>,
    txn: Option<Transaction>,
    bad_commands: u32,
    transactions: u32,
    /// Scratch sink for body bytes that are being discarded.
    discard: Vec<u8>,
    /// When the command line being read must be complete (`limits.command_timeout` after the
    /// server began waiting for it); `None` until then. Bytes arriving do not move it.
    command_deadline: Option<Instant>,
    /// Set while reading DATA or a BDAT chunk.
    data_clock: Option<DataClock>,
}

pub struct Session<S> {
    io: S,
    st: SessionState,
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A new session on a connection from `peer` (the real client, after any PROXY header);
    /// `early` holds bytes already read from the connection.
    pub fn new(io: S, ctx: Arc<Ctx>, peer: SocketAddr, early: Vec<u8>) -> Session<S> {
        Session {
            io,
            st: SessionState {
                ctx,
                peer,
                input: early,
                pos: 0,
                out: Vec::with_capacity(1024),
                receiver: RequestReceiver::default(),
                mode: Input::Command,
                helo: None,
                esmtp: false,
                tls: None,
                txn: None,
                bad_commands: 0,
                transactions: 0,
                discard: Vec::new(),
                command_deadline: None,
                data_clock: None,
            },
        }
    }

    /// Continue a session on a new stream after STARTTLS. RFC 3207 §4.2: the client starts again
    /// with EHLO, and nothing it pipelined before the handshake may be used (CVE-2011-0411).
    pub fn resume(io: S, mut st: SessionState, tls_version: String) -> Session<S> {
        st.input.clear();
        st.pos = 0;
        st.helo = None;
        st.esmtp = false;
        st.txn = None;
        st.receiver = RequestReceiver::default();
        st.mode = Input::Command;
        st.command_deadline = None;
        st.data_clock = None;
        st.tls = Some(tls_version);
        Session { io, st }
    }

    pub fn into_parts(self) -> (S, SessionState) {
        (self.io, self.st)
    }

    /// Send the greeting, then serve commands until the session ends.
    pub async fn greet_and_run(&mut self) -> Result<Outcome, SessionError> {
        let hostname = self.st.ctx.config().hostname.clone();
        Reply::greeting(&hostname).write_to(&mut self.st.out);
        self.run().await
    }

    pub async fn run(&mut self) -> Result<Outcome, SessionError> {
        loop {
            while self.st.pos < self.st.input.len() {
                match self.step().await? {
                    Flow::Continue => {}
                    Flow::Close => {
                        self.flush().await?;
                        self.shutdown_write().await;
                        return Ok(Outcome::Closed);
                    }
                    Flow::StartTls => {
                        self.flush().await?;
                        return Ok(Outcome::StartTls);
                    }
                }
            }
            self.st.input.clear();
            self.st.pos = 0;
            self.flush().await?;
            if !self.fill().await? {
                return Ok(Outcome::Closed);
            }
        }
    }

    /// Send the buffered replies. A client that does not take them within
    /// `limits.write_timeout` ends the session (`SessionError::WriteTimeout`).
    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.st.out.is_empty() {
            let timeout = self.st.ctx.limits.cfg.write_timeout;
            let (io, out) = (&mut self.io, &self.st.out);
            let write = async {
                io.write_all(out).await?;
                io.flush().await
            };
            match tokio::time::timeout(timeout, write).await {
                Ok(r) => r?,
                Err(_) => {
                    info!(
                        timeout_ms = timeout.as_millis() as u64,
                        "client reads no replies; dropping the connection"
                    );
                    return Err(SessionError::WriteTimeout(timeout));
                }
            }
            self.st.out.clear();
        }
        Ok(())
    }

    /// Close our side. Bounded by the write timeout too: a TLS close_notify is a write.
    async fn shutdown_write(&mut self) {
        let timeout = self.st.ctx.limits.cfg.write_timeout;
        let _ = tokio::time::timeout(timeout, self.io.shutdown()).await;
    }

    /// When the read now starting must have returned: the command line's deadline, or while
    /// reading data the sooner of `data_timeout` of silence and the point where the client
    /// falls below `min_data_rate_bytes_per_second` (after a grace of `data_timeout`).
    fn read_deadline(&mut self, in_data: bool) -> (Instant, Reply, &'static str) {
        let limits = &self.st.ctx.limits.cfg;
        let now = Instant::now();
        if !in_data {
            let deadline = *self
                .st
                .command_deadline
                .get_or_insert(now + limits.command_timeout);
            return (deadline, Reply::COMMAND_TIMEOUT, "command_timeout");
        }
        let clock = self.st.data_clock.get_or_insert(DataClock {
            started: now,
            bytes: 0,
        });
        let earned = Duration::from_secs_f64(
            clock.bytes as f64 / limits.min_data_rate_bytes_per_second.max(1) as f64,
        );
        let idle = now + limits.data_timeout;
        let rate = clock.started + limits.data_timeout + earned;
        if rate < idle {
            (rate, Reply::DATA_TOO_SLOW, "min_data_rate")
        } else {
            (idle, Reply::DATA_TIMEOUT, "data_timeout")
        }
    }

    /// Read more input. Returns false when the session must end (EOF, timeout, shutdown); any
    /// final reply has been sent.
    async fn fill(&mut self) -> Result<bool, SessionError> {
        let in_data = matches!(self.st.mode, Input::Data(_) | Input::Bdat { .. });
        let (deadline, timeout_reply, limit) = self.read_deadline(in_data);
        let mut shutdown = self.st.ctx.shutdown.clone();
        // An idle session (waiting for a command) is told to go at shutdown; one that is sending
        // a message is allowed to finish it (the server's shutdown deadline still applies).
        if !in_data && shutdown.is_triggered() {
            return self.close_with(Reply::SHUTTING_DOWN).await;
        }
        let start = self.st.input.len();
        self.st.input.resize(start + READ_CHUNK, 0);
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.io.read(&mut self.st.input[start..])) => r,
            _ = shutdown.wait(), if !in_data => {
                self.st.input.truncate(start);
                return self.close_with(Reply::SHUTTING_DOWN).await;
            }
        };
        match read {
            Err(_) => {
                self.st.input.truncate(start);
                info!(limit, "client too slow; closing");
                self.close_with(timeout_reply).await
            }
            Ok(Err(e)) => {
                self.st.input.truncate(start);
                debug!(error = %e, "read failed");
                Ok(false)
            }
            Ok(Ok(0)) => {
                self.st.input.truncate(start);
                if self.st.txn.is_some() {
                    debug!("client disconnected during a transaction");
                }
                Ok(false)
            }
            Ok(Ok(n)) => {
                self.st.input.truncate(start + n);
                self.st.ctx.metrics.received_bytes.add(n as u64);
                if let (true, Some(clock)) = (in_data, self.st.data_clock.as_mut()) {
                    clock.bytes += n as u64;
                }
                Ok(true)
            }
        }
    }

    async fn close_with(&mut self, reply: Reply) -> Result<bool, SessionError> {
        reply.write_to(&mut self.st.out);
        // The client may already be gone; a failed goodbye is not an error worth reporting.
        if self.flush().await.is_ok() {
            self.shutdown_write().await;
        }
        Ok(false)
    }

    /// Consume some of the buffered input.
    async fn step(&mut self) -> Result<Flow, SessionError> {
        match self.st.mode {
            Input::Command => self.step_command().await,
            Input::SkipLine => {
                let rest = &self.st.input[self.st.pos..];
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.st.pos += i + 1;
                        self.st.mode = Input::Command;
                        self.st.command_deadline = None;
                    }
                    None => self.st.pos = self.st.input.len(),
                }
                Ok(Flow::Continue)
            }
            Input::Data(_) => self.step_data().await,
            Input::Bdat { .. } => self.step_bdat().await,
        }
    }

    async fn step_command(&mut self) -> Result<Flow, SessionError> {
        let st = &mut self.st;
        let rest = &st.input[st.pos..];
        // The parser is given one line at a time. Given more, smtp-proto reads past the end of a
        // short line ("MAIL FROM<CRLF>") into the next one and swallows it, so the client waits
        // for a reply that never comes; and it parses a line of any length when the line arrived
        // in one read (its limit applies only to lines that span reads). Both made the answers
        // depend on how TCP segmented the input (found by the fuzzer's read-split check).
        let line_end = memchr::memchr(b'\n', rest).map(|i| i + 1);
        if line_end.is_some() {
            // This line is complete: the next one gets a deadline of its own.
            st.command_deadline = None;
        }
        if let Some(end) = line_end {
            if end > MAX_LINE_LENGTH && st.receiver.buf().is_empty() {
                st.pos += end;
                return Ok(self.reject(Reply::LINE_TOO_LONG));
            }
        }
        if let Some(end) = line_end {
            // RFC 6531 §3.3: SMTPUTF8 allows UTF-8, not any bytes. smtp-proto would read
            // invalid sequences as replacement characters and we would store those.
            let line = &rest[..end];
            let pending = st.receiver.buf();
            let valid = if pending.is_empty() {
                std::str::from_utf8(line).is_ok()
            } else {
                std::str::from_utf8(&[pending, line].concat()).is_ok()
            };
            if !valid {
                st.pos += end;
                st.receiver = RequestReceiver::default();
                return Ok(self.reject(Reply::INVALID_UTF8));
            }
        }
        let slice = &rest[..line_end.unwrap_or(rest.len())];
        let mut iter = slice.iter();
        let parsed = st.receiver.ingest(&mut iter).map(|r| r.into_owned());
        let consumed = slice.len() - iter.as_slice().len();
        // Whatever the parser made of a complete line, the next command starts after it.
        st.pos += if line_end.is_some() {
            slice.len()
        } else {
            consumed
        };
        let request = match parsed {
            Ok(r) => r,
            Err(ProtoError::NeedsMoreData { .. }) if line_end.is_some() => {
                // A whole line that the parser still finds incomplete is a syntax error, not a
                // reason to wait; none of it may stay buffered in front of the next line.
                st.receiver = RequestReceiver::default();
                return Ok(self.reject(Reply::BAD_PARAMETER));
            }
            Err(ProtoError::NeedsMoreData { .. }) => {
                // The partial line is kept by the receiver; everything here was consumed.
                st.pos = st.input.len();
                return Ok(Flow::Continue);
            }
            Err(ProtoError::ResponseTooLong) => {
                if line_end.is_none() {
                    st.mode = Input::SkipLine;
                }
                return Ok(self.reject(Reply::LINE_TOO_LONG));
            }
            // An error before the end of the line has arrived: its rest is not a new command.
            Err(e) if line_end.is_none() => {
                st.mode = Input::SkipLine;
                return Ok(self.reject(proto_error_reply(e)));
            }
            Err(e) => return Ok(self.reject(proto_error_reply(e))),
        };
        debug!(command = request.name(), "command");
        self.handle(request).await
    }

    /// The rejection line for a refusal outside the message span (RCPT, or before the body was
    /// handed over).
    fn log_reject(&self, reply: &Reply, stage: &'static str, mail_from: &str, to: &str) {
        RejectLine {
            peer: self.st.peer,
            helo: self.st.helo.clone().unwrap_or_default(),
            from: mail_from.to_string(),
            to: to.to_string(),
        }
        .log(reply, stage, "", false);
    }

    /// Send an error reply for a bad command; too many of them end the session.
    fn reject(&mut self, reply: Reply) -> Flow {
        reply.write_to(&mut self.st.out);
        self.st.bad_commands += 1;
        if self.st.bad_commands >= self.st.ctx.limits.cfg.max_bad_commands {
            warn!(
                errors = self.st.bad_commands,
                "too many bad commands; closing"
            );
            Reply::TOO_MANY_ERRORS.write_to(&mut self.st.out);
            return Flow::Close;
        }
        Flow::Continue
    }

    fn reply(&mut self, reply: Reply) -> Flow {
        if reply.code >= 500 {
            return self.reject(reply);
        }
        reply.write_to(&mut self.st.out);
        if reply.closes_connection() {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    async fn handle(&mut self, request: Request<String>) -> Result<Flow, SessionError> {
        let flow = match request {
            Request::Ehlo { host } => self.helo(host, true),
            Request::Helo { host } => self.helo(host, false),
            Request::Mail { from } => {
                let mail_from = from.address.clone();
                let r = self.mail(from);
                // A refusal of the message itself (size, rate, storage), not of the dialogue
                // (5.5.x sequence and syntax errors), gets its reject line like a RCPT refusal.
                if r.code >= 400 && !r.enhanced.starts_with("5.5.") {
                    self.log_reject(&r, "mail", &mail_from, "");
                }
                self.reply(r)
            }
            Request::Rcpt { to } => {
                self.follow_definitions_before_refusing(&to.address).await;
                let r = self.rcpt(to);
                self.reply(r)
            }
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                self.bdat(chunk_size, is_last);
                // Take what of the chunk is already buffered now: an empty chunk (`BDAT 0 LAST`)
                // has no bytes to wait for, and `run` only steps again when input is left.
                return self.step_bdat().await;
            }
            Request::Rset => {
                self.st.txn = None;
                self.reply(Reply::RESET_OK)
            }
            Request::Noop { .. } => self.reply(Reply::NOOP_OK),
            Request::Vrfy { .. } => self.reply(Reply::CANNOT_VRFY),
            Request::Help { .. } => self.reply(Reply::HELP),
            Request::Quit => {
                let hostname = self.st.ctx.config().hostname.clone();
                self.reply(Reply::goodbye(&hostname))
            }
            Request::StartTls => return Ok(self.starttls()),
            Request::Auth { .. } => self.reply(Reply::AUTH_NOT_OFFERED),
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.reply(Reply::NOT_IMPLEMENTED),
        };
        Ok(flow)
    }

    fn starttls(&mut self) -> Flow {
        if self.st.tls.is_some() {
            return self.reject(Reply::ALREADY_TLS);
        }
        if self.st.ctx.tls().is_none() {
            return self.reply(Reply::TLS_UNAVAILABLE);
        }
        Reply::READY_TO_START_TLS.write_to(&mut self.st.out);
        Flow::StartTls
    }
}

/// The reply for a command smtp-proto could not parse.
fn proto_error_reply(e: ProtoError) -> Reply {
    match e {
        ProtoError::UnknownCommand => Reply::SYNTAX_ERROR,
        ProtoError::InvalidSenderAddress => Reply::BAD_SENDER_SYNTAX,
        ProtoError::InvalidRecipientAddress => Reply::BAD_RECIPIENT_SYNTAX,
        ProtoError::SyntaxError { syntax } => Reply {
            code: 501,
            enhanced: "5.5.4",
            text: format!("Syntax: {syntax}").into(),
        },
        ProtoError::InvalidParameter { param } => Reply {
            code: 501,
            enhanced: "5.5.4",
            text: format!("Invalid parameter: {param}").into(),
        },
        ProtoError::UnsupportedParameter { .. } => Reply::UNSUPPORTED_PARAMETER,
        _ => Reply::SYNTAX_ERROR,
    }
}

/// Name of a rustls protocol version for `Received:` and the record.
pub fn tls_version_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "TLS".into(),
    }
}
