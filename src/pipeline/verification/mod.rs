//! Parsed message -> provider confirmation (code, link, address), if it is one. No RFC covers these
//! mails: the formats are the providers' own (Gmail, Google Groups, Microsoft, Yahoo, Zoho,
//! Fastmail, Apple), and `tests/fixtures/verification/` holds one of each, in several languages.
//!
//! Recognition starts from the sender, never from the wording: a customer who writes "I never got
//! my confirmation code" must stay customer mail, so the From address (the envelope sender only
//! when From is missing) must belong to a provider, and on domains where people have mailboxes of
//! their own (gmail.com, outlook.com, zoho.com, the `provider_hint` domain …) it must also be an
//! automated one (`no-reply`, `accounts`, …). Replies and forwards (`Re:`, `Fwd:`, In-Reply-To, in
//! every language of `pipeline::languages`, the table attribution reads) are never confirmations:
//! they quote one. The wording then only decides where the code and link are.
//!
//! This stage does not authenticate: a spoofed `forwarding-noreply@google.com` passes it, so the
//! caller should trust a result only when DMARC passed for the From domain (the auth stage's
//! verdict). For the same reason a link is only returned when its host belongs to the provider (a
//! link elsewhere in a lookalike mail is dropped), and it is never fetched here.
//!
//! Pure and bounded: no I/O, reads at most the limits below of each body, never panics.

//!
//! Files: `providers.rs` (who sent it: domains, automated senders, product words), `codes.rs`
//! (the code next to its keyword), `links.rs` (addresses and links); this file reads the message
//! once and decides.

mod codes;
mod links;
mod providers;

use mail_parser::{Message, PartType};

use crate::pipeline::html;
use crate::pipeline::languages::{subject_kind, Prefix};
use codes::{code_in, fold};
use links::{emails_in, text_links, Url, CONTEXT_DENY, DENY_PLACES, LINK_DENY, LINK_POSITIVE};
use providers::{
    automated_local, gmail_subject_code, is_role_address, named_provider, Provider, FAMILIES,
    GENERIC_PROVIDERS, GROUP_ADDED, GROUP_MEMBERSHIP, VERIFY_WORDS,
};

/// A provider's confirmation mail, as shown to the team that owns the hosted address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    /// `gmail`, `google_groups`, `outlook`, `microsoft365`, `yahoo`, `zoho`, `fastmail`,
    /// `icloud` or `generic`.
    pub provider: String,
    /// The code to type in at the provider, as written (digits, or letters and digits).
    pub code: Option<String>,
    /// The provider's `https` confirmation link (never an unsubscribe, help or cancel link).
    pub link: Option<String>,
    /// The address being confirmed, lower-cased: the mailbox or group that asked to forward here
    /// when the mail names it (Gmail, Groups, Yahoo, Zoho, Fastmail), else the hosted address.
    pub address: Option<String>,
}

/// Past this many bytes of a text body the rest is not read: providers put the code and the link
/// on the first screen, and a huge body is not a confirmation.
const MAX_TEXT_BYTES: usize = 64 * 1024;
/// HTML carries several times its text in markup; past this many bytes the rest is not read.
const MAX_HTML_BYTES: usize = 256 * 1024;
/// Links past this many (in a body) are not considered.
const MAX_LINKS: usize = 200;
/// A confirmation says what it is about within this many lines of each body; words further down
/// (customer posts quoted in a group digest, a footer promoting Microsoft 365) do not count.
const HEAD_LINES: usize = 12;

/// Recognise a provider's confirmation mail. `mail_from` is the envelope sender (used only when
/// the message has no From); `provider_hint` is the domain of the inbox's connected address
/// (`acme.com`, or the address itself), whose automated senders may send a generic code.
pub fn recognise(
    message: &Message<'_>,
    mail_from: &str,
    provider_hint: Option<&str>,
) -> Option<Verification> {
    let subject = message.subject().unwrap_or_default();
    if is_reply(message, subject) {
        return None;
    }
    let sender = sender(message, mail_from)?;
    let hint = provider_hint.and_then(normalise_hint);
    // The sender alone decides whether to read any further: for customer mail, the common case,
    // this is the whole cost.
    let family = FAMILIES
        .iter()
        .find(|(domain, _, _)| under(&sender.domain, domain))
        .filter(|(_, _, any_local)| *any_local || automated_local(&sender.local))
        .map(|(_, family, _)| *family);
    if family.is_none() {
        let hinted = hint.as_deref().is_some_and(|h| under(&sender.domain, h));
        let known = GENERIC_PROVIDERS.iter().any(|d| under(&sender.domain, d));
        let automated = automated_local(&sender.local) || (hinted && auto_submitted(message));
        if !(hinted || known) || !automated {
            return None;
        }
    }
    let mail = Mail::read(message, subject, &sender, mail_from);
    let provider = match family {
        Some(family) => named_provider(family, &sender, &mail),
        None => Provider::Generic,
    };
    let code = match provider {
        Provider::Gmail => gmail_subject_code(subject).or_else(|| mail.code(true)),
        Provider::Generic => mail.code(false),
        _ => mail.code(true),
    };
    let link = mail.link(provider, &sender.domain, hint.as_deref());
    // Some providers put the code only in the confirm link: read it there when the text has none.
    let code = code.or_else(|| link.as_deref().and_then(links::code_in_link));
    let keep = match provider {
        Provider::Gmail => code.is_some() || link.is_some(),
        Provider::GoogleGroups => {
            let membership = mail.mentions(GROUP_MEMBERSHIP);
            (membership && link.is_some()) || mail.mentions(GROUP_ADDED)
        }
        Provider::Generic => code.is_some(),
        _ => code.is_some() || (link.is_some() && mail.subject_mentions(VERIFY_WORDS)),
    };
    if !keep {
        return None;
    }
    let address = mail.address(provider, &sender, hint.as_deref());
    Some(Verification {
        provider: provider.name().to_string(),
        code,
        link,
        address,
    })
}

// --- The message, read once. ---

#[derive(Debug)]
struct Sender {
    local: String,
    domain: String,
}

impl Sender {
    fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// A link found in a body, with the words around it (folded) that say what it is for.
#[derive(Debug)]
struct Link {
    url: String,
    context: String,
}

struct Mail {
    subject: String,
    /// Folded subject, for the word lists.
    subject_folded: String,
    /// Text of the plain body, then of the HTML body, one entry per line (quotes left out).
    bodies: Vec<Vec<String>>,
    /// Folded subject and first `HEAD_LINES` lines of each body, for the word lists.
    head: String,
    links: Vec<Link>,
    /// Addresses the message was sent to, lower-cased: the hosted address.
    recipients: Vec<String>,
    /// Addresses that are not the one being confirmed: sender, envelope sender.
    senders: Vec<String>,
}

impl Mail {
    fn read(message: &Message<'_>, subject: &str, sender: &Sender, mail_from: &str) -> Mail {
        let mut bodies = Vec::new();
        let mut links = Vec::new();
        if let Some(text) = first_part(message, &message.text_body, false) {
            let lines = plain_lines(cut(text, MAX_TEXT_BYTES));
            text_links(&lines, &mut links);
            bodies.push(lines);
        }
        if let Some(html) = first_part(message, &message.html_body, true) {
            let (lines, anchors) = html_lines(cut(html, MAX_HTML_BYTES));
            links.extend(anchors);
            text_links(&lines, &mut links);
            bodies.push(lines);
        }
        links.truncate(MAX_LINKS);
        let mut head = fold(subject);
        for line in bodies.iter().flat_map(|b| b.iter().take(HEAD_LINES)) {
            head.push('\n');
            head.push_str(&fold(line));
        }
        let mut recipients: Vec<String> = Vec::new();
        for list in [message.to(), message.cc()].into_iter().flatten() {
            for addr in list.iter() {
                if let Some(a) = addr.address() {
                    recipients.push(a.trim().to_lowercase());
                }
            }
        }
        for name in ["Delivered-To", "X-Original-To"] {
            if let Some(v) = message.header_raw(name) {
                recipients.extend(emails_in(v));
            }
        }
        let mut senders = vec![sender.address()];
        senders.extend(emails_in(mail_from));
        Mail {
            subject: subject.to_string(),
            subject_folded: fold(subject),
            bodies,
            head,
            links,
            recipients,
            senders,
        }
    }

    fn mentions(&self, words: &[&str]) -> bool {
        words.iter().any(|w| self.head.contains(w))
    }

    fn subject_mentions(&self, words: &[&str]) -> bool {
        words.iter().any(|w| self.subject_folded.contains(w))
    }

    /// The code next to a keyword: in the bodies first, then the subject. `weak` allows "code"
    /// alone as the keyword (named providers only).
    fn code(&self, weak: bool) -> Option<String> {
        let subject = [self.subject.clone()];
        self.bodies
            .iter()
            .map(Vec::as_slice)
            .chain(std::iter::once(&subject[..]))
            .find_map(|lines| code_in(lines, weak))
    }

    fn link(&self, provider: Provider, sender_domain: &str, hint: Option<&str>) -> Option<String> {
        let sender_org = crate::util::org_domain(sender_domain);
        let generic_domains: Vec<&str> = match provider {
            Provider::Generic => [Some(sender_org.as_str()), hint]
                .into_iter()
                .flatten()
                .collect(),
            _ => Vec::new(),
        };
        let domains: &[&str] = match provider {
            Provider::Generic => &generic_domains,
            _ => provider.link_domains(),
        };
        self.links.iter().find_map(|link| {
            let url = Url::parse(&link.url)?;
            if !domains.iter().any(|d| under(&url.host, d)) {
                return None;
            }
            let accepted = if provider == Provider::Gmail {
                // Gmail's confirm link is `/mail/vf-…`; its `/mail/uf-…` twin cancels the request.
                matches!(
                    url.host.as_str(),
                    "mail-settings.google.com" | "mail.google.com" | "isolated.mail.google.com"
                ) && url.path.split('/').any(|s| s.starts_with("vf-"))
            } else {
                // Query values are tokens, where any word may turn up by chance: only the path
                // and the query's keys say what a link does.
                let words = url.words();
                let denied = |s: &str| LINK_DENY.iter().any(|w| s.contains(w));
                let positive = |s: &str| LINK_POSITIVE.iter().any(|w| s.contains(w));
                let place = |s: &str| DENY_PLACES.iter().any(|p| s.starts_with(p));
                let first_segment = url.path.trim_start_matches('/').split('/').next();
                let first_label = url.host.split('.').next();
                !denied(&words)
                    && !denied(&link.context)
                    && !CONTEXT_DENY.iter().any(|w| link.context.contains(w))
                    && !first_segment.is_some_and(place)
                    && !first_label.is_some_and(place)
                    && (positive(&words) || positive(&link.context))
            };
            accepted.then(|| link.url.clone())
        })
    }

    fn address(&self, provider: Provider, sender: &Sender, hint: Option<&str>) -> Option<String> {
        let candidates = || {
            emails_in(&self.subject).into_iter().chain(
                self.bodies
                    .iter()
                    .flatten()
                    .flat_map(|line| emails_in(line)),
            )
        };
        let other = |a: &String| {
            !self.recipients.contains(a) && !self.senders.contains(a) && !is_role_address(a)
        };
        let found = if provider.names_requester() {
            candidates().find(other)
        } else if provider == Provider::Generic {
            hint.and_then(|h| {
                candidates().find(|a| other(a) && a.rsplit('@').next().is_some_and(|d| under(d, h)))
            })
        } else {
            None
        };
        found
            .or_else(|| match provider {
                // The sender is `group+noreply@googlegroups.com`: the group is `group@…`.
                Provider::GoogleGroups => sender
                    .local
                    .split_once('+')
                    .map(|(group, _)| format!("{group}@{}", sender.domain)),
                _ => None,
            })
            .or_else(|| self.recipients.first().cloned())
    }
}

/// The first body part of the wanted kind among `ids` (`html`: HTML, else plain text).
fn first_part<'m>(message: &'m Message<'_>, ids: &[u32], html: bool) -> Option<&'m str> {
    ids.iter()
        .filter_map(|id| message.parts.get(*id as usize))
        .find_map(|part| match (&part.body, html) {
            (PartType::Text(t), false) => Some(t.as_ref()),
            (PartType::Html(h), true) => Some(h.as_ref()),
            _ => None,
        })
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The lines of an HTML body outside quotes, and its links with their text (folded) as context.
fn html_lines(html: &str) -> (Vec<String>, Vec<Link>) {
    let converted = html::to_text(html, html::FOR_VERIFICATION);
    let links = converted
        .links
        .into_iter()
        .map(|a| Link {
            url: a.href,
            context: fold(&a.text),
        })
        .collect();
    (plain_lines(&converted.text), links)
}

fn plain_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('>'))
        .map(|l| clean(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Without the invisible characters that would split a code or a keyword.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !html::invisible(*c)).collect()
}

fn is_reply(message: &Message<'_>, subject: &str) -> bool {
    message.header_raw("In-Reply-To").is_some() || subject_kind(subject) != Prefix::None
}

/// The From address, or the envelope sender when there is none, split and lower-cased.
fn sender(message: &Message<'_>, mail_from: &str) -> Option<Sender> {
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::trim)
        .filter(|a| a.contains('@'));
    let address = from.unwrap_or(mail_from.trim()).to_lowercase();
    let (local, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some(Sender {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

fn normalise_hint(hint: &str) -> Option<String> {
    let domain = hint.rsplit('@').next().unwrap_or(hint);
    let domain = domain.trim().trim_end_matches('.').to_lowercase();
    (domain.contains('.') && !domain.contains(char::is_whitespace)).then_some(domain)
}

fn auto_submitted(message: &Message<'_>) -> bool {
    message
        .header_raw("Auto-Submitted")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"))
}

/// `domain` is `base` or one of its subdomains (never `base.evil.example`).
fn under(domain: &str, base: &str) -> bool {
    domain == base
        || (domain.len() > base.len()
            && domain.ends_with(base)
            && domain.as_bytes()[domain.len() - base.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use links::trim_url;
    use mail_parser::MessageParser;

    fn run(raw: &str, mail_from: &str, hint: Option<&str>) -> Option<Verification> {
        let raw = raw.replace('\n', "\r\n");
        let msg = MessageParser::new().parse(raw.as_bytes()).expect("parses");
        recognise(&msg, mail_from, hint)
    }

    fn lines(text: &str) -> Vec<String> {
        plain_lines(text)
    }

    #[test]
    fn html_text_entities_and_anchors() {
        let (lines, links) = html_lines(
            "<html><head><style>td{}</style><title>x</title></head><body><p>Code&nbsp;de&#32;v&eacute;rification&#xA0;:</p>\
             <td><b>48&#8203;2913</b></td><a href=\"https://x.example/v?a=1&amp;b=2\">Confirmer</a>\
             <blockquote>quoted 999999</blockquote><!-- <p>hidden</p> --><a href='https://x.example/unsub'>Se d&eacute;sabonner</a></body></html>",
        );
        assert_eq!(
            lines,
            [
                "Code de vérification :",
                "482913",
                "Confirmer",
                "Se désabonner"
            ]
        );
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].url, "https://x.example/v?a=1&b=2");
        assert_eq!(links[0].context, "confirmer");
        assert_eq!(code_in(&lines, false).as_deref(), Some("482913"));
    }

    #[test]
    fn addresses_and_urls() {
        assert_eq!(
            emails_in("mailto:Jane.Doe@Example.COM. and ja*****@outlook.com, x@y"),
            ["jane.doe@example.com"]
        );
        assert!(Url::parse("https://google.com@evil.example/mail/vf-1").is_none());
        assert!(Url::parse("http://mail.google.com/mail/vf-1").is_none());
        let u = Url::parse("HTTPS://Mail.Google.com:443/mail/vf-%5BA%5D-b?x=1").expect("url");
        assert_eq!(
            (u.host.as_str(), u.path.as_str()),
            ("mail.google.com", "/mail/vf-%5BA%5D-b")
        );
        assert_eq!(
            trim_url("https://a.example/x_(y)."),
            "https://a.example/x_(y)"
        );
        assert_eq!(trim_url("https://a.example/x)."), "https://a.example/x");
        assert!(under("mail.google.com", "google.com"));
        assert!(!under("google.com.evil.example", "google.com"));
        assert!(!under("notgoogle.com", "google.com"));
        assert_eq!(crate::util::org_domain("mail.acme.co.uk"), "acme.co.uk");
        assert_eq!(crate::util::org_domain("a.b.acme.com"), "acme.com");
        assert_eq!(crate::util::org_domain("com"), "com");
    }

    #[test]
    fn gmail_confirmation_minimal() {
        let v = run(
            "From: Gmail Team <forwarding-noreply@google.com>\nTo: support@acme.inbound.example\nSubject: (#123456789) Gmail Forwarding Confirmation - Receive Mail from jane@acme.com\n\njane@acme.com has requested to automatically forward mail to your email address support@acme.inbound.example.\nConfirmation code: 123456789\n\nhttps://mail-settings.google.com/mail/vf-%5BANGjdJ_x%5D-abc\n\nTo cancel: https://mail-settings.google.com/mail/uf-%5BANGjdJ_y%5D-abc\n",
            "forwarding-noreply@google.com",
            None,
        )
        .expect("recognised");
        assert_eq!(v.provider, "gmail");
        assert_eq!(v.code.as_deref(), Some("123456789"));
        assert_eq!(
            v.link.as_deref(),
            Some("https://mail-settings.google.com/mail/vf-%5BANGjdJ_x%5D-abc")
        );
        assert_eq!(v.address.as_deref(), Some("jane@acme.com"));
    }

    #[test]
    fn requester_from_the_body_when_the_subject_names_nobody() {
        let v = run(
            "From: forwarding-noreply@google.com\nDelivered-To: support@acme.inbound.example\nSubject: =?utf-8?q?Gmail_=E8=BD=AC=E5=8F=91=E7=A1=AE=E8=AE=A4?=\n\nsupport@acme.inbound.example: Li.Wei@Example.CN\n\u{786e}\u{8ba4}\u{7801}\u{ff1a}246813579\n",
            "",
            None,
        )
        .expect("recognised");
        assert_eq!(v.code.as_deref(), Some("246813579"));
        assert_eq!(v.address.as_deref(), Some("li.wei@example.cn"));
        assert_eq!(v.link, None);
    }

    #[test]
    fn sender_decides_not_wording() {
        let customer = "From: Jane <jane@gmail.com>\nTo: support@acme.inbound.example\nSubject: confirmation code\n\nMy confirmation code: 123456 does not work\n";
        assert_eq!(run(customer, "jane@gmail.com", Some("acme.com")), None);
        let reply = "From: Gmail Team <forwarding-noreply@google.com>\nSubject: Re: (#123456789) Gmail Forwarding Confirmation\n\nConfirmation code: 123456789\n";
        assert_eq!(run(reply, "", None), None);
        let colleague =
            "From: Alice <alice@acme.com>\nSubject: vendor portal\n\nVerification code: 551234\n";
        assert_eq!(run(colleague, "alice@acme.com", Some("acme.com")), None);
        let automated = "From: <no-reply@acme.com>\nTo: support@acme.inbound.example\nSubject: Your code\n\nVerification code: 551234\n";
        let v = run(automated, "bounce@acme.com", Some("support@ACME.com")).expect("generic");
        assert_eq!(
            (v.provider.as_str(), v.code.as_deref(), v.address.as_deref()),
            (
                "generic",
                Some("551234"),
                Some("support@acme.inbound.example")
            )
        );
        // No From at all: the envelope sender stands in.
        let v = run(
            "Subject: (#555444333) Gmail Forwarding Confirmation\n\nsee subject\n",
            "forwarding-noreply@google.com",
            None,
        )
        .expect("envelope sender");
        assert_eq!(v.code.as_deref(), Some("555444333"));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for text in [
            "",
            "&",
            "&#xFFFFFFFF;",
            "&#;",
            "<",
            "<a href=",
            "<a href='",
            "<!--",
            "<style>",
            "é@é",
            "@",
            "a@",
            "https://",
            "code:",
            "(#",
            "(#12345",
        ] {
            let _ = html_lines(text);
            let _ = code_in(&lines(text), true);
            let _ = emails_in(text);
            let _ = gmail_subject_code(text);
            let mut links = Vec::new();
            text_links(&lines(text), &mut links);
            let _ = Url::parse(text);
            let _ = crate::util::org_domain(text);
        }
    }
}
