//! DATA and BDAT -> a finished message handed to the pipeline and the store, and the reply
//! for it. RFC 5321 §4.1.1.4 (DATA, dot-stuffing, `<CRLF>.<CRLF>` only), RFC 3030 (BDAT),
//! RFC 1870 (the size cap past which the rest is discarded and answered 552).

// The session's own types and imports: these are its methods and helpers, in files by job.
use super::log::{log_accept, rcpt_list};
use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) fn data(&mut self) -> Flow {
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

    pub(super) fn bdat(&mut self, size: usize, last: bool) {
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

    pub(super) async fn step_data(&mut self) -> Result<Flow, SessionError> {
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

    pub(super) async fn step_bdat(&mut self) -> Result<Flow, SessionError> {
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
    pub(super) fn fail_transaction(&mut self, reply: Reply) {
        if let Some(txn) = self.st.txn.as_mut() {
            if txn.error.is_none() {
                txn.error = Some(reply);
            }
            txn.body = None;
        }
    }

    pub(super) async fn maybe_spill(&mut self) {
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
    pub(super) async fn finish_message(&mut self) -> Flow {
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
    pub(super) fn reply_end_of_data(&mut self, reply: Reply) -> Flow {
        reply.write_to(&mut self.st.out);
        Flow::Continue
    }
}
