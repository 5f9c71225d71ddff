//! EHLO/HELO, MAIL and RCPT -> the transaction's envelope, or the reply that refuses it.
//! RFC 5321 §4.1.1.1–4.1.1.3, RFC 1870 (SIZE at MAIL), RFC 6531 (SMTPUTF8), RFC 3463 codes.

// The session's own types and imports: these are its methods and helpers, in files by job.
use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) fn helo(&mut self, host: String, esmtp: bool) -> Flow {
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

    pub(super) fn mail(&mut self, from: MailFrom<String>) -> Reply {
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

    /// On a store shared with other nodes, an address unknown here may be an inbox another
    /// node created a moment ago: take in the definitions changed since (one read of a count
    /// when nothing did) before `rcpt` refuses it, since a `550` bounces the mail for good.
    pub(super) async fn follow_definitions_before_refusing(&self, address: &str) {
        let ctx = &self.st.ctx;
        if !ctx.store.is_shared()
            || !matches!(
                ctx.config().inboxes.resolve(address),
                Recipient::UnknownMailbox
            )
        {
            return;
        }
        let ctx = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || ctx.follow_definitions()).await;
    }

    pub(super) fn rcpt(&mut self, to: RcptTo<String>) -> Reply {
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
                    let (reply, mail_from) = (Reply::TOO_MANY_RECIPIENTS, txn.mail_from.clone());
                    self.log_reject(&reply, "rcpt", &mail_from, &format!("<{}>", to.address));
                    return reply;
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
}
