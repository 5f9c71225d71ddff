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
//! 2. **Manual forward.** The sender of the innermost forwarded block in the body (plain text
//!    first, then the HTML body with its tags stripped), else the author of a forwarded
//!    message/rfc822 attachment. The header author becomes `forwarded_by`.
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
//! Pure and bounded: no I/O, only the first [`SCAN_LIMIT_BYTES`] of a body are read, nesting
//! stops at [`MAX_DEPTH`], and no input panics (`tests/it/attribution_corpus.rs` mutates fixtures to
//! check it). Attribution is not authentication: every source here can be forged by the sender,
//! and the auth stage's verdict is what says whether to trust the header From.

use std::borrow::Cow;
use std::fmt;

use mail_parser::{Addr, HeaderValue, Message, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

/// How much of a body's text (plain, or HTML before stripping) is scanned for a forwarded block.
/// Past it the rest of the body is ignored: forward headers sit near the top, and the cost of a
/// huge body stays that of 256 KiB.
pub const SCAN_LIMIT_BYTES: usize = 256 * 1024;

/// How many forwards deep (inline blocks and attached messages together) the search follows.
/// Past it the innermost sender found so far is kept.
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

/// The rule that decided an [`Attribution`]. Serialised as the stable snake_case names below;
/// stored records and webhooks depend on them, so a rename is a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// `forwarded_inline`: the sender of the innermost forwarded block in the body.
    ForwardedInline,
    /// `forwarded_attachment`: the author of a forwarded message/rfc822 attachment.
    ForwardedAttachment,
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
    pub const ALL: [Method; 14] = [
        Method::HeaderFrom,
        Method::OnBehalfOf,
        Method::ResentFrom,
        Method::GmailAutoforward,
        Method::M365Autoforward,
        Method::SrsEnvelope,
        Method::XOriginalFrom,
        Method::GoogleGroupRewrite,
        Method::ForwardedInline,
        Method::ForwardedAttachment,
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
            Method::ForwardedInline => "forwarded_inline",
            Method::ForwardedAttachment => "forwarded_attachment",
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

    if let Some(found) = manual_forward(message, rcpt, 0) {
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

// ---------------------------------------------------------------------------------------------
// Header author and evidence of automatic forwarding
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mailbox {
    email: String,
    name: Option<String>,
}

impl Mailbox {
    fn same(&self, other: &Mailbox) -> bool {
        same_address(&self.email, &other.email)
    }

    fn into_attribution(self, method: Method, forwarded_by: Option<String>) -> Attribution {
        Attribution {
            email: self.email,
            name: self.name,
            method,
            forwarded_by,
        }
    }
}

/// Address comparison for identity: case-insensitive, as every provider we meet treats it.
fn same_address(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

struct Author {
    mailbox: Mailbox,
    method: Method,
    forwarded_by: Option<String>,
}

struct Evidence {
    method: Method,
    forwarded_by: Option<String>,
}

/// The header fields attribution reads, each from its topmost occurrence (the newest, for
/// trace-like fields such as Resent-*).
#[derive(Default)]
struct Headers {
    from: Option<Mailbox>,
    from_display: Option<String>,
    sender: Option<Mailbox>,
    reply_to: Option<Mailbox>,
    x_original_from: Option<Mailbox>,
    x_original_sender: Option<Mailbox>,
    resent_from: Option<Mailbox>,
    resent_sender: Option<Mailbox>,
    x_forwarded_for: Option<Mailbox>,
    ms_rules_loop: Option<Mailbox>,
    ms_forwarding_loop: Option<Mailbox>,
    ms_original_sender: Option<Mailbox>,
    ms_autoforwarded: bool,
    list: bool,
}

impl Headers {
    fn read(message: &Message<'_>) -> Headers {
        let mut h = Headers::default();
        for header in message.headers() {
            let name = header.name.as_str();
            let value = &header.value;
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("From") {
                if h.from.is_none() {
                    h.from = mailbox_of(value);
                    h.from_display = display_name_of(value);
                }
            } else if is("Sender") {
                set_once(&mut h.sender, value);
            } else if is("Reply-To") {
                set_once(&mut h.reply_to, value);
            } else if is("X-Original-From") {
                set_once(&mut h.x_original_from, value);
            } else if is("X-Original-Sender") {
                set_once(&mut h.x_original_sender, value);
            } else if is("Resent-From") {
                set_once(&mut h.resent_from, value);
            } else if is("Resent-Sender") {
                set_once(&mut h.resent_sender, value);
            } else if is("X-Forwarded-For") {
                set_once(&mut h.x_forwarded_for, value);
            } else if is("X-MS-Exchange-Inbox-Rules-Loop") {
                set_once(&mut h.ms_rules_loop, value);
            } else if is("X-MS-Exchange-ForwardingLoop") {
                set_once(&mut h.ms_forwarding_loop, value);
            } else if is("X-MS-Exchange-Organization-OriginalSender")
                || is("X-MS-Exchange-Organization-Original-Sender")
            {
                set_once(&mut h.ms_original_sender, value);
            } else if is("X-MS-Exchange-Organization-AutoForwarded") || is("X-AutoForwarded") {
                h.ms_autoforwarded |= text_of(value).is_some_and(|t| {
                    let t = t.trim();
                    t.eq_ignore_ascii_case("true") || t == "1"
                });
            } else if is("List-Id")
                || is("List-Post")
                || is("Mailing-List")
                || is("X-Google-Group-Id")
                || is("X-Mailman-Version")
            {
                h.list = true;
            } else if is("Precedence") {
                h.list |= text_of(value).is_some_and(|t| t.trim().eq_ignore_ascii_case("list"));
            }
        }
        h
    }

    /// Signs that a mailbox forwarded the message automatically, most specific first.
    fn forwarding_evidence(&self, mail_from: &str) -> Option<Evidence> {
        let from = self.from.as_ref();
        let differs = |m: &&Mailbox| from.is_none_or(|f| !f.same(m));
        if let Some(r) = self
            .resent_from
            .iter()
            .chain(&self.resent_sender)
            .find(differs)
        {
            return Some(Evidence {
                method: Method::ResentFrom,
                forwarded_by: Some(r.email.clone()),
            });
        }
        let ms = self
            .ms_rules_loop
            .as_ref()
            .or(self.ms_forwarding_loop.as_ref());
        if ms.is_some() || self.ms_autoforwarded || self.ms_original_sender.is_some() {
            return Some(Evidence {
                method: Method::M365Autoforward,
                forwarded_by: ms.map(|m| m.email.clone()),
            });
        }
        let caf = caf_decode(mail_from).map(|(mailbox, _)| mailbox);
        if caf.is_some() || self.x_forwarded_for.is_some() {
            let forwarded_by =
                caf.or_else(|| self.x_forwarded_for.as_ref().map(|m| m.email.clone()));
            return Some(Evidence {
                method: Method::GmailAutoforward,
                forwarded_by,
            });
        }
        if let Some((_, forwarder)) = srs_decode(mail_from) {
            return Some(Evidence {
                method: Method::SrsEnvelope,
                forwarded_by: Some(forwarder),
            });
        }
        None
    }

    /// The author according to the header section. `forwarded` says whether the message shows
    /// signs of automatic forwarding: X-Original-From is only believed over From on relayed mail.
    fn author(&self, forwarded: bool) -> Option<Author> {
        let Some(from) = &self.from else {
            let fallbacks = [
                (&self.sender, Method::HeaderSender),
                (&self.x_original_from, Method::XOriginalFrom),
                (&self.x_original_sender, Method::XOriginalSender),
                (&self.ms_original_sender, Method::M365Autoforward),
            ];
            return fallbacks.into_iter().find_map(|(m, method)| {
                m.as_ref().map(|m| Author {
                    mailbox: m.clone(),
                    method,
                    forwarded_by: None,
                })
            });
        };
        let relayed = forwarded || self.list;
        if let Some(via) = self.from_display.as_deref().and_then(via_name) {
            let real = [
                &self.x_original_from,
                &self.reply_to,
                &self.x_original_sender,
            ]
            .into_iter()
            .flatten()
            .find(|m| !m.same(from));
            if let Some(real) = real {
                if relayed {
                    return Some(Author {
                        mailbox: Mailbox {
                            email: real.email.clone(),
                            name: real.name.clone().or(Some(via)),
                        },
                        method: Method::GoogleGroupRewrite,
                        forwarded_by: Some(from.email.clone()),
                    });
                }
            }
        }
        if let Some(original) = &self.x_original_from {
            if relayed && !original.same(from) {
                return Some(Author {
                    mailbox: original.clone(),
                    method: Method::XOriginalFrom,
                    forwarded_by: Some(from.email.clone()),
                });
            }
        }
        Some(Author {
            mailbox: from.clone(),
            method: Method::HeaderFrom,
            forwarded_by: None,
        })
    }
}

fn set_once(slot: &mut Option<Mailbox>, value: &HeaderValue<'_>) {
    if slot.is_none() {
        *slot = mailbox_of(value);
    }
}

fn text_of<'a>(value: &'a HeaderValue<'_>) -> Option<&'a str> {
    match value {
        HeaderValue::Text(t) => Some(t.as_ref()),
        HeaderValue::TextList(l) => l.first().map(|t| t.as_ref()),
        _ => None,
    }
}

/// The first mailbox of a header value, whether mail-parser parsed it as addresses (From,
/// Sender, Resent-*) or left it as text (X-Original-From and other extension fields).
fn mailbox_of(value: &HeaderValue<'_>) -> Option<Mailbox> {
    match value {
        HeaderValue::Address(a) => a.iter().find_map(mailbox_of_addr),
        HeaderValue::Text(t) => extract_mailbox(t),
        HeaderValue::TextList(l) => l.iter().find_map(|t| extract_mailbox(t)),
        _ => None,
    }
}

fn mailbox_of_addr(addr: &Addr<'_>) -> Option<Mailbox> {
    let raw = addr.address.as_deref()?;
    let email = normalize_address(raw)?;
    let name = addr.name.as_deref().and_then(clean_name);
    Some(Mailbox { email, name })
}

fn display_name_of(value: &HeaderValue<'_>) -> Option<String> {
    match value {
        HeaderValue::Address(a) => a
            .first()
            .and_then(|a| a.name.as_deref())
            .map(str::to_string),
        _ => None,
    }
}

/// "'Jane Doe' via Support" -> "Jane Doe": the display name Google Groups and Mailman give a
/// message whose From they rewrote.
fn via_name(display: &str) -> Option<String> {
    let lower = display.to_lowercase();
    let at = lower.rfind(" via ")?;
    // `to_lowercase` can change byte lengths outside ASCII; cut the original only when the
    // prefix kept its length.
    let original = display.get(..at).filter(|p| p.to_lowercase().len() == at)?;
    clean_name(original)
}

/// An address as written, checked to look like one: `mailto:` and angle brackets removed,
/// domain lower-cased.
fn normalize_address(raw: &str) -> Option<String> {
    let s = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let s = strip_prefix_ignore_case(s, "mailto:").unwrap_or(s);
    let at = s.rfind('@')?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.is_empty() || domain.is_empty() || s.contains(char::is_whitespace) {
        return None;
    }
    Some(format!("{local}@{}", domain.to_lowercase()))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// A display name cleaned of the quotes, `*bold*` marks and spacing clients wrap it in. Quotes
/// go only in pairs: "'Jane' via Sales" keeps its inner ones.
fn clean_name(raw: &str) -> Option<String> {
    let mut trimmed = raw.trim_matches(|c: char| c.is_whitespace() || "*,;:".contains(c));
    for _ in 0..3 {
        let quoted = ['"', '\'', '`']
            .into_iter()
            .find(|&q| trimmed.len() >= 2 && trimmed.starts_with(q) && trimmed.ends_with(q));
        match quoted {
            Some(q) => trimmed = trimmed[q.len_utf8()..trimmed.len() - q.len_utf8()].trim(),
            None => break,
        }
    }
    if trimmed.is_empty() || trimmed.contains('@') {
        return None;
    }
    let mut name = String::with_capacity(trimmed.len());
    for word in trimmed.split_whitespace() {
        if !name.is_empty() {
            name.push(' ');
        }
        name.push_str(word);
    }
    Some(name.replace("\\\"", "\""))
}

// ---------------------------------------------------------------------------------------------
// Envelope: SRS and Gmail's +caf_
// ---------------------------------------------------------------------------------------------

/// Decode an SRS reverse-path: `SRS0=HHH=TT=orig-domain=orig-local@forwarder`, the SRS1 form
/// (`SRS1=HHH=first-forwarder==HHH=TT=orig-domain=orig-local@second`) and Microsoft 365's
/// `bounces+SRS=HHH=TT=orig-domain=orig-local@forwarder`. Returns (original sender, forwarder
/// domain).
fn srs_decode(mail_from: &str) -> Option<(String, String)> {
    let addr = mail_from
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let at = addr.rfind('@')?;
    let (local, forwarder) = (&addr[..at], &addr[at + 1..]);
    if forwarder.is_empty() {
        return None;
    }
    let starts = std::iter::once(0).chain(local.match_indices('+').map(|(i, _)| i + 1));
    for start in starts {
        let rest = &local[start..];
        let original = if let Some(r) = strip_prefix_ignore_case(rest, "SRS0") {
            r.strip_prefix(['=', '+', '-']).and_then(srs0_fields)
        } else if let Some(r) = strip_prefix_ignore_case(rest, "SRS1") {
            // hash, first forwarder's domain, then the SRS0 part with its own separator kept.
            r.strip_prefix(['=', '+', '-']).and_then(|r| {
                let mut it = r.splitn(3, '=');
                let (_hash, _first, srs0) = (it.next()?, it.next()?, it.next()?);
                srs0.strip_prefix(['=', '+', '-']).and_then(srs0_fields)
            })
        } else if let Some(r) = strip_prefix_ignore_case(rest, "SRS=") {
            srs0_fields(r)
        } else {
            None
        };
        if let Some(original) = original {
            return Some((original, forwarder.to_lowercase()));
        }
    }
    None
}

/// `HHH=TT=domain=local` -> `local@domain`.
fn srs0_fields(s: &str) -> Option<String> {
    let mut it = s.splitn(4, '=');
    let (hash, stamp, domain, local) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let ok = !hash.is_empty()
        && !stamp.is_empty()
        && domain.contains('.')
        && !local.is_empty()
        && !domain.contains(char::is_whitespace);
    ok.then(|| format!("{local}@{}", domain.to_lowercase()))
}

/// Decode Gmail's auto-forward reverse-path `team+caf_=support=acme.example@gmail.com`. Returns
/// (forwarding mailbox `team@gmail.com`, destination `support@acme.example`).
fn caf_decode(mail_from: &str) -> Option<(String, String)> {
    let addr = mail_from
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let at = addr.rfind('@')?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    let lower = local.to_ascii_lowercase();
    let pos = lower.find("+caf_")?;
    let base = &local[..pos];
    if base.is_empty() || domain.is_empty() {
        return None;
    }
    let dest = local[pos + 5..].trim_start_matches('=');
    let destination = match dest.rfind('=') {
        Some(eq) => format!("{}@{}", &dest[..eq], &dest[eq + 1..]),
        None => String::new(),
    };
    Some((format!("{base}@{}", domain.to_lowercase()), destination))
}

// ---------------------------------------------------------------------------------------------
// Manual forwards: the body, and message/rfc822 attachments
// ---------------------------------------------------------------------------------------------

struct Found {
    mailbox: Mailbox,
    method: Method,
}

/// The innermost original sender of a manually forwarded message, if `msg` is one.
fn manual_forward(msg: &Message<'_>, rcpt: &str, depth: usize) -> Option<Found> {
    if depth >= MAX_DEPTH {
        return None;
    }
    let subject = msg.subject().unwrap_or("");
    let kind = subject_kind(subject);

    // Plain text first: it is what the client wrote. The HTML body is read too when the plain
    // part says nothing, since some clients send a placeholder or a lossy plain part.
    let plain = plain_body(msg);
    if let Some(text) = plain {
        if let Some(m) = innermost_inline(text, kind, rcpt) {
            return Some(Found {
                mailbox: m,
                method: Method::ForwardedInline,
            });
        }
    }
    let html = html_body(msg).map(html_to_text);
    if let Some(text) = &html {
        if let Some(m) = innermost_inline(text, kind, rcpt) {
            return Some(Found {
                mailbox: m,
                method: Method::ForwardedInline,
            });
        }
    }

    // A forwarded message/rfc822 attachment. A delivery report (multipart/report) also carries
    // one and is not a forward; neither is a reply that happens to attach a message.
    if kind == Prefix::Reply || is_report(msg) {
        return None;
    }
    let inner = attached_message(msg)?;
    let blank_body = plain
        .or(html.as_deref())
        .is_none_or(|t| !t.chars().any(char::is_alphanumeric));
    let same_subject = inner.subject().is_some_and(|s| {
        strip_subject_prefixes(s).eq_ignore_ascii_case(strip_subject_prefixes(subject))
    });
    if !(kind == Prefix::Forward || subject.trim().is_empty() || same_subject || blank_body) {
        return None;
    }
    if let Some(found) = manual_forward(inner, rcpt, depth + 1) {
        return Some(found);
    }
    let headers = Headers::read(inner);
    let evidence = headers.forwarding_evidence("");
    let author = headers.author(evidence.is_some())?;
    if same_address(&author.mailbox.email, rcpt) {
        return None;
    }
    Some(Found {
        mailbox: author.mailbox,
        method: Method::ForwardedAttachment,
    })
}

fn is_report(msg: &Message<'_>) -> bool {
    msg.root_part().content_type().is_some_and(|ct| {
        ct.c_type.eq_ignore_ascii_case("multipart")
            && ct
                .c_subtype
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    })
}

fn attached_message<'a>(msg: &'a Message<'a>) -> Option<&'a Message<'a>> {
    msg.attachments
        .iter()
        .find_map(|&id| match &msg.parts.get(id as usize)?.body {
            PartType::Message(inner) => Some(inner),
            _ => None,
        })
}

/// The first text/plain body part, cut to the scan limit.
fn plain_body<'a>(msg: &'a Message<'a>) -> Option<&'a str> {
    msg.text_body
        .iter()
        .find_map(|&id| match &msg.parts.get(id as usize)?.body {
            PartType::Text(t) => Some(truncate(t, SCAN_LIMIT_BYTES)),
            _ => None,
        })
}

/// The first text/html body part, cut to the scan limit.
fn html_body<'a>(msg: &'a Message<'a>) -> Option<&'a str> {
    msg.html_body
        .iter()
        .find_map(|&id| match &msg.parts.get(id as usize)?.body {
            PartType::Html(h) => Some(truncate(h, SCAN_LIMIT_BYTES)),
            _ => None,
        })
}

fn truncate(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// --- Subjects ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Forward,
    Reply,
    None,
}

/// Forward prefixes of the common clients and their localisations: English, French (TR),
/// German (WG), Spanish (RV), Italian (I), Portuguese (ENC), Dutch (Doorst), Polish (PD), Danish
/// and Norwegian (VS, Videresend), Swedish (VB), Finnish (VL).
const FORWARD_PREFIXES: &[&str] = &[
    "fwd",
    "fw",
    "tr",
    "wg",
    "rv",
    "i",
    "enc",
    "doorst",
    "pd",
    "vs",
    "videresend",
    "vb",
    "vl",
];

/// Reply prefixes: English, German (AW, Antw), Scandinavian (SV), Polish (Odp), Italian (R, Rif),
/// Portuguese (RES), Dutch (Antw), French (Réf).
const REPLY_PREFIXES: &[&str] = &[
    "re", "aw", "sv", "odp", "r", "rif", "res", "antw", "antwort", "ref", "réf", "ynt",
];

/// What the subject's leading prefix says ("[EXTERNAL] FW: x" is a forward, "RE: Fwd: x" a
/// reply).
fn subject_kind(subject: &str) -> Prefix {
    let mut s = subject.trim_start();
    for _ in 0..4 {
        if let Some(rest) = s.strip_prefix('[') {
            match rest.find(']') {
                Some(end) => {
                    s = rest[end + 1..].trim_start();
                    continue;
                }
                None => return Prefix::None,
            }
        }
        break;
    }
    let Some(colon) = s.find(':').filter(|&c| c <= 16) else {
        return Prefix::None;
    };
    // "TR :" (French spacing), "Re[2]:", "Fwd(3):"
    let token = s[..colon].split(['[', '(']).next().unwrap_or("").trim();
    let token = token.to_lowercase();
    if FORWARD_PREFIXES.contains(&token.as_str()) {
        Prefix::Forward
    } else if REPLY_PREFIXES.contains(&token.as_str()) {
        Prefix::Reply
    } else {
        Prefix::None
    }
}

/// The subject without its reply/forward prefixes and [tags], for comparing a forward's subject
/// with the attached message's.
fn strip_subject_prefixes(subject: &str) -> &str {
    let mut s = subject.trim();
    for _ in 0..8 {
        if let Some(rest) = s.strip_prefix('[') {
            if let Some(end) = rest.find(']') {
                s = rest[end + 1..].trim_start();
                continue;
            }
        }
        if subject_kind(s) == Prefix::None {
            break;
        }
        match s.find(':') {
            Some(c) => s = s[c + 1..].trim_start(),
            None => break,
        }
    }
    s
}

// --- Lines, labels and separators --------------------------------------------------------------

/// One body line with its `>` quoting removed.
struct Line<'a> {
    /// How many `>` quote it.
    depth: u8,
    /// The content, trimmed.
    text: &'a str,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    text.split('\n')
        .map(|raw| {
            let mut s = raw.trim();
            let mut depth = 0u8;
            while let Some(rest) = s.strip_prefix('>') {
                depth = depth.saturating_add(1);
                s = rest.trim_start();
            }
            Line { depth, text: s }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    From,
    Date,
    To,
    Cc,
    Subject,
    Other,
}

impl Field {
    fn bit(self) -> u8 {
        match self {
            Field::From => 1,
            Field::Date => 2,
            Field::To => 4,
            Field::Cc => 8,
            Field::Subject => 16,
            Field::Other => 32,
        }
    }
}

/// The labels of a forwarded header block, lower-cased, in the languages we read (see the
/// module docs). Outlook, Gmail, Apple Mail, Thunderbird and Yahoo each localise a subset.
const LABELS: &[(&str, Field)] = &[
    ("from", Field::From),
    ("de", Field::From),
    ("von", Field::From),
    ("da", Field::From),
    ("van", Field::From),
    ("od", Field::From),
    ("fra", Field::From),
    ("från", Field::From),
    ("mittente", Field::From),
    ("absender", Field::From),
    ("afzender", Field::From),
    ("expéditeur", Field::From),
    ("remitente", Field::From),
    ("nadawca", Field::From),
    ("avsändare", Field::From),
    ("afsender", Field::From),
    ("date", Field::Date),
    ("sent", Field::Date),
    ("datum", Field::Date),
    ("gesendet", Field::Date),
    ("envoyé", Field::Date),
    ("envoye", Field::Date),
    ("enviado", Field::Date),
    ("enviada", Field::Date),
    ("enviado el", Field::Date),
    ("enviada em", Field::Date),
    ("enviado em", Field::Date),
    ("inviato", Field::Date),
    ("data", Field::Date),
    ("fecha", Field::Date),
    ("verzonden", Field::Date),
    ("wysłano", Field::Date),
    ("wysłane", Field::Date),
    ("sendt", Field::Date),
    ("skickat", Field::Date),
    ("skickades", Field::Date),
    ("dato", Field::Date),
    ("to", Field::To),
    ("à", Field::To),
    ("a", Field::To),
    ("an", Field::To),
    ("para", Field::To),
    ("aan", Field::To),
    ("do", Field::To),
    ("til", Field::To),
    ("till", Field::To),
    ("pour", Field::To),
    ("destinatario", Field::To),
    ("destinataire", Field::To),
    ("empfänger", Field::To),
    ("adresat", Field::To),
    ("mottagare", Field::To),
    ("modtager", Field::To),
    ("cc", Field::Cc),
    ("kopie", Field::Cc),
    ("copie", Field::Cc),
    ("copia", Field::Cc),
    ("kopia", Field::Cc),
    ("dw", Field::Cc),
    ("subject", Field::Subject),
    ("objet", Field::Subject),
    ("sujet", Field::Subject),
    ("betreff", Field::Subject),
    ("asunto", Field::Subject),
    ("oggetto", Field::Subject),
    ("assunto", Field::Subject),
    ("onderwerp", Field::Subject),
    ("temat", Field::Subject),
    ("emne", Field::Subject),
    ("ämne", Field::Subject),
    ("reply-to", Field::Other),
    ("répondre à", Field::Other),
    ("antwort an", Field::Other),
    ("responder a", Field::Other),
    ("rispondi a", Field::Other),
    ("importance", Field::Other),
    ("wichtigkeit", Field::Other),
    ("priorität", Field::Other),
];

/// `From: value`, `*Von:* value`, `De : value` (French spacing, with NBSP) -> (field, value).
fn label(text: &str) -> Option<(Field, &str)> {
    let s = text.trim_start_matches(|c: char| c == '*' || c.is_whitespace());
    let colon = s.find(':').filter(|&c| c > 0 && c <= 24)?;
    let name = s[..colon].trim_end_matches(|c: char| c == '*' || c.is_whitespace());
    let lower = name.to_lowercase();
    let field = LABELS.iter().find(|(l, _)| *l == lower).map(|&(_, f)| f)?;
    let value = s[colon + 1..].trim_matches(|c: char| c == '*' || c.is_whitespace());
    Some((field, value))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Separator {
    /// A banner that says "forwarded": the block under it is a forward.
    Forward,
    /// "-----Original Message-----", a rule line, Outlook's bordered div: reply or forward alike.
    Ambiguous,
}

/// Banners that say "forwarded" (Gmail, Apple Mail / iOS, Thunderbird, Yahoo, mutt, Outlook
/// for Android), lower-cased, in the languages we read.
const FORWARD_BANNERS: &[&str] = &[
    "forwarded message",
    "begin forwarded message",
    "forwarded conversation",
    "forwarded email",
    "forwarded mail",
    "message transféré",
    "message réexpédié",
    "mail transféré",
    "courriel transféré",
    "début du message réexpédié",
    "début du message transféré",
    "weitergeleitete nachricht",
    "weitergeleitete e-mail",
    "anfang der weitergeleiteten nachricht",
    "mensaje reenviado",
    "inicio del mensaje reenviado",
    "correo reenviado",
    "messaggio inoltrato",
    "inizio messaggio inoltrato",
    "mensagem encaminhada",
    "mensagem reencaminhada",
    "início da mensagem encaminhada",
    "início da mensagem reencaminhada",
    "doorgestuurd bericht",
    "begin doorgestuurd bericht",
    "doorgestuurde e-mail",
    "wiadomość przekazana dalej",
    "przekazana wiadomość",
    "początek przekazywanej wiadomości",
    "videresendt meddelelse",
    "videresendt besked",
    "videresendt e-mail",
    "start på videresendt besked",
    "vidarebefordrat meddelande",
    "vidarebefordrat mejl",
    "vidarebefordrat brev",
    "början på vidarebefordrat brev",
];

/// Separators clients put above both replies and forwards.
const AMBIGUOUS_BANNERS: &[&str] = &[
    "original message",
    "ursprüngliche nachricht",
    "original-nachricht",
    "message d'origine",
    "message d’origine",
    "mensaje original",
    "messaggio originale",
    "mensagem original",
    "oorspronkelijk bericht",
    "oryginalna wiadomość",
    "wiadomość oryginalna",
    "oprindelig meddelelse",
    "ursprungligt meddelande",
    "originalmeddelande",
];

/// The line drawn for `<hr>` and Outlook's bordered `<div>` when HTML is stripped.
const RULE_LINE: &str = "________________________________";

fn separator(text: &str) -> Option<Separator> {
    if text.len() > 160 || text.is_empty() {
        return None;
    }
    let first = text.as_bytes()[0];
    if !(b"-_=*".contains(&first) || text.ends_with(':')) {
        return None;
    }
    let decoration = |c: char| "-_=*—–".contains(c);
    if text.chars().count() >= 8 && text.chars().all(decoration) {
        return Some(Separator::Ambiguous);
    }
    let core = text
        .trim_matches(|c: char| decoration(c) || c == ':' || c.is_whitespace())
        .to_lowercase();
    if FORWARD_BANNERS.iter().any(|b| core.starts_with(b)) {
        Some(Separator::Forward)
    } else if AMBIGUOUS_BANNERS.iter().any(|b| core.starts_with(b)) {
        Some(Separator::Ambiguous)
    } else {
        None
    }
}

fn is_decoration(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| "-_=*—–".contains(c))
}

/// Verbs of reply attribution lines ("On … wrote:", "Le … a écrit :", "Am … schrieb …:",
/// "El … escribió:", "Il … ha scritto:", "Em … escreveu:", "Op … schreef …:", "W dniu …
/// napisał(a):", "Den … skrev …:").
const REPLY_VERBS: &[&str] = &[
    "wrote",
    "écrit",
    "schrieb",
    "escribió",
    "scritto",
    "escreveu",
    "schreef",
    "napisał",
    "pisze",
    "skrev",
    "kirjoitti",
    "geschreven",
];

/// A reply attribution line at `i` (possibly wrapped onto the next line). Returns the mailbox it
/// names, if any.
fn attribution_line(lines: &[Line<'_>], i: usize) -> Option<Option<Mailbox>> {
    let text = lines[i].text;
    let joined: Cow<'_, str> = if text.ends_with(':') {
        Cow::Borrowed(text)
    } else {
        let next = lines.get(i + 1)?.text;
        if next.len() > 80 || !next.ends_with(':') || text.len() > 300 || label(next).is_some() {
            return None;
        }
        Cow::Owned(format!("{text} {next}"))
    };
    if joined.len() > 400 || !joined.contains(|c: char| c.is_ascii_digit() || c == '@') {
        return None;
    }
    let lower = joined.to_lowercase();
    let has_verb = REPLY_VERBS.iter().any(|verb| {
        lower.match_indices(verb).any(|(at, _)| {
            !lower[..at]
                .chars()
                .next_back()
                .is_some_and(char::is_alphabetic)
        })
    });
    if !has_verb {
        return None;
    }
    // The display name sits between the date and the address: "On Mon, Jan 8, 2024 at 10:15 AM
    // Jane Doe <jane@…> wrote:", "Am … um 10:15 Uhr schrieb Jane Doe <…>:".
    Some(extract_mailbox_at(&joined).map(|(mut m, start)| {
        m.name = attribution_name(&joined[..start]);
        m
    }))
}

/// Words between an attribution line's time and the sender's name.
const ATTRIBUTION_FILLERS: &[&str] = &[
    "am", "pm", "a.m.", "p.m.", "uhr", "schrieb", "schreef", "skrev", "h", "hs", "gmt", "utc",
    "cet",
];

fn attribution_name(before_address: &str) -> Option<String> {
    let words: Vec<&str> = before_address.split_whitespace().collect();
    let after_time = words
        .iter()
        .rposition(|w| w.contains(|c: char| c.is_ascii_digit()))
        .map_or(0, |i| i + 1);
    let rest = &words[after_time..];
    let skip = rest
        .iter()
        .take_while(|w| {
            let w = w.trim_end_matches(',').to_lowercase();
            ATTRIBUTION_FILLERS.contains(&w.as_str()) || w.is_empty()
        })
        .count();
    clean_name(
        rest[skip..]
            .join(" ")
            .trim_end_matches(['<', '(', '[', ' ']),
    )
}

// --- Forwarded header blocks ---------------------------------------------------------------------

/// A run of header-like lines ("From: …", "Sent: …", "To: …", "Subject: …").
struct Block<'a> {
    from: Option<Cow<'a, str>>,
    subject: Option<&'a str>,
    fields: u8,
    /// The line after the block.
    end: usize,
    /// The quote depth of its first line.
    depth: u8,
}

impl Block<'_> {
    fn field_count(&self) -> u32 {
        self.fields.count_ones()
    }
}

/// The longest header block we read; real ones have at most eight lines.
const MAX_BLOCK_LINES: usize = 24;

fn parse_block<'a>(lines: &[Line<'a>], start: usize) -> Block<'a> {
    let mut block = Block {
        from: None,
        subject: None,
        fields: 0,
        end: start,
        depth: lines.get(start).map_or(0, |l| l.depth),
    };
    let mut i = start;
    let mut last: Option<Field> = None;
    while i < lines.len() && i - start < MAX_BLOCK_LINES {
        let text = lines[i].text;
        if text.is_empty() {
            // One blank line inside a block, when a new field follows it.
            let continues = block.fields != 0
                && lines
                    .get(i + 1)
                    .and_then(|l| label(l.text))
                    .is_some_and(|(f, _)| block.fields & f.bit() == 0);
            if continues {
                i += 1;
                continue;
            }
            break;
        }
        let Some((field, value)) = label(text) else {
            // "To: A <a@x>; B <b@x>;" wrapped onto the next line.
            if matches!(last, Some(Field::To | Field::Cc)) && text.contains('@') {
                i += 1;
                continue;
            }
            break;
        };
        last = Some(field);
        if field == Field::From && block.fields & Field::From.bit() != 0 {
            break;
        }
        block.fields |= field.bit();
        i += 1;
        match field {
            Field::From => {
                let mut from = Cow::Borrowed(value);
                // "From: A Long Name\n<addr>" and "From:\nName <addr>": the address on the next line.
                if extract_mailbox(value).is_none() {
                    if let Some(next) = lines.get(i).map(|l| l.text) {
                        if !next.is_empty()
                            && label(next).is_none()
                            && extract_mailbox(next).is_some()
                        {
                            from = Cow::Owned(format!("{value} {next}"));
                            i += 1;
                        }
                    }
                }
                block.from = Some(from);
            }
            Field::Subject => block.subject = Some(value),
            _ => {}
        }
    }
    block.end = i.max(start + 1);
    block
}

impl Block<'_> {
    fn has_from(&self) -> bool {
        self.fields & Field::From.bit() != 0
    }

    fn sender(&self) -> Option<Mailbox> {
        self.from.as_deref().and_then(extract_mailbox)
    }
}

enum Event<'a> {
    /// "On … wrote:": what follows is a quoted reply.
    Attribution(Option<Mailbox>),
    /// A header block with a From, and the separator above it, if any.
    Block(Option<Separator>, Block<'a>),
}

/// The block a separator at `i` introduces, if one starts within the next few lines.
fn block_after_separator<'a>(lines: &[Line<'a>], i: usize) -> Option<Block<'a>> {
    let mut j = i + 1;
    let mut seen = 0;
    while j < lines.len() && seen < 6 {
        let text = lines[j].text;
        if text.is_empty() {
            j += 1;
            continue;
        }
        seen += 1;
        if label(text).is_some() {
            let block = parse_block(lines, j);
            if block.has_from() {
                return Some(block);
            }
            // Gmail's "Forwarded conversation" puts a Subject line and a rule first.
            j = block.end;
            continue;
        }
        if is_decoration(text) {
            j += 1;
            continue;
        }
        return None;
    }
    None
}

/// The next attribution line or header block at or after line `i`, and the line after it.
fn next_event<'a>(lines: &[Line<'a>], mut i: usize) -> Option<(Event<'a>, usize)> {
    while i < lines.len() {
        let text = lines[i].text;
        if text.is_empty() {
            i += 1;
            continue;
        }
        if let Some(mailbox) = attribution_line(lines, i) {
            return Some((Event::Attribution(mailbox), i + 1));
        }
        if let Some(sep) = separator(text) {
            if let Some(block) = block_after_separator(lines, i) {
                let enough = match sep {
                    Separator::Forward => 1,
                    Separator::Ambiguous => 2,
                };
                if block.field_count() >= enough {
                    let end = block.end;
                    return Some((Event::Block(Some(sep), block), end));
                }
            }
            i += 1;
            continue;
        }
        if label(text).is_some() {
            let block = parse_block(lines, i);
            // Without a separator only a full block counts: From, a date and a subject or
            // recipient, as Outlook writes it.
            if block.has_from() && block.field_count() >= 3 {
                let end = block.end;
                return Some((Event::Block(None, block), end));
            }
            i = block.end;
            continue;
        }
        i += 1;
    }
    None
}

/// Follow forwarded blocks from the top of `text` to the innermost one and return its sender.
/// `kind` is what the subject of the message holding `text` says.
fn innermost_inline(text: &str, kind: Prefix, rcpt: &str) -> Option<Mailbox> {
    let lines = split_lines(text);
    let mut level_kind = kind;
    let mut found: Option<Mailbox> = None;
    let mut i = 0;
    for _ in 0..MAX_DEPTH {
        let Some((event, next)) = next_event(&lines, i) else {
            break;
        };
        match event {
            Event::Attribution(mailbox) => {
                // A forward that quotes its original like a reply ("Fwd:" over "On … X
                // wrote:", as some mobile clients do): the attribution names the author.
                if level_kind == Prefix::Forward {
                    if let Some(m) = mailbox.filter(|m| !same_address(&m.email, rcpt)) {
                        found = Some(m);
                    }
                }
                break;
            }
            Event::Block(sep, block) => {
                let is_forward = match sep {
                    // A quoted forward banner under a reply subject is a reply to a forward.
                    Some(Separator::Forward) => !(level_kind == Prefix::Reply && block.depth > 0),
                    _ => level_kind == Prefix::Forward,
                };
                if !is_forward {
                    break;
                }
                let Some(sender) = block.sender() else {
                    break;
                };
                if same_address(&sender.email, rcpt) {
                    break;
                }
                found = Some(sender);
                // The forwarded message's own subject decides whether the next block down is
                // another forward.
                level_kind = block.subject.map_or(Prefix::None, subject_kind);
                i = next;
            }
        }
    }
    found
}

// --- Addresses in free text ------------------------------------------------------------------

/// Longer "names" found before an address in free text are prose and dropped.
const MAX_NAME_CHARS: usize = 120;

fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || "._%+-=~#$^!&".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '.' || c == '-'
}

/// The first address in a line of text, with the display name before it: `Name <addr>`,
/// `"Doe, Jane" <addr>`, `Name [mailto:addr]`, `addr<mailto:addr>`, `mailto:addr`, `addr`.
fn extract_mailbox(text: &str) -> Option<Mailbox> {
    extract_mailbox_at(text).map(|(m, _)| m)
}

/// [`extract_mailbox`], with the byte offset where the address starts.
fn extract_mailbox_at(text: &str) -> Option<(Mailbox, usize)> {
    for (at, _) in text.match_indices('@') {
        let local_start = text[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_local_char(c))
            .last()
            .map_or(at, |(i, _)| i);
        let domain_end = text[at + 1..]
            .char_indices()
            .take_while(|&(_, c)| is_domain_char(c))
            .last()
            .map_or(at + 1, |(i, c)| at + 1 + i + c.len_utf8());
        let local = text[local_start..at].trim_start_matches('.');
        let domain = text[at + 1..domain_end].trim_end_matches(['.', '-']);
        if local.is_empty() || !domain.contains('.') || domain.starts_with(['.', '-']) {
            continue;
        }
        let mut before = &text[..local_start];
        for marker in ["mailto:", "MAILTO:", "Mailto:"] {
            before = before.strip_suffix(marker).unwrap_or(before);
        }
        let before = before.trim_end_matches(|c: char| c.is_whitespace() || "<[(".contains(c));
        // A display name is short; a long run of text before the address is prose, not a name.
        let name = clean_name(before).filter(|n| n.chars().count() <= MAX_NAME_CHARS);
        let mailbox = Mailbox {
            email: format!("{local}@{}", domain.to_lowercase()),
            name,
        };
        return Some((mailbox, local_start));
    }
    None
}

// --- HTML to text ---------------------------------------------------------------------------------

/// Strip tags and decode entities, keeping the line structure forwarded headers rely on: `<br>`
/// and block elements end lines, table cells are spaced, `<hr>` and Outlook's bordered `<div>`
/// become a rule line, a `mailto:` link whose text hides the address gets it appended, and text
/// inside `<blockquote>` is prefixed with `>` as a plain-text client would quote it.
fn html_to_text(html: &str) -> String {
    let bytes = html.as_bytes();
    let mut out = Text {
        s: String::with_capacity(html.len() / 2),
        quote: 0,
    };
    let mut i = 0;
    let mut skip: Option<&'static str> = None;
    let mut pre = 0u32;
    let mut link: Option<(String, usize)> = None;
    // Once a '<' has no '>' after it, no later one has: the rest is text.
    let mut no_more_tags = false;
    while i < bytes.len() {
        match bytes[i] {
            b'<' if !no_more_tags => {
                let rest = &html[i..];
                if let Some(comment) = rest.strip_prefix("<!--") {
                    i = comment.find("-->").map_or(bytes.len(), |p| i + 4 + p + 3);
                    continue;
                }
                let starts_tag = bytes
                    .get(i + 1)
                    .is_some_and(|&b| b.is_ascii_alphabetic() || b"/!?".contains(&b));
                let end = if starts_tag {
                    tag_end(bytes, i + 1)
                } else {
                    None
                };
                let Some(end) = end else {
                    if starts_tag {
                        no_more_tags = true;
                    }
                    if skip.is_none() {
                        out.push('<');
                    }
                    i += 1;
                    continue;
                };
                let inner = &html[i + 1..end];
                i = end + 1;
                let closing = inner.starts_with('/');
                let name: String = inner
                    .trim_start_matches('/')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                if let Some(s) = skip {
                    if closing && name == s {
                        skip = None;
                    }
                    continue;
                }
                match name.as_str() {
                    "style" | "script" | "title" if !closing && !inner.ends_with('/') => {
                        skip = Some(match name.as_str() {
                            "style" => "style",
                            "script" => "script",
                            _ => "title",
                        });
                    }
                    "br" => out.end_line(),
                    "hr" => out.rule(),
                    "div" => {
                        if !closing && is_outlook_separator(inner) {
                            out.rule();
                        } else {
                            out.end_line();
                        }
                    }
                    "p" | "tr" | "li" | "ul" | "ol" | "table" | "h1" | "h2" | "h3" | "h4"
                    | "h5" | "h6" | "dt" | "dd" | "section" | "article" | "header" | "footer"
                    | "center" | "address" | "body" => out.end_line(),
                    "blockquote" => {
                        out.end_line();
                        out.quote = if closing {
                            out.quote.saturating_sub(1)
                        } else {
                            out.quote + 1
                        };
                    }
                    "pre" => {
                        out.end_line();
                        pre = if closing {
                            pre.saturating_sub(1)
                        } else {
                            pre + 1
                        };
                    }
                    "td" | "th" => out.space(),
                    "a" if closing => {
                        if let Some((addr, start)) = link.take() {
                            if !out.s.get(start..).is_some_and(|t| t.contains('@')) {
                                out.push_str(" <");
                                out.push_str(&addr);
                                out.push('>');
                            }
                        }
                    }
                    "a" => link = mailto_href(inner).map(|addr| (addr, out.s.len())),
                    _ => {}
                }
            }
            b'&' => {
                if let Some((decoded, len)) = entity(&html[i..]) {
                    if skip.is_none() {
                        if decoded == '\u{a0}' || decoded.is_whitespace() {
                            out.space();
                        } else {
                            out.push(decoded);
                        }
                    }
                    i += len;
                } else {
                    if skip.is_none() {
                        out.push('&');
                    }
                    i += 1;
                }
            }
            _ => {
                // `i` is always on a char boundary: every step above moves past ASCII bytes.
                let Some(c) = html[i..].chars().next() else {
                    break;
                };
                i += c.len_utf8();
                if skip.is_some() {
                    continue;
                }
                if c == '\n' && pre > 0 {
                    out.end_line();
                } else if c.is_whitespace() {
                    out.space();
                } else {
                    out.push(c);
                }
            }
        }
    }
    out.s
}

/// The '>' closing a tag that starts at `from`, skipping quoted attribute values. The quoted
/// scan is bounded so malformed HTML stays linear; past the bound the first '>' is taken.
fn tag_end(bytes: &[u8], from: usize) -> Option<usize> {
    const QUOTE_AWARE_BYTES: usize = 2048;
    let mut quote: Option<u8> = None;
    let limit = bytes.len().min(from + QUOTE_AWARE_BYTES);
    for (j, &b) in bytes.iter().enumerate().take(limit).skip(from) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(j),
            None => {}
        }
    }
    bytes[from..]
        .iter()
        .position(|&b| b == b'>')
        .map(|p| from + p)
}

/// The text being built from HTML, with the blockquote depth of where it is.
struct Text {
    s: String,
    quote: u32,
}

impl Text {
    /// Deeper nesting is quoted as this many levels, so hostile markup cannot multiply the output.
    const MAX_QUOTE: u32 = 8;

    fn start_line(&mut self) {
        if self.quote > 0 && (self.s.is_empty() || self.s.ends_with('\n')) {
            for _ in 0..self.quote.min(Self::MAX_QUOTE) {
                self.s.push('>');
            }
            self.s.push(' ');
        }
    }

    fn push(&mut self, c: char) {
        self.start_line();
        self.s.push(c);
    }

    fn push_str(&mut self, t: &str) {
        self.start_line();
        self.s.push_str(t);
    }

    fn end_line(&mut self) {
        while self.s.ends_with(' ') {
            self.s.pop();
        }
        if !self.s.is_empty() && !self.s.ends_with('\n') {
            self.s.push('\n');
        }
    }

    fn space(&mut self) {
        if !self.s.is_empty() && !self.s.ends_with([' ', '\n']) {
            self.s.push(' ');
        }
    }

    fn rule(&mut self) {
        self.end_line();
        self.push_str(RULE_LINE);
        self.s.push('\n');
    }
}

/// Outlook desktop draws the line above a reply or forward header as a `<div>` with a top
/// border; Outlook on the web wraps the header in `<div id="divRplyFwdMsg">`.
fn is_outlook_separator(tag: &str) -> bool {
    let lower: String = tag
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (lower.contains("border-top:solid") && lower.contains("border:none"))
        || lower.contains("id=\"divrplyfwdmsg\"")
        || lower.contains("id=divrplyfwdmsg")
}

/// The address of an `<a href="mailto:…">` tag.
fn mailto_href(tag: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find("mailto:")? + "mailto:".len();
    let addr: String = tag[at..]
        .chars()
        .take_while(|&c| !(c == '"' || c == '\'' || c == '?' || c == '>' || c.is_whitespace()))
        .collect();
    let addr = addr.replace("%40", "@");
    addr.contains('@').then_some(addr)
}

/// Decode the entity at the start of `s` ("&amp;", "&#233;", "&#xE9;"): (char, bytes used).
fn entity(s: &str) -> Option<(char, usize)> {
    let semi = s.bytes().take(12).position(|b| b == b';')?;
    let body = s.get(1..semi)?;
    let c = if let Some(num) = body.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        char::from_u32(code)?
    } else {
        named_entity(body)?
    };
    Some((c, semi + 1))
}

/// HTML 4 Latin-1 entities, U+00A0 to U+00FF, in code point order.
const LATIN1_ENTITIES: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

fn named_entity(name: &str) -> Option<char> {
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "ndash" => '–',
        "mdash" => '—',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "hellip" => '…',
        "bull" => '•',
        "euro" => '€',
        "ensp" | "emsp" | "thinsp" => ' ',
        "zwnj" | "zwj" => '\u{200c}',
        _ => {
            let pos = LATIN1_ENTITIES.iter().position(|&e| e == name)?;
            char::from_u32(0xA0 + pos as u32)?
        }
    };
    Some(c)
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
    }

    #[test]
    fn subject_prefixes() {
        assert_eq!(subject_kind("Fwd: hello"), Prefix::Forward);
        assert_eq!(subject_kind("[EXTERNAL] FW: hello"), Prefix::Forward);
        assert_eq!(subject_kind("TR : facture"), Prefix::Forward);
        assert_eq!(subject_kind("WG: Angebot"), Prefix::Forward);
        assert_eq!(subject_kind("Doorst: offerte"), Prefix::Forward);
        assert_eq!(subject_kind("Re[2]: hello"), Prefix::Reply);
        assert_eq!(subject_kind("RE: Fwd: hello"), Prefix::Reply);
        assert_eq!(subject_kind("AW: WG: Angebot"), Prefix::Reply);
        assert_eq!(subject_kind("Question: pricing"), Prefix::None);
        assert_eq!(subject_kind(""), Prefix::None);
        assert_eq!(strip_subject_prefixes("Fwd: RE: [x] Hello"), "Hello");
    }

    #[test]
    fn srs_and_caf_decoding() {
        assert_eq!(
            srs_decode("SRS0=HHH=TT=orig-domain.example=orig-local@forwarder.example"),
            Some((
                "orig-local@orig-domain.example".into(),
                "forwarder.example".into()
            ))
        );
        assert_eq!(
            srs_decode("<SRS1=XXX=first.example==HHH=TT=Orig.Example=a=b@second.example>"),
            Some(("a=b@orig.example".into(), "second.example".into()))
        );
        assert_eq!(
            srs_decode("bounces+SRS=Ab1cD=2X=fabrikam.com=bob@contoso.com"),
            Some(("bob@fabrikam.com".into(), "contoso.com".into()))
        );
        assert_eq!(srs_decode("srs0@example.com"), None);
        assert_eq!(srs_decode("SRS0=x@"), None);
        assert_eq!(
            caf_decode("team+caf_=support=acme.inbound.example@gmail.com"),
            Some((
                "team@gmail.com".into(),
                "support@acme.inbound.example".into()
            ))
        );
        assert_eq!(caf_decode("team@gmail.com"), None);
    }

    #[test]
    fn addresses_in_text() {
        let m = |s: &str| extract_mailbox(s).map(|m| (m.email, m.name));
        let some = |e: &str, n: Option<&str>| Some((e.to_string(), n.map(str::to_string)));
        assert_eq!(
            m("Jane Doe <jane@Example.COM>"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(
            m("\"Doe, Jane\" <jane@example.com>"),
            some("jane@example.com", Some("Doe, Jane"))
        );
        assert_eq!(
            m("Jane Doe [mailto:jane@example.com]"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(
            m("Jane Doe <jane@example.com<mailto:jane@example.com>>"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(
            m("*Jane Doe* <jane@example.com>"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(m("mailto:jane@example.com"), some("jane@example.com", None));
        assert_eq!(
            m("jane@example.com <jane@example.com>"),
            some("jane@example.com", None)
        );
        assert_eq!(m("Jane at home"), None);
        assert_eq!(m("@@@ a@b"), None);
    }

    #[test]
    fn labels_in_many_languages() {
        assert_eq!(label("From: x").map(|l| l.0), Some(Field::From));
        assert_eq!(label("*Von:* x").map(|l| l.0), Some(Field::From));
        assert_eq!(label("De\u{a0}: x").map(|l| l.0), Some(Field::From));
        assert_eq!(label("Envoyé : lundi").map(|l| l.0), Some(Field::Date));
        assert_eq!(label("À : Support").map(|l| l.0), Some(Field::To));
        assert_eq!(label("Ämne: Fråga").map(|l| l.0), Some(Field::Subject));
        assert_eq!(label("Enviada em: segunda").map(|l| l.0), Some(Field::Date));
        assert_eq!(label("Note: x"), None);
        assert_eq!(label("On Mon, 8 Jan 2024 at 10:15, Jane wrote:"), None);
    }

    #[test]
    fn separators() {
        assert_eq!(
            separator("---------- Forwarded message ---------"),
            Some(Separator::Forward)
        );
        assert_eq!(
            separator("Begin forwarded message:"),
            Some(Separator::Forward)
        );
        assert_eq!(
            separator("-------- Weitergeleitete Nachricht --------"),
            Some(Separator::Forward)
        );
        assert_eq!(
            separator("-----Original Message-----"),
            Some(Separator::Ambiguous)
        );
        assert_eq!(separator(RULE_LINE), Some(Separator::Ambiguous));
        assert_eq!(separator("-- "), None);
        assert_eq!(separator("We forwarded message logs to you:"), None);
    }

    #[test]
    fn html_is_flattened_to_lines() {
        let html = "<html><head><style>p{margin:0}</style></head><body><div>Hi&nbsp;team</div>\
            <div style=\"border:none;border-top:solid #E1E1E1 1.0pt\"><p><b>De&nbsp;:</b> Jean \
            &lt;<a href=\"mailto:jean@x.example\">jean@x.example</a>&gt;<br><b>Envoy&eacute;&nbsp;:\
            </b> lundi</p></div><a href='mailto:z@y.example?subject=x'>Zed</a><!-- a > b --></body>";
        let text = html_to_text(html);
        assert_eq!(
            text,
            format!("Hi team\n{RULE_LINE}\nDe : Jean <jean@x.example>\nEnvoyé : lundi\nZed <z@y.example>\n")
        );
        assert_eq!(html_to_text("a < b && c <unclosed"), "a < b && c <unclosed");
        assert_eq!(
            html_to_text("Sure.<blockquote>From: x<br><blockquote>deep</blockquote></blockquote>"),
            "Sure.\n> From: x\n>> deep\n"
        );
        let deep = "<blockquote>".repeat(10_000) + "x";
        assert_eq!(html_to_text(&deep), ">>>>>>>> x");
    }

    #[test]
    fn attribution_lines_in_many_languages() {
        let cases = [
            (
                "On Mon, Jan 8, 2024 at 10:15 AM Jane Doe <j@x.example> wrote:",
                "Jane Doe",
            ),
            (
                "Am Mo., 8. Jan. 2024 um 10:15 Uhr schrieb Jürgen Müller <j@x.example>:",
                "Jürgen Müller",
            ),
            (
                "Op ma 8 jan 2024 om 10:15 schreef Sanne de Vries <s@x.example>:",
                "Sanne de Vries",
            ),
            (
                "El lun, 8 ene 2024 a las 10:15, María García (<m@x.example>) escribió:",
                "María García",
            ),
            (
                "Le lun. 8 janv. 2024 à 10:15, Jean Dupont <j@x.example> a écrit :",
                "Jean Dupont",
            ),
            (
                "W dniu pon., 8 sty 2024 o 10:15 Łukasz W <l@x.example> napisał(a):",
                "Łukasz W",
            ),
        ];
        for (line, name) in cases {
            let lines = split_lines(line);
            let found = attribution_line(&lines, 0).flatten().expect(line);
            assert_eq!(found.name.as_deref(), Some(name), "{line}");
        }
        // Wrapped onto two lines, as Gmail's plain part does.
        let lines = split_lines("On Mon, Jan 8, 2024 at 10:15 AM Jane Doe <\nj@x.example> wrote:");
        assert!(attribution_line(&lines, 0).is_some());
        // Prose is not an attribution: no date or address, or the verb inside a word.
        for prose in ["Here is what the customer wrote:", "Vi beskrev 3 steg:"] {
            assert!(
                attribution_line(&split_lines(prose), 0).is_none(),
                "{prose}"
            );
        }
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
        assert_eq!(a.method, Method::ForwardedInline);
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

    /// A tiny xorshift generator: the internals never panic on arbitrary text.
    #[test]
    fn internals_survive_random_text() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<char> = "<>&;#x:@.-_=\"' \n\r\tabcFromDe:àÄł\u{a0}[]()*/!mailto"
            .chars()
            .collect();
        for _ in 0..3000 {
            let len = (next() % 200) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = html_to_text(&s);
            let _ = extract_mailbox(&s);
            let _ = innermost_inline(&s, Prefix::Forward, "a@b.c");
            let _ = srs_decode(&s);
            let _ = caf_decode(&s);
            let _ = subject_kind(&s);
            let _ = strip_subject_prefixes(&s);
            let _ = via_name(&s);
            let _ = entity(&s);
            let _ = truncate(&s, (next() % 50) as usize);
        }
    }
}
