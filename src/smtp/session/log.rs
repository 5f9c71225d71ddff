//! Accepted and refused messages -> one grep-able log line each, Postfix-style: queue id,
//! client, HELO, envelope, Message-ID, size, verdict, inbox and conversation, or the reply code.

// The session's imports: these are its log lines, in a file of their own.
use super::*;

/// `<a@x>,<b@y>`: every recipient of a transaction, as the log lines name them.
pub(super) fn rcpt_list(rcpt: &[crate::store::RcptRecord]) -> String {
    rcpt.iter()
        .map(|r| format!("<{}>", r.address))
        .collect::<Vec<_>>()
        .join(",")
}

/// The one line per accepted message, Postfix-style and grep-able (`grep 'accepted' | grep
/// 'to=<support@'`): queue id, client, HELO, envelope sender, every recipient, Message-ID,
/// size, the sender-authentication verdict, and the inbox and conversation of each recipient.
pub(super) fn log_accept(r: &crate::store::MessageRecord) {
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
pub(super) struct RejectLine {
    pub(super) peer: SocketAddr,
    pub(super) helo: String,
    pub(super) from: String,
    pub(super) to: String,
}

impl RejectLine {
    /// `stage`: "rcpt" or "data". Inside the message span, that span adds queue id, size and
    /// Message-ID to the line. `our_fault`: the refusal is a deferral caused by a bad state
    /// here (DNS failing, the store refusing writes), logged at WARN so it is seen without
    /// reading every INFO line; a policy verdict is INFO.
    pub(super) fn log(&self, reply: &Reply, stage: &'static str, detail: &str, our_fault: bool) {
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
