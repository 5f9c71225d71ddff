//! Header section + envelope -> the header author and evidence of automatic forwarding. RFC 5322
//! §3.6.2 (From, Sender, Reply-To), §3.6.6 (Resent-*), and the relays' own fields (X-Original-From,
//! Microsoft 365's X-MS-Exchange-*, Gmail's X-Forwarded-For).

use mail_parser::{Addr, HeaderValue, Message};

use super::address::{clean_name, extract_mailbox, normalize_address, Mailbox};
use super::srs::{caf_decode, srs_decode};
use super::Method;

pub(super) struct Author {
    pub(super) mailbox: Mailbox,
    pub(super) method: Method,
    pub(super) forwarded_by: Option<String>,
}

pub(super) struct Evidence {
    pub(super) method: Method,
    pub(super) forwarded_by: Option<String>,
}

/// The header fields attribution reads, each from its topmost occurrence (the newest, for
/// trace-like fields such as Resent-*).
#[derive(Default)]
pub(super) struct Headers {
    pub(super) from: Option<Mailbox>,
    pub(super) from_display: Option<String>,
    pub(super) sender: Option<Mailbox>,
    pub(super) reply_to: Option<Mailbox>,
    pub(super) x_original_from: Option<Mailbox>,
    pub(super) x_original_sender: Option<Mailbox>,
    pub(super) resent_from: Option<Mailbox>,
    pub(super) resent_sender: Option<Mailbox>,
    pub(super) x_forwarded_for: Option<Mailbox>,
    pub(super) ms_rules_loop: Option<Mailbox>,
    pub(super) ms_forwarding_loop: Option<Mailbox>,
    pub(super) ms_original_sender: Option<Mailbox>,
    pub(super) ms_autoforwarded: bool,
    pub(super) list: bool,
}

impl Headers {
    pub(super) fn read(message: &Message<'_>) -> Headers {
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
    pub(super) fn forwarding_evidence(&self, mail_from: &str) -> Option<Evidence> {
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
    pub(super) fn author(&self, forwarded: bool) -> Option<Author> {
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

pub(super) fn set_once(slot: &mut Option<Mailbox>, value: &HeaderValue<'_>) {
    if slot.is_none() {
        *slot = mailbox_of(value);
    }
}

pub(super) fn text_of<'a>(value: &'a HeaderValue<'_>) -> Option<&'a str> {
    match value {
        HeaderValue::Text(t) => Some(t.as_ref()),
        HeaderValue::TextList(l) => l.first().map(|t| t.as_ref()),
        _ => None,
    }
}

/// The first mailbox of a header value, whether mail-parser parsed it as addresses (From,
/// Sender, Resent-*) or left it as text (X-Original-From and other extension fields).
pub(super) fn mailbox_of(value: &HeaderValue<'_>) -> Option<Mailbox> {
    match value {
        HeaderValue::Address(a) => a.iter().find_map(mailbox_of_addr),
        HeaderValue::Text(t) => extract_mailbox(t),
        HeaderValue::TextList(l) => l.iter().find_map(|t| extract_mailbox(t)),
        _ => None,
    }
}

pub(super) fn mailbox_of_addr(addr: &Addr<'_>) -> Option<Mailbox> {
    let raw = addr.address.as_deref()?;
    let email = normalize_address(raw)?;
    let name = addr.name.as_deref().and_then(clean_name);
    Some(Mailbox { email, name })
}

pub(super) fn display_name_of(value: &HeaderValue<'_>) -> Option<String> {
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
pub(super) fn via_name(display: &str) -> Option<String> {
    let lower = display.to_lowercase();
    let at = lower.rfind(" via ")?;
    // `to_lowercase` can change byte lengths outside ASCII; cut the original only when the
    // prefix kept its length.
    let original = display.get(..at).filter(|p| p.to_lowercase().len() == at)?;
    clean_name(original)
}
