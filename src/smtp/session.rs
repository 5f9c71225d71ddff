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
                let r = self.mail(from);
                self.reply(r)
            }
            Request::Rcpt { to } => {
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

    fn helo(&mut self, host: String, esmtp: bool) -> Flow {
        if host.trim().is_empty() {
            return self.reject(Reply::HELO_REQUIRES_DOMAIN);
        }
        // RFC 5321 §4.1.4: EHLO/HELO resets any transaction in progress.
        self.st.txn = None;
        self.st.helo = Some(host);
        self.st.esmtp = esmtp;
        let cfg = self.st.ctx.config();
        let greeting = Reply::helo(
            &cfg.hostname,
            &pipeline::address_literal(crate::config::canonical_ip(self.st.peer.ip())),
        );
        if !esmtp {
            greeting.write_to(&mut self.st.out);
            return Flow::Continue;
        }
        let mut lines = vec![
            greeting.text.into_owned(),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.st.ctx.limits.cfg.max_message_bytes),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.st.ctx.tls().is_some() && self.st.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        lines.push("HELP".into());
        write_multiline(250, &lines, &mut self.st.out);
        Flow::Continue
    }

    fn mail(&mut self, from: MailFrom<String>) -> Reply {
        if self.st.helo.is_none() {
            return Reply::BAD_SEQUENCE_HELO;
        }
        if self.st.txn.is_some() {
            return Reply::NESTED_MAIL;
        }
        let limits = &self.st.ctx.limits;
        if self.st.transactions >= limits.cfg.max_transactions_per_connection {
            return Reply::TOO_MANY_TRANSACTIONS;
        }
        // RFC 1870 §6.2: a declared size over our maximum is refused before any data is sent.
        if from.size as u64 > limits.cfg.max_message_bytes {
            self.st.ctx.metrics.messages_rejected.inc(Rejection::Size);
            return Reply::MESSAGE_TOO_BIG;
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return Reply::SMTPUTF8_REQUIRED;
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            // Not advertised: BINARYMIME would oblige us to keep unencoded binary bodies intact
            // for every later hop.
            return Reply::UNSUPPORTED_PARAMETER;
        }
        // Refuse before the client sends a body we may not be able to keep (RFC 5321 §4.5.3.1.10's
        // 452 "insufficient system storage"), rather than failing it at the end of its data.
        let min_free = self.st.ctx.config().store.min_free_bytes;
        if !self.st.ctx.store.has_room(min_free) {
            self.st
                .ctx
                .metrics
                .messages_rejected
                .inc(Rejection::LowDiskSpace);
            return Reply::INSUFFICIENT_STORAGE;
        }
        if !limits.message_allowed(self.st.peer.ip()) {
            self.st
                .ctx
                .metrics
                .messages_rejected
                .inc(Rejection::RateLimited);
            info!(client = %self.st.peer.ip(), "message rate limit");
            return Reply::MESSAGE_RATE;
        }
        let body_type = if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            "8BITMIME"
        } else {
            "7BIT"
        };
        self.st.transactions += 1;
        let helo = self.st.helo.clone().unwrap_or_default();
        let client = crate::config::canonical_ip(self.st.peer.ip());
        let spf = pipeline::start_spf(&self.st.ctx, client, &helo, &from.address);
        self.st.txn = Some(Transaction {
            mail_from: from.address,
            body_type,
            smtputf8,
            rcpt: Vec::new(),
            body: None,
            error: None,
            bdat_bytes: 0,
            header: HeaderMeter::default(),
            used_bdat: false,
            spf,
        });
        Reply::SENDER_OK
    }

    fn rcpt(&mut self, to: RcptTo<String>) -> Reply {
        let max = self.st.ctx.limits.cfg.max_recipients;
        let ctx = self.st.ctx.clone();
        let config = ctx.config();
        let Some(txn) = self.st.txn.as_mut() else {
            return Reply::BAD_SEQUENCE_MAIL;
        };
        if !txn.smtputf8 && !to.address.is_ascii() {
            return Reply::SMTPUTF8_REQUIRED;
        }
        match config.inboxes.resolve(&to.address) {
            Recipient::Hosted { inbox, tag } => {
                if txn
                    .rcpt
                    .iter()
                    .any(|r| r.address.eq_ignore_ascii_case(&to.address))
                {
                    return Reply::RECIPIENT_OK;
                }
                if txn.rcpt.len() >= max {
                    ctx.metrics
                        .messages_rejected
                        .inc(Rejection::TooManyRecipients);
                    return Reply::TOO_MANY_RECIPIENTS;
                }
                txn.rcpt.push(RcptRecord {
                    address: to.address,
                    inbox: inbox.id.clone(),
                    tag,
                });
                Reply::RECIPIENT_OK
            }
            Recipient::UnknownMailbox => {
                ctx.metrics
                    .messages_rejected
                    .inc(Rejection::UnknownRecipient);
                let reply = Reply::MAILBOX_UNKNOWN;
                let mail_from = txn.mail_from.clone();
                self.log_reject(&reply, "rcpt", &mail_from, &format!("<{}>", to.address));
                reply
            }
            Recipient::ForeignDomain => {
                ctx.metrics.messages_rejected.inc(Rejection::RelayDenied);
                let reply = Reply::RELAY_DENIED;
                let mail_from = txn.mail_from.clone();
                self.log_reject(&reply, "rcpt", &mail_from, &format!("<{}>", to.address));
                reply
            }
        }
    }

    fn data(&mut self) -> Flow {
        let max = self.st.ctx.limits.cfg.max_message_bytes;
        let spool = self.st.ctx.store.spool().clone();
        let inline_max = self.st.ctx.store.inline_max();
        let Some(txn) = self.st.txn.as_mut() else {
            return self.reject(Reply::BAD_SEQUENCE_MAIL);
        };
        if txn.used_bdat {
            return self.reject(Reply::BDAT_AFTER_DATA_MIX);
        }
        if txn.rcpt.is_empty() {
            return self.reject(Reply::BAD_SEQUENCE_RCPT);
        }
        txn.body = Some(BodyBuffer::new(spool, new_queue_id(), inline_max));
        self.st.mode = Input::Data(DataDecoder::new(max));
        self.st.data_clock = None;
        Reply::START_DATA.write_to(&mut self.st.out);
        Flow::Continue
    }

    fn bdat(&mut self, size: usize, last: bool) {
        let spool = self.st.ctx.store.spool().clone();
        let inline_max = self.st.ctx.store.inline_max();
        // The chunk's bytes follow the command whatever we answer: always read them.
        self.st.mode = Input::Bdat { left: size, last };
        self.st.data_clock = None;
        match self.st.txn.as_mut() {
            // Answered 503 once the chunk has been read (`step_bdat`).
            None => {}
            Some(txn) if txn.rcpt.is_empty() => {}
            Some(txn) => {
                txn.used_bdat = true;
                if txn.body.is_none() && txn.error.is_none() {
                    txn.body = Some(BodyBuffer::new(spool, new_queue_id(), inline_max));
                }
            }
        }
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

    async fn step_data(&mut self) -> Result<Flow, SessionError> {
        let max_header = self.st.ctx.limits.cfg.max_header_bytes;
        let st = &mut self.st;
        let Input::Data(decoder) = &mut st.mode else {
            return Ok(Flow::Continue);
        };
        let input = &st.input[st.pos..];
        let mut header_over = false;
        let ended = match st.txn.as_mut() {
            Some(Transaction {
                body: Some(body),
                header,
                ..
            }) => {
                let buf = body.buf();
                let before = buf.len();
                let ended = decoder.feed(input, buf);
                header.feed(&buf[before..]);
                header_over = header.header_bytes() > max_header;
                ended
            }
            _ => decoder.feed(input, &mut st.discard),
        };
        let overflowed = decoder.overflowed();
        st.pos += ended.unwrap_or(input.len());
        st.discard.clear();
        if overflowed {
            self.fail_transaction(Reply::MESSAGE_TOO_BIG);
        }
        if header_over {
            self.fail_transaction(Reply::HEADER_TOO_BIG);
        }
        if ended.is_some() {
            self.st.mode = Input::Command;
            return Ok(self.finish_message().await);
        }
        self.maybe_spill().await;
        Ok(Flow::Continue)
    }

    async fn step_bdat(&mut self) -> Result<Flow, SessionError> {
        let max = self.st.ctx.limits.cfg.max_message_bytes;
        let max_header = self.st.ctx.limits.cfg.max_header_bytes;
        let st = &mut self.st;
        let Input::Bdat { left, last } = &mut st.mode else {
            return Ok(Flow::Continue);
        };
        let (last, take) = (*last, (*left).min(st.input.len() - st.pos));
        *left -= take;
        let done = *left == 0;
        let chunk = &st.input[st.pos..st.pos + take];
        st.pos += take;
        let mut overflow = false;
        let mut header_over = false;
        if let Some(txn) = st.txn.as_mut() {
            txn.bdat_bytes += take as u64;
            overflow = txn.bdat_bytes > max;
            if let (Some(body), false) = (txn.body.as_mut(), overflow) {
                txn.header.feed(chunk);
                header_over = txn.header.header_bytes() > max_header;
                if !header_over {
                    body.buf().extend_from_slice(chunk);
                }
            }
        }
        if overflow {
            self.fail_transaction(Reply::MESSAGE_TOO_BIG);
        }
        if header_over {
            self.fail_transaction(Reply::HEADER_TOO_BIG);
        }
        self.maybe_spill().await;
        if !done {
            return Ok(Flow::Continue);
        }
        self.st.mode = Input::Command;
        let Some(txn) = self.st.txn.as_mut() else {
            return Ok(self.reject(Reply::BAD_SEQUENCE_MAIL));
        };
        if txn.rcpt.is_empty() {
            return Ok(self.reject(Reply::BAD_SEQUENCE_RCPT));
        }
        if last {
            return Ok(self.finish_message().await);
        }
        match &txn.error {
            // RFC 3030 §4.2: the client must not send more chunks after an error; those it had
            // pipelined are read and answered with the same error until LAST ends the transaction.
            // Like the reply at the end of the message, these are our refusal, not client errors:
            // counting them would let one oversized pipelined message trip `max_bad_commands`.
            Some(e) => {
                let e = e.clone();
                Ok(self.reply_end_of_data(e))
            }
            None => {
                let n = txn.bdat_bytes;
                Ok(self.reply(Reply::bdat_chunk(n)))
            }
        }
    }

    /// Drop the body and remember the reply the transaction will end with. The rest of the data
    /// is still read (and discarded) so the connection stays usable.
    fn fail_transaction(&mut self, reply: Reply) {
        if let Some(txn) = self.st.txn.as_mut() {
            if txn.error.is_none() {
                txn.error = Some(reply);
            }
            txn.body = None;
        }
    }

    async fn maybe_spill(&mut self) {
        let Some(body) = self.st.txn.as_mut().and_then(|t| t.body.as_mut()) else {
            return;
        };
        if body.wants_spill() {
            if let Err(e) = body.spill().await {
                warn!(error = %e, "cannot write spool file");
                self.fail_transaction(Reply::LOCAL_ERROR);
            }
        }
    }

    /// End of data: run the pipeline, commit, reply. The transaction is over either way.
    async fn finish_message(&mut self) -> Flow {
        let Some(mut txn) = self.st.txn.take() else {
            return self.reject(Reply::BAD_SEQUENCE_MAIL);
        };
        let ended = std::time::Instant::now();
        let metrics = &self.st.ctx.metrics;
        if let Some(reply) = txn.error.take() {
            self.log_reject(&reply, "data", &txn.mail_from, &rcpt_list(&txn.rcpt));
            metrics.count_inboxes(txn.rcpt.iter().map(|r| r.inbox.as_str()), false);
            let reason = if reply == Reply::MESSAGE_TOO_BIG || reply == Reply::HEADER_TOO_BIG {
                Rejection::Size
            } else {
                Rejection::LocalError
            };
            metrics.messages_rejected.inc(reason);
            metrics.end_of_data_duration.observe(ended.elapsed());
            return self.reply_end_of_data(reply);
        }
        let Some(body) = txn.body.take() else {
            self.log_reject(
                &Reply::LOCAL_ERROR,
                "data",
                &txn.mail_from,
                &rcpt_list(&txn.rcpt),
            );
            metrics.messages_rejected.inc(Rejection::LocalError);
            metrics.end_of_data_duration.observe(ended.elapsed());
            return self.reply_end_of_data(Reply::LOCAL_ERROR);
        };
        let queue_id = body.queue_id().to_string();
        let ctx = self.st.ctx.clone();
        let envelope = Envelope {
            client_ip: crate::config::canonical_ip(self.st.peer.ip()),
            client_port: self.st.peer.port(),
            helo: self.st.helo.clone().unwrap_or_default(),
            esmtp: self.st.esmtp,
            tls: self.st.tls.clone(),
            mail_from: txn.mail_from,
            rcpt: txn.rcpt,
            body_type: txn.body_type,
            smtputf8: txn.smtputf8,
        };
        // message_id is recorded by the pipeline once it has read the header section.
        let span = tracing::info_span!(
            "message",
            queue_id = %queue_id,
            size = tracing::field::Empty,
            message_id = tracing::field::Empty
        );
        let reject_line = RejectLine {
            peer: self.st.peer,
            helo: self.st.helo.clone().unwrap_or_default(),
            from: envelope.mail_from.clone(),
            to: rcpt_list(&envelope.rcpt),
        };
        let spf = txn.spf.take();
        let reply = async move {
            let finished = match body.finish().await {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "cannot finish spool file");
                    return Reply::LOCAL_ERROR;
                }
            };
            tracing::Span::current().record("size", finished.len);
            let size = finished.len;
            let m = &ctx.metrics;
            match pipeline::process(&ctx, &envelope, finished, spf).await {
                Ok(record) => {
                    log_accept(&record);
                    m.count_inboxes(record.routing.iter().map(|r| r.inbox.as_str()), true);
                    m.messages_accepted.inc();
                    m.accepted_message_bytes.add(size);
                    Reply::queued(&record.queue_id)
                }
                Err(refusal) => {
                    let (reply, label, detail) = match refusal {
                        Refusal::Policy(reason) => {
                            (Reply::policy_rejected(&reason), Rejection::Policy, reason)
                        }
                        // A DNS failure defers mail: an operator must see it without debug logs.
                        Refusal::TempFail(reason) => {
                            (Reply::AUTH_TEMPFAIL, Rejection::TempFail, reason)
                        }
                        Refusal::Local => {
                            (Reply::LOCAL_ERROR, Rejection::LocalError, String::new())
                        }
                    };
                    reject_line.log(&reply, "data", &detail, label != Rejection::Policy);
                    m.count_inboxes(envelope.rcpt.iter().map(|r| r.inbox.as_str()), false);
                    m.messages_rejected.inc(label);
                    reply
                }
            }
        }
        .instrument(span)
        .await;
        self.st
            .ctx
            .metrics
            .end_of_data_duration
            .observe(ended.elapsed());
        self.reply_end_of_data(reply)
    }

    /// Replies at end of data do not count as client errors: a 552 for size is our limit, not a
    /// protocol mistake.
    fn reply_end_of_data(&mut self, reply: Reply) -> Flow {
        reply.write_to(&mut self.st.out);
        Flow::Continue
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

/// `<a@x>,<b@y>`: every recipient of a transaction, as the log lines name them.
fn rcpt_list(rcpt: &[crate::store::RcptRecord]) -> String {
    rcpt.iter()
        .map(|r| format!("<{}>", r.address))
        .collect::<Vec<_>>()
        .join(",")
}

/// The one line per accepted message, Postfix-style and grep-able (`grep 'accepted' | grep
/// 'to=<support@'`): queue id, client, HELO, envelope sender, every recipient, Message-ID,
/// size, the sender-authentication verdict, and the inbox and conversation of each recipient.
fn log_accept(r: &crate::store::MessageRecord) {
    let inbox = r
        .routing
        .iter()
        .map(|x| x.inbox.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let conversation = r
        .routing
        .iter()
        .map(|x| x.conversation.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let auth = r
        .auth
        .as_ref()
        .map(|a| a.verdict.as_str())
        .unwrap_or("none");
    info!(
        queue_id = %r.queue_id,
        client = %format_args!("[{}]:{}", r.client_ip, r.client_port),
        helo = %r.helo,
        from = %format_args!("<{}>", r.mail_from),
        to = %rcpt_list(&r.rcpt),
        message_id = %r.message_id,
        size = r.size,
        auth = %auth,
        quarantined = r.quarantined,
        inbox = %inbox,
        conversation = %conversation,
        code = 250,
        "accepted"
    );
}

/// The fields of the one line per rejection (the accepted line's, with the reply instead of the
/// inbox): logged at INFO, since refusing mail is the server doing its job; the bad states
/// behind a refusal (DNS down, store failing) have WARN lines of their own.
struct RejectLine {
    peer: SocketAddr,
    helo: String,
    from: String,
    to: String,
}

impl RejectLine {
    /// `stage`: "rcpt" or "data". Inside the message span, that span adds queue id, size and
    /// Message-ID to the line. `our_fault`: the refusal is a deferral caused by a bad state
    /// here (DNS failing, the store refusing writes), logged at WARN so it is seen without
    /// reading every INFO line; a policy verdict is INFO.
    fn log(&self, reply: &Reply, stage: &'static str, detail: &str, our_fault: bool) {
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    stage,
                    client = %format_args!("[{}]:{}", self.peer.ip(), self.peer.port()),
                    helo = %self.helo,
                    from = %format_args!("<{}>", self.from),
                    to = %self.to,
                    code = reply.code,
                    status = reply.enhanced,
                    reply = %reply.text,
                    detail,
                    "reject"
                )
            };
        }
        if our_fault {
            line!(warn)
        } else {
            line!(info)
        }
    }
}
