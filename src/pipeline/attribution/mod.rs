//! Parsed message + envelope -> Attribution: the author of the original message and how that was
//! decided. RFC 5322 §3.6.2 (From, Sender, Reply-To), RFC 2822 §3.6.6 Resent-*, RFC 2046 §5.2.1
//! (message/rfc822), SRS (libsrs2's SRS0/SRS1 addresses) and the forward layouts of common clients.
//!
//! Team inboxes reach us forwarded: a mailbox at Gmail or Microsoft 365 auto-forwards, a Google
//! Group relays (rewriting From to "Name via Group" when the author's domain has a strict DMARC
//! policy), or a person presses "Forward". The contact is the author of the original message,
//! never the mailbox in between. The decision, in order:
//!
//! 1. **Header author.** A "Name via Group" rewrite resolves through X-Original-From, Reply-To or
//!    X-Original-Sender; a relay's X-Original-From wins over From; otherwise From. Without a From:
//!    Sender, X-Original-From, X-Original-Sender, then the envelope (an SRS address decoded).
//! 2. **Manual forward.** The sender of the top-most forwarded block in the body (plain text
//!    first, then the HTML body as text), else the author of an attached original
//!    (message/rfc822, or an `.eml` sent as application/octet-stream). The header author becomes
//!    `forwarded_by`. Top-most, not innermost: the forwarded block's own history (older forwards
//!    and quotes inside it) belongs to the message the forwarder chose to forward, whose author
//!    is the contact. A top-most block whose author has a name but no address decides nothing:
//!    the next rule applies, never an address found further down. The method names the layout
//!    that matched (`manual_forward:yahoo`, see [`Layout`]).
//! 3. **Automatic forward.** The header author stays; Resent-*, Microsoft 365 headers, Gmail's
//!    `+caf_` envelope or X-Forwarded-For, an SRS envelope, or a differing Sender name the
//!    forwarder in `forwarded_by` and the method.
//!
//! Telling a forward from a reply is the hard part: Outlook prints the same header block
//! ("From: / Sent: / To: / Subject:") above a forwarded message and above a quoted reply. So a
//! block under an explicit forward banner ("---------- Forwarded message ---------", "Begin
//! forwarded message:", localised) counts as a forward, while a block under an ambiguous
//! separator ("-----Original Message-----", a rule line, Outlook's bordered `<div>`) or under no
//! separator counts only when the subject says forward ("Fwd:", "WG:", "TR:" …). A reply
//! attribution line ("On … wrote:", localised) met before any block means the message is a
//! reply, which keeps its header From; so does a reply to a forwarded thread.
//!
//! Localised labels, banners, verbs and subject prefixes come from `pipeline::languages`, one
//! table per language shared with the verification stage.
//!
//! Pure and bounded: no I/O, only the first [`SCAN_LIMIT_BYTES`] of a body are read, at most
//! [`MAX_DEPTH`] attachments are looked at, and no input panics (`tests/it/attribution_corpus.rs` mutates fixtures to
//! check it). Attribution is not authentication: every source here can be forged by the sender,
//! and the auth stage's verdict is what says whether to trust the header From.

//!
//! Files: `header.rs` (rule 1 and the evidence for rule 3), `srs.rs` (envelopes), `forwarded.rs`
//! (rule 2), with `lines.rs` (labels, separators, reply attributions), `subject.rs` (prefixes) and
//! `address.rs` (mailboxes in free text) beneath it; `reply.rs` reads the same layouts the other
//! way round: the new text above the quoted history (`stripped_text`).

mod address;
mod forwarded;
mod header;
mod lines;
mod reply;
mod srs;

pub use reply::new_text;

use std::fmt;

use mail_parser::Message;
use serde::{Deserialize, Serialize};

use address::{extract_mailbox, same_address};
use forwarded::manual_forward;
use header::{Evidence, Headers};
use srs::{caf_decode, srs_decode};

/// How much of a body's text (plain, or HTML before stripping) is scanned for a forwarded block.
/// Past it the rest of the body is ignored: forward headers sit near the top, and the cost of a
/// huge body stays that of 256 KiB.
pub const SCAN_LIMIT_BYTES: usize = 256 * 1024;

/// How many attachments are looked at for an attached original; past it the rest are ignored.
pub const MAX_DEPTH: usize = 8;

/// Who a message is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    /// The original sender's address: domain lower-cased, local part as written (RFC 5321 §2.4
    /// lets it be case-sensitive). Empty only with [`Method::Unknown`].
    pub email: String,
    /// The display name shown with that address, if any.
    pub name: Option<String>,
    /// The rule that decided, so an operator can see why.
    pub method: Method,
    /// The mailbox that forwarded or relayed the message to us, when there was one. With
    /// [`Method::SrsEnvelope`] only the forwarder's domain is known, and that is what it holds.
    pub forwarded_by: Option<String>,
}

/// The rule that decided an [`Attribution`]. Serialised as the stable names below (snake_case,
/// and `manual_forward:<layout>`); stored records and webhooks depend on them, so a rename is a
/// breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `header_from`: From, with no sign of forwarding.
    HeaderFrom,
    /// `on_behalf_of`: From; a different Sender (a list, a delegate) transmitted it.
    OnBehalfOf,
    /// `resent_from`: From; Resent-From / Resent-Sender name who forwarded it (RFC 5322 §3.6.6).
    ResentFrom,
    /// `gmail_autoforward`: From; Gmail's `+caf_` envelope or X-Forwarded-For names the mailbox.
    GmailAutoforward,
    /// `m365_autoforward`: From; Microsoft 365 forwarding headers (X-MS-Exchange-Inbox-Rules-Loop,
    /// -ForwardingLoop, -Organization-AutoForwarded) name the mailbox.
    M365Autoforward,
    /// `srs_envelope`: From (or, without one, the sender decoded from the SRS envelope); the
    /// envelope shows a forwarder rewrote it.
    SrsEnvelope,
    /// `x_original_from`: X-Original-From, which a relay set when it rewrote From.
    XOriginalFrom,
    /// `google_group_rewrite`: From was "Name via Group" (Google Groups, Mailman DMARC
    /// mitigation); the author comes from X-Original-From, Reply-To or X-Original-Sender.
    GoogleGroupRewrite,
    /// `manual_forward:<layout>`: the sender of the top-most forwarded block in the body, or the
    /// author of an attached original; the [`Layout`] says which.
    ManualForward(Layout),
    /// `header_sender`: no usable From; Sender.
    HeaderSender,
    /// `x_original_sender`: no usable From; X-Original-Sender.
    XOriginalSender,
    /// `envelope_mail_from`: no usable header; the SMTP MAIL FROM.
    EnvelopeMailFrom,
    /// `unknown`: nothing usable (a null reverse-path and no author header).
    Unknown,
}

impl Method {
    /// Every method, in the order of the enum.
    pub const ALL: [Method; 23] = [
        Method::HeaderFrom,
        Method::OnBehalfOf,
        Method::ResentFrom,
        Method::GmailAutoforward,
        Method::M365Autoforward,
        Method::SrsEnvelope,
        Method::XOriginalFrom,
        Method::GoogleGroupRewrite,
        Method::ManualForward(Layout::Gmail),
        Method::ManualForward(Layout::Outlook),
        Method::ManualForward(Layout::AppleMail),
        Method::ManualForward(Layout::Thunderbird),
        Method::ManualForward(Layout::Yahoo),
        Method::ManualForward(Layout::Hubspot),
        Method::ManualForward(Layout::Mailmate),
        Method::ManualForward(Layout::Ionos),
        Method::ManualForward(Layout::Mutt),
        Method::ManualForward(Layout::Quoted),
        Method::ManualForward(Layout::Attachment),
        Method::HeaderSender,
        Method::XOriginalSender,
        Method::EnvelopeMailFrom,
        Method::Unknown,
    ];

    /// The stable name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::HeaderFrom => "header_from",
            Method::OnBehalfOf => "on_behalf_of",
            Method::ResentFrom => "resent_from",
            Method::GmailAutoforward => "gmail_autoforward",
            Method::M365Autoforward => "m365_autoforward",
            Method::SrsEnvelope => "srs_envelope",
            Method::XOriginalFrom => "x_original_from",
            Method::GoogleGroupRewrite => "google_group_rewrite",
            Method::ManualForward(layout) => layout.method_name(),
            Method::HeaderSender => "header_sender",
            Method::XOriginalSender => "x_original_sender",
            Method::EnvelopeMailFrom => "envelope_mail_from",
            Method::Unknown => "unknown",
        }
    }

    /// The method with this stable name.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// Whether a stored method name says the sender came from a manual forward, including the
/// names records had before layouts were named (`forwarded_inline`, `forwarded_attachment`).
pub fn is_manual_forward(method_name: &str) -> bool {
    method_name.starts_with("manual_forward:")
        || method_name == "forwarded_inline"
        || method_name == "forwarded_attachment"
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let name = String::deserialize(d)?;
        Method::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown attribution method {name:?}")))
    }
}

/// The layout of a manual forward: which client's way of writing the forwarded block matched.
/// Clients that copy another's layout are reported under it (HubSpot and Missive write Gmail's
/// in English; new Outlook and Outlook.com write Outlook's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `---------- Forwarded message ---------` (ten dashes), localised: Gmail, and HubSpot and
    /// Missive, which write the same.
    Gmail,
    /// A `From:`/`Sent:` block under `-----Original Message-----`, a rule, Outlook's bordered
    /// `<div>`, or nothing (Outlook 2013-2019, new Outlook, Outlook.com, Outlook for Mac).
    Outlook,
    /// `Begin forwarded message:` (Apple Mail, iOS Mail), localised.
    AppleMail,
    /// `-------- Forwarded Message --------` (eight dashes) over a header table.
    Thunderbird,
    /// `----- Forwarded Message -----` (five dashes), the block in Yahoo's own field order, or
    /// all on one line in its plain-text part.
    Yahoo,
    /// HubSpot's own localised banners (`メッセージを転送`, `Wiadomość przesłana dalej`).
    Hubspot,
    /// MailMate's `Forwarded message:`.
    Mailmate,
    /// IONOS / 1&1: `---------- Original Message ----------` (ten dashes, spaced).
    Ionos,
    /// mutt's `----- Forwarded message from Name <addr> -----`.
    Mutt,
    /// A "Fwd:" whose original is quoted like a reply ("On … X wrote:"), as some mobile clients do.
    Quoted,
    /// The original attached (message/rfc822, or an `.eml` sent as application/octet-stream).
    Attachment,
}

impl Layout {
    /// The method name recorded for a forward in this layout.
    pub fn method_name(self) -> &'static str {
        match self {
            Layout::Gmail => "manual_forward:gmail",
            Layout::Outlook => "manual_forward:outlook",
            Layout::AppleMail => "manual_forward:apple_mail",
            Layout::Thunderbird => "manual_forward:thunderbird",
            Layout::Yahoo => "manual_forward:yahoo",
            Layout::Hubspot => "manual_forward:hubspot",
            Layout::Mailmate => "manual_forward:mailmate",
            Layout::Ionos => "manual_forward:ionos",
            Layout::Mutt => "manual_forward:mutt",
            Layout::Quoted => "manual_forward:quoted",
            Layout::Attachment => "manual_forward:attachment",
        }
    }

    /// The layout a language table names for a banner only one client writes.
    fn from_client(client: &str) -> Layout {
        match client {
            "hubspot" => Layout::Hubspot,
            "mailmate" => Layout::Mailmate,
            "yahoo" => Layout::Yahoo,
            "thunderbird" => Layout::Thunderbird,
            "apple_mail" => Layout::AppleMail,
            "ionos" => Layout::Ionos,
            "mutt" => Layout::Mutt,
            "outlook" => Layout::Outlook,
            _ => Layout::Gmail,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Attribute `message`, received with envelope `mail_from` (empty or `<>` for a null
/// reverse-path) for `rcpt` (the hosted address; a forwarded block naming it is not an author).
pub fn attribute(message: &Message<'_>, mail_from: &str, rcpt: &str) -> Attribution {
    let headers = Headers::read(message);
    let evidence = headers.forwarding_evidence(mail_from);
    let author = headers.author(evidence.is_some());

    if let Some(found) = manual_forward(message, rcpt) {
        let forwarded_by = author
            .as_ref()
            .map(|a| a.mailbox.email.clone())
            .filter(|e| !same_address(e, &found.mailbox.email));
        return found.mailbox.into_attribution(found.method, forwarded_by);
    }

    match author {
        Some(a) if a.method == Method::HeaderFrom => {
            let from = a.mailbox;
            if let Some(ev) = evidence {
                let forwarded_by = ev.forwarded_by.filter(|f| !same_address(f, &from.email));
                return from.into_attribution(ev.method, forwarded_by);
            }
            match &headers.sender {
                Some(sender) if !sender.same(&from) => {
                    let forwarded_by = Some(sender.email.clone());
                    from.into_attribution(Method::OnBehalfOf, forwarded_by)
                }
                _ => from.into_attribution(Method::HeaderFrom, None),
            }
        }
        Some(a) => a.mailbox.into_attribution(a.method, a.forwarded_by),
        None => envelope_author(mail_from, evidence),
    }
}

/// No author header at all: the envelope is all there is.
fn envelope_author(mail_from: &str, evidence: Option<Evidence>) -> Attribution {
    let forwarded_by = evidence.and_then(|e| e.forwarded_by);
    if let Some((original, forwarder)) = srs_decode(mail_from) {
        if let Some(m) = extract_mailbox(&original) {
            return m.into_attribution(Method::SrsEnvelope, Some(forwarder));
        }
    }
    // A `+caf_` envelope names the forwarding Gmail mailbox, never the author.
    if caf_decode(mail_from).is_none() {
        if let Some(m) = extract_mailbox(mail_from) {
            return m.into_attribution(Method::EnvelopeMailFrom, None);
        }
    }
    Attribution {
        email: String::new(),
        name: None,
        method: Method::Unknown,
        forwarded_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn run(raw: &str, mail_from: &str) -> Attribution {
        let raw = raw.replace('\n', "\r\n");
        let msg = MessageParser::new().parse(raw.as_bytes()).expect("parses");
        attribute(&msg, mail_from, "support@acme.inbound.example")
    }

    #[test]
    fn method_names_are_stable_and_match_serde() {
        for m in Method::ALL {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(Method::from_name(m.as_str()), Some(m));
            let back: Method = serde_json::from_str(&json).unwrap();
            assert_eq!(back, m);
        }
        assert_eq!(Method::M365Autoforward.as_str(), "m365_autoforward");
        assert_eq!(
            Method::ManualForward(Layout::Yahoo).as_str(),
            "manual_forward:yahoo"
        );
        assert!(is_manual_forward("manual_forward:yahoo") && is_manual_forward("forwarded_inline"));
        assert!(!is_manual_forward("header_from"));
    }

    #[test]
    fn gmail_forward_in_french() {
        let a = run(
            "From: Agent <agent@acme.example>\nSubject: Fwd: Facture\n\n\
             Voir ci-dessous.\n\n---------- Forwarded message ---------\n\
             De : Jean Dupont <jean.dupont@client.example>\nDate: lun. 8 janv. 2024 à 10:15\n\
             Subject: Facture\nTo: <agent@acme.example>\n\nBonjour\n",
            "agent@acme.example",
        );
        assert_eq!(a.email, "jean.dupont@client.example");
        assert_eq!(a.name.as_deref(), Some("Jean Dupont"));
        assert_eq!(a.method, Method::ManualForward(Layout::Gmail));
        assert_eq!(a.forwarded_by.as_deref(), Some("agent@acme.example"));
    }

    #[test]
    fn outlook_reply_is_not_a_forward() {
        let a = run(
            "From: Agent <agent@acme.example>\nSubject: RE: Question\n\nThanks!\n\n\
             From: Jane <jane@client.example>\nSent: Monday, January 8, 2024 10:15 AM\n\
             To: Agent <agent@acme.example>\nSubject: Question\n\nHello\n",
            "agent@acme.example",
        );
        assert_eq!(
            (a.email.as_str(), a.method),
            ("agent@acme.example", Method::HeaderFrom)
        );
    }

    #[test]
    fn reply_attribution_stops_the_search() {
        let a = run(
            "From: Agent <agent@acme.example>\nSubject: Re: Fwd: Question\n\nSure.\n\n\
             On Mon, Jan 8, 2024 at 10:15 AM Bob <bob@acme.example> wrote:\n\
             > ---------- Forwarded message ---------\n> From: Jane <jane@client.example>\n\
             > Date: Mon\n",
            "",
        );
        assert_eq!(a.method, Method::HeaderFrom);
        assert_eq!(a.email, "agent@acme.example");
    }

    #[test]
    fn group_rewrite_and_envelopes() {
        let a = run(
            "From: \"'Jane Doe' via Sales\" <sales@acme.example>\nX-Original-From: jane@client.example\n\
             List-ID: <sales.acme.example>\nSubject: hi\n\nhello\n",
            "",
        );
        assert_eq!(a.method, Method::GoogleGroupRewrite);
        assert_eq!(a.email, "jane@client.example");
        assert_eq!(a.name.as_deref(), Some("Jane Doe"));
        assert_eq!(a.forwarded_by.as_deref(), Some("sales@acme.example"));

        let a = run(
            "From: Jane <jane@client.example>\nSubject: hi\n\nhello\n",
            "team+caf_=support=acme.inbound.example@gmail.com",
        );
        assert_eq!(a.method, Method::GmailAutoforward);
        assert_eq!(a.forwarded_by.as_deref(), Some("team@gmail.com"));

        let a = run(
            "Subject: no from\n\nhello\n",
            "SRS0=abcd=TT=client.example=jane@fwd.example",
        );
        assert_eq!(
            (a.email.as_str(), a.method),
            ("jane@client.example", Method::SrsEnvelope)
        );
        let a = run("Subject: no from\n\nhello\n", "<>");
        assert_eq!((a.email.as_str(), a.method), ("", Method::Unknown));
        let a = run("Subject: no from\n\nhello\n", "<bounce@list.example>");
        assert_eq!(a.method, Method::EnvelopeMailFrom);
    }

    #[test]
    fn x_original_from_needs_a_relay() {
        let a = run(
            "From: Spoofer <s@spam.example>\nX-Original-From: ceo@bank.example\nSubject: hi\n\nx\n",
            "",
        );
        assert_eq!(
            (a.email.as_str(), a.method),
            ("s@spam.example", Method::HeaderFrom)
        );
    }
}
