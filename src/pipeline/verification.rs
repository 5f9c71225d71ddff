//! Parsed message -> provider confirmation (code, link, address), if it is one. No RFC covers these
//! mails: the formats are the providers' own (Gmail, Google Groups, Microsoft, Yahoo, Zoho,
//! Fastmail, Apple), and `tests/fixtures/verification/` holds one of each, in several languages.
//!
//! Recognition starts from the sender, never from the wording: a customer who writes "I never got
//! my confirmation code" must stay customer mail, so the From address (the envelope sender only
//! when From is missing) must belong to a provider, and on domains where people have mailboxes of
//! their own (gmail.com, outlook.com, zoho.com, the `provider_hint` domain …) it must also be an
//! automated one (`no-reply`, `accounts`, …). Replies and forwards (`Re:`, `Fwd:`, In-Reply-To) are
//! never confirmations: they quote one. The wording then only decides where the code and link are.
//!
//! This stage does not authenticate: a spoofed `forwarding-noreply@google.com` passes it, so the
//! caller should trust a result only when DMARC passed for the From domain (the auth stage's
//! verdict). For the same reason a link is only returned when its host belongs to the provider (a
//! link elsewhere in a lookalike mail is dropped), and it is never fetched here.
//!
//! Pure and bounded: no I/O, reads at most the limits below of each body, never panics.

use mail_parser::{Message, PartType};

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
/// Lines before a code on its own line that may hold the keyword ("Your code is below:").
const KEYWORD_LOOKBACK_LINES: usize = 3;
/// A confirmation says what it is about within this many lines of each body; words further down
/// (customer posts quoted in a group digest, a footer promoting Microsoft 365) do not count.
const HEAD_LINES: usize = 12;
/// Words between a keyword and the "is" or ":" that introduces its code ("code for email
/// forwarding is 620481"); past them, or past the end of the sentence, there is no code.
const QUALIFIER_WORDS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Gmail,
    GoogleGroups,
    Outlook,
    Microsoft365,
    Yahoo,
    Zoho,
    Fastmail,
    Icloud,
    Generic,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Gmail => "gmail",
            Provider::GoogleGroups => "google_groups",
            Provider::Outlook => "outlook",
            Provider::Microsoft365 => "microsoft365",
            Provider::Yahoo => "yahoo",
            Provider::Zoho => "zoho",
            Provider::Fastmail => "fastmail",
            Provider::Icloud => "icloud",
            Provider::Generic => "generic",
        }
    }

    /// Domains the provider's confirmation links point to.
    fn link_domains(self) -> &'static [&'static str] {
        match self {
            Provider::Gmail => &["google.com"],
            Provider::GoogleGroups => &["groups.google.com"],
            Provider::Outlook | Provider::Microsoft365 => &[
                "live.com",
                "microsoft.com",
                "microsoftonline.com",
                "office.com",
                "office365.com",
                "outlook.com",
                "microsoft365.com",
            ],
            Provider::Yahoo => &["yahoo.com", "yahoo-inc.com"],
            Provider::Zoho => ZOHO_DOMAINS,
            Provider::Fastmail => &["fastmail.com", "fastmail.fm"],
            Provider::Icloud => &["apple.com", "icloud.com"],
            Provider::Generic => &[],
        }
    }

    /// Whose address the mail confirms: the requester it names, or the recipient itself.
    fn names_requester(self) -> bool {
        matches!(
            self,
            Provider::Gmail
                | Provider::GoogleGroups
                | Provider::Yahoo
                | Provider::Zoho
                | Provider::Fastmail
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Google,
    GoogleGroups,
    Microsoft,
    Yahoo,
    Zoho,
    Fastmail,
    Apple,
}

const ZOHO_DOMAINS: &[&str] = &[
    "zoho.com",
    "zoho.eu",
    "zoho.in",
    "zoho.com.au",
    "zoho.jp",
    "zoho.com.cn",
    "zohomail.com",
    "zohomail.eu",
    "zohomail.in",
    "zohoaccounts.com",
    "zohocorp.com",
];

/// Sender domains of the named providers, most specific first. `true`: any local part (nobody
/// has a personal mailbox there); `false`: only an automated one, since people write from it.
const FAMILIES: &[(&str, Family, bool)] = &[
    ("googlegroups.com", Family::GoogleGroups, false),
    ("google.com", Family::Google, false),
    ("accountprotection.microsoft.com", Family::Microsoft, true),
    ("microsoftonline.com", Family::Microsoft, true),
    ("microsoft.com", Family::Microsoft, false),
    ("microsoft365.com", Family::Microsoft, false),
    ("office365.com", Family::Microsoft, false),
    ("office.com", Family::Microsoft, false),
    ("outlook.com", Family::Microsoft, false),
    ("live.com", Family::Microsoft, false),
    ("hotmail.com", Family::Microsoft, false),
    ("yahoo-inc.com", Family::Yahoo, false),
    ("yahoo.com", Family::Yahoo, false),
    ("ymail.com", Family::Yahoo, false),
    ("rocketmail.com", Family::Yahoo, false),
    ("yahoo.co.uk", Family::Yahoo, false),
    ("yahoo.fr", Family::Yahoo, false),
    ("yahoo.de", Family::Yahoo, false),
    ("yahoo.es", Family::Yahoo, false),
    ("yahoo.it", Family::Yahoo, false),
    ("yahoo.ca", Family::Yahoo, false),
    ("yahoo.com.br", Family::Yahoo, false),
    ("yahoo.com.mx", Family::Yahoo, false),
    ("yahoo.co.in", Family::Yahoo, false),
    ("yahoo.com.au", Family::Yahoo, false),
    ("zohoaccounts.com", Family::Zoho, true),
    ("zohocorp.com", Family::Zoho, false),
    ("zoho.com", Family::Zoho, false),
    ("zoho.eu", Family::Zoho, false),
    ("zoho.in", Family::Zoho, false),
    ("zoho.com.au", Family::Zoho, false),
    ("zoho.jp", Family::Zoho, false),
    ("zoho.com.cn", Family::Zoho, false),
    ("zohomail.com", Family::Zoho, false),
    ("zohomail.eu", Family::Zoho, false),
    ("zohomail.in", Family::Zoho, false),
    ("messagingengine.com", Family::Fastmail, true),
    ("fastmail.com", Family::Fastmail, false),
    ("fastmail.fm", Family::Fastmail, false),
    ("apple.com", Family::Apple, false),
    ("icloud.com", Family::Apple, false),
    ("me.com", Family::Apple, false),
    ("mac.com", Family::Apple, false),
];

/// Other mailbox providers whose automated senders may send a code (generic fallback).
const GENERIC_PROVIDERS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "aol.com",
    "aim.com",
    "proton.me",
    "protonmail.com",
    "protonmail.ch",
    "pm.me",
    "gmx.net",
    "gmx.de",
    "gmx.com",
    "gmx.at",
    "gmx.ch",
    "web.de",
    "mail.com",
    "t-online.de",
    "freenet.de",
    "posteo.de",
    "mailbox.org",
    "tutanota.com",
    "tutanota.de",
    "tuta.io",
    "hey.com",
    "yandex.ru",
    "yandex.com",
    "mail.ru",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "sfr.fr",
    "libero.it",
    "virgilio.it",
    "seznam.cz",
    "wp.pl",
    "o2.pl",
    "interia.pl",
    "naver.com",
    "daum.net",
    "qq.com",
    "163.com",
    "126.com",
    "rediffmail.com",
    "ionos.com",
    "ionos.de",
    "one.com",
    "ovh.net",
    "ovh.com",
    "secureserver.net",
    "privateemail.com",
    "emailsrvr.com",
    "migadu.com",
    "purelymail.com",
    "titan.email",
];

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

/// Which product of a provider family sent the mail.
fn named_provider(family: Family, sender: &Sender, mail: &Mail) -> Provider {
    match family {
        Family::Google if sender.local.starts_with("groups-noreply") => Provider::GoogleGroups,
        Family::Google => Provider::Gmail,
        Family::GoogleGroups => Provider::GoogleGroups,
        Family::Microsoft => {
            if under(&sender.domain, "microsoftonline.com") || mail.mentions(MICROSOFT_365_WORDS) {
                Provider::Microsoft365
            } else {
                Provider::Outlook
            }
        }
        Family::Yahoo => Provider::Yahoo,
        Family::Zoho => Provider::Zoho,
        Family::Fastmail => Provider::Fastmail,
        Family::Apple => Provider::Icloud,
    }
}

// --- Word lists. All folded: lower case, Latin accents removed (see `fold`). ---

/// Phrases that put a code right after (or before) them. Single words of 7+ letters also match
/// as the tail of a compound ("Gmail-Weiterleitungsbestätigungscode").
const STRONG_KEYWORDS: &[&[&str]] = &[
    &["confirmation", "code"],
    &["verification", "code"],
    &["security", "code"],
    &["one-time", "code"],
    &["one", "time", "code"],
    &["single-use", "code"],
    &["code", "de", "confirmation"],
    &["code", "de", "verification"],
    &["code", "de", "securite"],
    &["code", "de", "validation"],
    &["bestatigungscode"],
    &["verifizierungscode"],
    &["verifikationscode"],
    &["sicherheitscode"],
    &["einmalcode"],
    &["codigo", "de", "confirmacion"],
    &["codigo", "de", "verificacion"],
    &["codigo", "de", "seguridad"],
    &["codigo", "de", "validacion"],
    &["codigo", "de", "confirmacao"],
    &["codigo", "de", "verificacao"],
    &["codigo", "de", "seguranca"],
    &["codice", "di", "conferma"],
    &["codice", "di", "verifica"],
    &["codice", "di", "sicurezza"],
    &["codice", "di", "convalida"],
    &["bevestigingscode"],
    &["verificatiecode"],
    &["beveiligingscode"],
    &["bekraftelsekod"],
    &["verifieringskod"],
    &["sakerhetskod"],
    &["bekræftelseskode"],
    &["sikkerhedskode"],
    &["bekreftelseskode"],
    &["sikkerhetskode"],
    &["vahvistuskoodi"],
    &["kod", "potwierdzajacy"],
    &["kod", "potwierdzenia"],
    &["kod", "weryfikacyjny"],
    &["kod", "bezpieczenstwa"],
    &["potvrzovaci", "kod"],
    &["overovaci", "kod"],
    &["onay", "kodu"],
    &["dogrulama", "kodu"],
    &["код", "подтверждения"],
    &["проверочныи", "код"],
    &["код", "безопасности"],
    &["確認コード"],
    &["認証コード"],
    &["セキュリティコード"],
    &["验证码"],
    &["驗證碼"],
    &["确认码"],
    &["確認碼"],
    &["확인", "코드"],
    &["인증", "코드"],
    &["보안", "코드"],
];

/// "code" alone: only from a named provider, only for a digits-only code, and not after one of
/// `WEAK_DENY` ("promo code", "error code").
const WEAK_KEYWORDS: &[&str] = &[
    "code",
    "codigo",
    "codice",
    "kod",
    "kode",
    "koodi",
    "код",
    "コード",
];

const WEAK_DENY: &[&str] = &[
    "promo",
    "promotional",
    "promotion",
    "discount",
    "coupon",
    "gift",
    "voucher",
    "zip",
    "postal",
    "post",
    "area",
    "country",
    "dial",
    "source",
    "error",
    "status",
    "tracking",
    "qr",
    "bar",
    "product",
    "tax",
    "sort",
    "swift",
];

/// Words allowed between a keyword and its code ("code is: 123456", "code de confirmation : 12").
const CONNECTORS: &[&str] = &[
    ":",
    "is",
    "are",
    "ist",
    "lautet",
    "est",
    "es",
    "e",
    "sao",
    "sono",
    "er",
    "ar",
    "jest",
    "je",
    "-",
    "–",
    "—",
    "=",
    "#",
    "→",
    "»",
    "below",
    "here",
    "follows",
    "ci-dessous",
    "suivant",
    "unten",
    "folgender",
    "abajo",
    "siguiente",
    "seguinte",
    "seguito",
    "hieronder",
    "nedan",
    "nedenfor",
    "ponizej",
    "は",
];

/// Words between a code and a keyword after it ("123456 is your verification code").
const BACK_CONNECTORS: &[&str] = &[
    "is", "as", "ist", "als", "est", "comme", "es", "como", "e", "er", "ar", "jest", "-", "–", ":",
];

/// What a Google Groups confirmation talks about.
const GROUP_MEMBERSHIP: &[&str] = &[
    "join request",
    "request to join",
    "confirm your subscription",
    "confirm your request",
    "confirm your membership",
    "invitation to join",
    "invited you to join",
    "invited to join",
    "beitrittsanfrage",
    "mitgliedschaft",
    "demande d'adhesion",
    "rejoindre",
    "solicitud para unirte",
    "unirte",
    "unirse",
    "richiesta di iscrizione",
    "iscrizione",
    "participar",
    "lidmaatschap",
];

/// A Google Groups notice that the address was added (nothing to confirm, but not customer mail).
const GROUP_ADDED: &[&str] = &[
    "you've been added to",
    "you have been added to",
    "added you to",
    "wurden zur gruppe",
    "zur gruppe hinzugefugt",
    "a ete ajoute",
    "avez ete ajoute",
    "te han anadido",
    "has sido anadido",
    "e stato aggiunto",
    "sei stato aggiunto",
    "foi adicionado",
    "toegevoegd aan",
];

const MICROSOFT_365_WORDS: &[&str] = &[
    "microsoft 365",
    "office 365",
    "your organization",
    "your organisation",
    "admin center",
    "work or school",
    "azure",
    "entra",
];

/// A subject that asks to verify or confirm something (for a confirmation without a code).
const VERIFY_WORDS: &[&str] = &[
    "verif",
    "confirm",
    "bestatig",
    "uberprufen",
    "bevestig",
    "conferm",
    "valida",
    "forward",
    "weiterleit",
    "transfert",
    "reenvio",
    "inoltro",
    "encaminhamento",
    "doorsturen",
];

/// In a link's path or its anchor text: what a confirmation link says.
const LINK_POSITIVE: &[&str] = &[
    "verif",
    "confirm",
    "validat",
    "valider",
    "activat",
    "approve",
    "accept",
    "join",
    "invit",
    "subscribe",
    "bestatig",
    "bevestig",
    "conferm",
    "potwierdz",
];

/// In a link's path, query keys or anchor text: a link that is not the confirmation.
const LINK_DENY: &[&str] = &[
    "unsub",
    "optout",
    "opt-out",
    "opt_out",
    "privacy",
    "terms",
    "legal",
    "policy",
    "abuse",
    "report",
    "cancel",
    "deny",
    "reject",
    "decline",
    "remove",
    "not-me",
    "notme",
    "not you",
    "not-you",
    "preferences",
    "manage",
    "leave",
    "abmelden",
    "desabonner",
    "desinscri",
    "annul",
    "stornieren",
    "ablehnen",
    "datenschutz",
    "impressum",
    "cancelar",
];

/// In the words around a link only ("Need help? https://…"): a path may well say "support"
/// (a group called acme-support).
const CONTEXT_DENY: &[&str] = &[
    "help", "support", "hilfe", "aide", "ayuda", "aiuto", "ajuda", "baja",
];

/// A host's first label or a path's first segment that is a help or policy site.
const DENY_PLACES: &[&str] = &["help", "support", "hc", "privacy", "legal", "kb"];

/// Reply and forward prefixes, folded, in the languages mail clients write them.
const REPLY_PREFIXES: &[&str] = &[
    "re:", "re :", "re[", "aw:", "wg:", "fw:", "fwd:", "tr:", "rv:", "r:", "sv:", "vs:", "antw:",
    "odp:", "enc:", "res:", "ynt:", "doorst:", "vl:", "回复:", "回覆:", "转发:", "轉寄:", "返信:",
    "転送:",
];

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
            let stripped = strip_html(cut(html, MAX_HTML_BYTES));
            links.extend(stripped.links);
            text_links(&stripped.lines, &mut links);
            bodies.push(stripped.lines);
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

fn plain_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('>'))
        .map(|l| clean(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Without the invisible characters that would split a code or a keyword.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !invisible(*c)).collect()
}

fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

fn is_reply(message: &Message<'_>, subject: &str) -> bool {
    if message.header_raw("In-Reply-To").is_some() {
        return true;
    }
    let subject = fold(subject.trim());
    REPLY_PREFIXES.iter().any(|p| subject.starts_with(p))
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

/// A local part that a program sends from, not a person.
fn automated_local(local: &str) -> bool {
    let local = local.to_ascii_lowercase();
    const CONTAINS: &[&str] = &[
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
        "ne-pas-repondre",
        "nepasrepondre",
        "mailer-daemon",
    ];
    const EXACT: &[&str] = &[
        "postmaster",
        "verify",
        "verification",
        "security",
        "account",
        "accounts",
        "account-security",
        "notification",
        "notifications",
        "notify",
        "alerts",
        "system",
        "mailer",
        "confirm",
        "confirmation",
        "forwarding",
        "msonlineservicesteam",
        "appleid",
        "accounts-noreply",
    ];
    let base = local.split('+').next().unwrap_or(&local);
    CONTAINS.iter().any(|w| local.contains(w)) || EXACT.contains(&base)
}

/// A provider's own role address (support, abuse …) or a Groups command address: never the one
/// being confirmed.
fn is_role_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return true;
    };
    if automated_local(local) {
        return true;
    }
    if let Some((_, command)) = local.split_once('+') {
        const COMMANDS: &[&str] = &[
            "unsubscribe",
            "subscribe",
            "owner",
            "help",
            "manage",
            "abuse",
            "confirm",
            "join",
            "leave",
        ];
        if COMMANDS.iter().any(|c| command.starts_with(c)) {
            return true;
        }
    }
    const ROLES: &[&str] = &[
        "support",
        "help",
        "helpdesk",
        "abuse",
        "privacy",
        "legal",
        "feedback",
        "webmaster",
        "billing",
        "sales",
        "info",
        "contact",
        "hello",
        "team",
    ];
    // A group may well be called support@googlegroups.com; support@fastmail.com is Fastmail's.
    let provider_domain = !under(domain, "googlegroups.com")
        && (FAMILIES.iter().any(|(d, _, _)| under(domain, d))
            || GENERIC_PROVIDERS.iter().any(|d| under(domain, d)));
    provider_domain && ROLES.contains(&local)
}

/// Gmail puts the code in the subject: `(#123456789) Gmail Forwarding Confirmation - …`.
fn gmail_subject_code(subject: &str) -> Option<String> {
    let start = subject.find("(#")? + 2;
    let rest = subject.get(start..)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let closed = rest.get(digits.len()..).is_some_and(|r| r.starts_with(')'));
    (closed && (4..=12).contains(&digits.len())).then_some(digits)
}

// --- Words and codes. ---

/// Lower case, with the accents of Latin letters removed, one char for one char (so a keyword
/// list need not spell "vérification" and "verification" both).
fn fold(s: &str) -> String {
    s.chars()
        .filter(|c| !invisible(*c))
        .map(|c| {
            let c = c.to_lowercase().next().unwrap_or(c);
            match c {
                'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' | 'ą' | 'ā' => 'a',
                'é' | 'è' | 'ê' | 'ë' | 'ę' | 'ě' | 'ē' => 'e',
                'í' | 'ì' | 'î' | 'ï' | 'ı' | 'ī' => 'i',
                'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'ő' | 'ō' => 'o',
                'ú' | 'ù' | 'û' | 'ü' | 'ů' | 'ű' | 'ū' => 'u',
                'ç' | 'ć' | 'č' => 'c',
                'ñ' | 'ń' | 'ň' => 'n',
                'ś' | 'š' | 'ş' => 's',
                'ź' | 'ż' | 'ž' => 'z',
                'ł' => 'l',
                'ř' => 'r',
                'ý' => 'y',
                'ğ' => 'g',
                'ď' => 'd',
                'ť' => 't',
                'й' => 'и',
                '’' | '‘' | 'ʼ' => '\'',
                '\u{00A0}' | '\u{202F}' | '\u{2007}' => ' ',
                c => c,
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Tok {
    /// As written, without surrounding punctuation.
    text: String,
    folded: String,
    /// Punctuation that ends a sentence or clause followed it ("code." / "code,").
    stop: bool,
}

/// Split a line into words; `:` is a word of its own ("code:123456", "code : 123456").
fn tokenize(line: &str) -> Vec<Tok> {
    let mut raw: Vec<String> = Vec::new();
    let mut current = String::new();
    for c in line.chars() {
        if invisible(c) {
            continue;
        }
        if c.is_whitespace() || c == ':' || c == '：' {
            if !current.is_empty() {
                raw.push(std::mem::take(&mut current));
            }
            if c != ':' && c != '：' {
                continue;
            }
            raw.push(":".to_string());
            continue;
        }
        current.push(c);
    }
    if !current.is_empty() {
        raw.push(current);
    }
    raw.into_iter()
        .map(|word| {
            const LEAD: &[char] = &[
                '"', '\'', '(', '[', '{', '<', '*', '_', '«', '„', '“', '‘', '#', '¡', '¿',
            ];
            const TRAIL: &[char] = &[
                '"', '\'', ')', ']', '}', '>', '*', '_', '»', '“', '”', '’', '.', ',', ';', '!',
                '?', '。', '、', '，',
            ];
            let trimmed = word.trim_start_matches(LEAD).trim_end_matches(TRAIL);
            // `trim_end_matches` returns a prefix, so its length is a boundary of `word`.
            let tail = &word[word.trim_end_matches(TRAIL).len()..];
            let stop = tail.contains(['.', ',', ';', '!', '?', '。', '、', '，']);
            let text = if trimmed.is_empty() {
                word.clone()
            } else {
                trimmed.to_string()
            };
            Tok {
                folded: fold(&text),
                text,
                stop,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    Weak,
    Strong,
}

/// Keyword occurrences in a line: (first token, one past the last, strength).
fn keywords(toks: &[Tok], weak: bool) -> Vec<(usize, usize, Strength)> {
    let mut hits = Vec::new();
    for i in 0..toks.len() {
        for kw in STRONG_KEYWORDS {
            let n = kw.len();
            let Some(window) = toks.get(i..i + n) else {
                continue;
            };
            let matches = window.iter().zip(kw.iter()).enumerate().all(|(k, (t, w))| {
                t.folded == *w || (k == 0 && w.chars().count() >= 7 && t.folded.ends_with(w))
            });
            if matches && window[..n - 1].iter().all(|t| !t.stop) {
                hits.push((i, i + n, Strength::Strong));
            }
        }
        if weak && WEAK_KEYWORDS.contains(&toks[i].folded.as_str()) {
            let denied = i > 0 && WEAK_DENY.contains(&toks[i - 1].folded.as_str());
            if !denied {
                hits.push((i, i + 1, Strength::Weak));
            }
        }
    }
    hits
}

/// A code as written, if `text` looks like one: 4-10 digits (`min_digits` up), or (not
/// `digits_only`) 5-12 upper-case letters and digits with at least one digit, or 2-3 groups of
/// 3-5 such characters joined by `-`. Full-width digits are read as ASCII ones.
fn code_shape(text: &str, digits_only: bool, min_digits: usize) -> Option<String> {
    let s: String = text
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_digit(c as u32 - '０' as u32, 10).unwrap_or(c),
            c => c,
        })
        .collect();
    let b = s.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return (min_digits..=10).contains(&b.len()).then_some(s);
    }
    let code_chars = |g: &str| {
        g.bytes()
            .all(|c| c.is_ascii_digit() || (!digits_only && c.is_ascii_uppercase()))
    };
    let has_digit = b.iter().any(u8::is_ascii_digit);
    if !digits_only && (5..=12).contains(&b.len()) && code_chars(&s) && has_digit {
        return Some(s);
    }
    let groups: Vec<&str> = s.split('-').collect();
    let grouped = (2..=3).contains(&groups.len())
        && groups
            .iter()
            .all(|g| (3..=5).contains(&g.len()) && code_chars(g));
    (grouped && has_digit).then_some(s)
}

/// The code in a body (one entry per non-empty line) or subject, next to a keyword.
fn code_in(lines: &[String], weak: bool) -> Option<String> {
    let toks: Vec<Vec<Tok>> = lines.iter().map(|l| tokenize(l)).collect();
    let hits: Vec<Vec<(usize, usize, Strength)>> = toks.iter().map(|t| keywords(t, weak)).collect();
    for (i, line) in toks.iter().enumerate() {
        for &(start, end, strength) in &hits[i] {
            let digits_only = strength == Strength::Weak;
            // "code: 123456", "code is 123456", "send the confirmation code 123456789 to …".
            let mut j = end;
            let mut ended = line[end - 1].stop;
            while !ended && j < line.len() && j < end + 4 && is_connector(&line[j]) {
                ended = line[j].stop;
                j += 1;
            }
            if !ended {
                match line.get(j) {
                    Some(t) => {
                        if let Some(code) = code_shape(&t.text, digits_only, 4) {
                            return Some(code);
                        }
                        if let Some(code) = assigned_code(&line[j..], digits_only) {
                            return Some(code);
                        }
                    }
                    // "Security code:" then the code on the next line (or table cell).
                    None => {
                        if let Some(next) = toks.get(i + 1).filter(|n| n.len() <= 2) {
                            if let Some(code) = next
                                .first()
                                .and_then(|t| code_shape(&t.text, digits_only, 4))
                            {
                                return Some(code);
                            }
                        }
                    }
                }
            }
            // "123456 is your verification code", "Use 1234567 as Microsoft account security code".
            for k in (start.saturating_sub(6)..start).rev() {
                let followed = line
                    .get(k + 1)
                    .is_some_and(|t| BACK_CONNECTORS.contains(&t.folded.as_str()));
                if followed && k + 1 < start {
                    if let Some(code) = code_shape(&line[k].text, digits_only, 4) {
                        return Some(code);
                    }
                }
                if line[k].stop {
                    break;
                }
            }
        }
        // A code alone on its line, under a line with a keyword ("enter the code below:").
        if let [only] = line.as_slice() {
            let best = hits[i.saturating_sub(KEYWORD_LOOKBACK_LINES)..i]
                .iter()
                .flatten()
                .map(|h| h.2)
                .max();
            if let Some(strength) = best {
                if let Some(code) = code_shape(&only.text, strength == Strength::Weak, 6) {
                    return Some(code);
                }
            }
        }
    }
    None
}

/// "(code) for email forwarding is 620481", "(code) for a@b.example: 1234": a code introduced by
/// "is" or ":" within a few words of its keyword, in the same sentence.
fn assigned_code(toks: &[Tok], digits_only: bool) -> Option<String> {
    const ASSIGN: &[&str] = &[
        ":", "is", "ist", "lautet", "est", "es", "e", "er", "ar", "jest", "=",
    ];
    for (k, t) in toks.iter().enumerate().take(QUALIFIER_WORDS) {
        if ASSIGN.contains(&t.folded.as_str()) {
            return toks
                .get(k + 1)
                .and_then(|c| code_shape(&c.text, digits_only, 4));
        }
        if t.stop {
            return None;
        }
    }
    None
}

fn is_connector(t: &Tok) -> bool {
    CONNECTORS.contains(&t.folded.as_str())
}

// --- Addresses and links. ---

/// The e-mail addresses written in `text`, lower-cased. A masked one (`ja*****@outlook.com`) is
/// left out: it names nobody.
fn emails_in(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let local_char = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let domain_char = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    let mut out: Vec<String> = Vec::new();
    for (at, _) in text.match_indices('@') {
        let mut start = at;
        while start > 0 && local_char(b[start - 1]) {
            start -= 1;
        }
        if start > 0 && b[start - 1] == b'*' {
            continue;
        }
        let mut end = at + 1;
        while end < b.len() && domain_char(b[end]) {
            end += 1;
        }
        let local = text[start..at].trim_start_matches('.');
        let domain = text[at + 1..end].trim_end_matches(['.', '-']);
        let tld_ok = domain
            .rsplit_once('.')
            .is_some_and(|(_, tld)| tld.len() >= 2 && tld.bytes().all(|c| c.is_ascii_alphabetic()));
        if local.is_empty() || !tld_ok {
            continue;
        }
        let address = format!("{local}@{domain}").to_lowercase();
        if !out.contains(&address) {
            out.push(address);
        }
    }
    out
}

/// The parts of an `https` URL this stage looks at.
struct Url {
    host: String,
    path: String,
    /// After `?`, without the fragment.
    query: String,
}

impl Url {
    /// Only `https`, and never one with user information (`https://google.com@evil.example/`).
    fn parse(url: &str) -> Option<Url> {
        let scheme = url.get(..8)?;
        if !scheme.eq_ignore_ascii_case("https://") {
            return None;
        }
        let after = url.get(8..)?;
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let authority = &after[..end];
        if authority.contains('@') || authority.contains('\\') {
            return None;
        }
        let host = authority.split(':').next().unwrap_or("").to_lowercase();
        let host = host.trim_end_matches('.').to_string();
        if host.is_empty()
            || !host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        {
            return None;
        }
        let rest = &after[end..];
        let path = rest.split(['?', '#']).next().unwrap_or("").to_string();
        let query = rest
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(""))
            .unwrap_or("")
            .to_string();
        Some(Url { host, path, query })
    }

    /// The path and the query's keys, lower-cased: what the link says it does.
    fn words(&self) -> String {
        let mut words = self.path.to_lowercase();
        for pair in self.query.split('&') {
            words.push(' ');
            words.push_str(&pair.split('=').next().unwrap_or("").to_lowercase());
        }
        words
    }
}

/// The `https://` links written in text lines, with the words before them as context.
fn text_links(lines: &[String], out: &mut Vec<Link>) {
    for (i, line) in lines.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        for (pos, _) in lower.match_indices("https://") {
            if out.len() >= MAX_LINKS {
                return;
            }
            let Some(tail) = line.get(pos..) else {
                continue;
            };
            let end = tail
                .find(|c: char| c.is_whitespace() || "<>\"'`".contains(c))
                .unwrap_or(tail.len());
            let url = trim_url(&tail[..end]);
            let before = line.get(..pos).unwrap_or("").trim();
            let context = if before.is_empty() {
                i.checked_sub(1)
                    .and_then(|p| lines.get(p))
                    .map(|l| fold(l))
                    .unwrap_or_default()
            } else {
                fold(before)
            };
            out.push(Link {
                url: url.to_string(),
                context,
            });
        }
    }
}

/// Without the sentence punctuation that follows a URL in text, and an unbalanced `)`.
fn trim_url(url: &str) -> &str {
    let mut url = url;
    loop {
        let trimmed = url.trim_end_matches(['.', ',', ';', ':', '!', '?']);
        let trimmed = if trimmed.ends_with(')')
            && trimmed.matches('(').count() < trimmed.matches(')').count()
        {
            &trimmed[..trimmed.len() - 1]
        } else {
            trimmed
        };
        if trimmed.len() == url.len() {
            return url;
        }
        url = trimmed;
    }
}

// --- HTML. ---

struct Stripped {
    lines: Vec<String>,
    links: Vec<Link>,
}

/// Text of an HTML body, one entry per block (paragraph, cell, `<br>`), entities decoded, head,
/// styles, scripts, comments and quoted replies (`<blockquote>`) left out; and the `href` of each
/// anchor with its text as context.
fn strip_html(html: &str) -> Stripped {
    const BLOCKS: &[&str] = &[
        "br",
        "p",
        "div",
        "tr",
        "td",
        "th",
        "li",
        "ul",
        "ol",
        "table",
        "tbody",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "center",
        "section",
        "article",
        "header",
        "footer",
        "pre",
        "dd",
        "dt",
        "title",
        "blockquote",
        "body",
    ];
    const SKIPPED: &[&str] = &["head", "style", "script", "template", "noscript"];
    let mut out = Stripped {
        lines: Vec::new(),
        links: Vec::new(),
    };
    let mut line = String::new();
    let mut anchor: Option<(String, String)> = None;
    let mut quoted = 0usize;
    let mut rest = html;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |e| &after[e + 3..]);
            continue;
        }
        let tag_like = rest.starts_with('<')
            && rest
                .as_bytes()
                .get(1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'/' || *c == b'!');
        if tag_like {
            let Some(end) = tag_end(rest) else { break };
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            if !closing && SKIPPED.contains(&name.as_str()) {
                rest = skip_element(rest, &name);
                continue;
            }
            if BLOCKS.contains(&name.as_str()) {
                push_line(&mut out.lines, &mut line);
            }
            if name == "blockquote" {
                quoted = if closing {
                    quoted.saturating_sub(1)
                } else {
                    quoted + 1
                };
                continue;
            }
            if name == "a" {
                if closing {
                    if let Some((url, text)) = anchor.take() {
                        if out.links.len() < MAX_LINKS {
                            out.links.push(Link {
                                url,
                                context: fold(&text),
                            });
                        }
                    }
                } else {
                    anchor = attribute(tag, "href")
                        .map(|v| (decode_entities(&v).trim().to_string(), String::new()));
                }
            }
            continue;
        }
        // Text up to the next `<` (a lone `<` that opens no tag is text).
        let first = rest.chars().next().map_or(1, char::len_utf8);
        let next = rest[first..].find('<').map_or(rest.len(), |p| p + first);
        let text = decode_entities(&rest[..next]);
        rest = &rest[next..];
        if quoted > 0 {
            continue;
        }
        for c in text.chars() {
            if invisible(c) {
                continue;
            }
            let c = if c.is_whitespace() { ' ' } else { c };
            if c == ' ' && (line.is_empty() || line.ends_with(' ')) {
                continue;
            }
            line.push(c);
            if let Some((_, anchor_text)) = anchor.as_mut() {
                anchor_text.push(c);
            }
        }
    }
    push_line(&mut out.lines, &mut line);
    if let Some((url, text)) = anchor {
        out.links.push(Link {
            url,
            context: fold(&text),
        });
    }
    out
}

fn push_line(lines: &mut Vec<String>, line: &mut String) {
    let trimmed = line.trim();
    if !trimmed.is_empty() {
        lines.push(trimmed.to_string());
    }
    line.clear();
}

/// The index of the `>` that closes the tag `s` starts with (quoted `>` do not count).
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, c) in s.bytes().enumerate().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(c),
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The rest of the document after the end tag `</name>` (or nothing, if it never ends).
fn skip_element<'h>(s: &'h str, name: &str) -> &'h str {
    let close = format!("</{name}");
    let lower = s.to_ascii_lowercase();
    match lower.find(&close) {
        Some(pos) => {
            let after = &s[pos..];
            after.find('>').map_or("", |e| &after[e + 1..])
        }
        None => "",
    }
}

/// The value of attribute `name` in the inside of a tag (`a href="…"`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|s| s.find(name)) {
        let pos = from + found;
        from = pos + name.len();
        let preceded = pos > 0 && lower.as_bytes()[pos - 1].is_ascii_whitespace();
        let after = lower[from..].trim_start();
        if !preceded || !after.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - after.len() + 1;
        let value = tag.get(value_start..)?.trim_start();
        return Some(match value.as_bytes().first() {
            Some(q @ (b'"' | b'\'')) => {
                let inner = &value[1..];
                inner[..inner.find(*q as char).unwrap_or(inner.len())].to_string()
            }
            _ => value
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or("")
                .to_string(),
        });
    }
    None
}

/// HTML character references: numeric ones and the named ones mail bodies use.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    const NAMED: &[(&str, char)] = &[
        ("amp", '&'),
        ("lt", '<'),
        ("gt", '>'),
        ("quot", '"'),
        ("apos", '\''),
        ("nbsp", '\u{00A0}'),
        ("ensp", ' '),
        ("emsp", ' '),
        ("thinsp", ' '),
        ("zwnj", '\u{200C}'),
        ("zwj", '\u{200D}'),
        ("shy", '\u{00AD}'),
        ("copy", '©'),
        ("reg", '®'),
        ("trade", '™'),
        ("ndash", '–'),
        ("mdash", '—'),
        ("lsquo", '‘'),
        ("rsquo", '’'),
        ("ldquo", '“'),
        ("rdquo", '”'),
        ("laquo", '«'),
        ("raquo", '»'),
        ("hellip", '…'),
        ("middot", '·'),
        ("bull", '•'),
        ("euro", '€'),
        ("iexcl", '¡'),
        ("iquest", '¿'),
        ("aacute", 'á'),
        ("agrave", 'à'),
        ("acirc", 'â'),
        ("auml", 'ä'),
        ("atilde", 'ã'),
        ("aring", 'å'),
        ("aelig", 'æ'),
        ("ccedil", 'ç'),
        ("eacute", 'é'),
        ("egrave", 'è'),
        ("ecirc", 'ê'),
        ("euml", 'ë'),
        ("iacute", 'í'),
        ("igrave", 'ì'),
        ("icirc", 'î'),
        ("iuml", 'ï'),
        ("ntilde", 'ñ'),
        ("oacute", 'ó'),
        ("ograve", 'ò'),
        ("ocirc", 'ô'),
        ("ouml", 'ö'),
        ("otilde", 'õ'),
        ("oslash", 'ø'),
        ("uacute", 'ú'),
        ("ugrave", 'ù'),
        ("ucirc", 'û'),
        ("uuml", 'ü'),
        ("szlig", 'ß'),
        ("Aacute", 'Á'),
        ("Agrave", 'À'),
        ("Auml", 'Ä'),
        ("Eacute", 'É'),
        ("Egrave", 'È'),
        ("Ouml", 'Ö'),
        ("Uuml", 'Ü'),
        ("Ccedil", 'Ç'),
        ("Ntilde", 'Ñ'),
    ];
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // `;` is ASCII, so its index is a boundary; names are short, so look no further than 11.
        let semi = rest
            .bytes()
            .skip(1)
            .take(11)
            .position(|b| b == b';')
            .map(|p| p + 1);
        let decoded = semi.and_then(|semi| {
            let name = &rest[1..semi];
            let c = if let Some(num) = name.strip_prefix('#') {
                let n = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse::<u32>().ok(),
                };
                n.and_then(char::from_u32)
            } else {
                NAMED.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
            };
            c.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn code_next_to_keyword_in_many_shapes() {
        let cases = [
            ("Confirmation code: 123456789", "123456789"),
            ("Code de confirmation\u{a0}: 987654321", "987654321"),
            ("Ihr Bestätigungscode lautet: 583201.", "583201"),
            ("Código de verificación: 44 Tage", ""),
            ("Su código de verificación es 771203", "771203"),
            ("Il tuo codice di verifica è: 220044", "220044"),
            ("482913 is your verification code", "482913"),
            ("Use 1234567 as Microsoft account security code", "1234567"),
            ("確認コード: 123456789", "123456789"),
            ("验证码：６５４３２１", "654321"),
            ("Your verification code is ABC-1234", "ABC-1234"),
            ("Your verification code is K7Q2ZP", "K7Q2ZP"),
            (
                "send the confirmation code 123456789 to a@b.example",
                "123456789",
            ),
            (
                "Your verification code for email forwarding is 620481.",
                "620481",
            ),
            ("Security code for support@acme.example: 4410", "4410"),
            (
                "Your confirmation code is valid for 10 minutes: 483920",
                "483920",
            ),
        ];
        for (text, want) in cases {
            let got = code_in(&lines(text), true).unwrap_or_default();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn numbers_that_are_not_codes() {
        for text in [
            "I never received my confirmation code for order 1234",
            "My confirmation code. Order 123456 was placed on 2024-05-01",
            "The verification code expires at 10:30 on 12/05/2024",
            "Call +1 425 555 0100 about your security code",
            "Use promo code 123456 at checkout",
            "error code 800401",
            "see http://support.google.com/mail/bin/answer.py?answer=184973.",
        ] {
            assert_eq!(code_in(&lines(text), true), None, "{text}");
        }
    }

    #[test]
    fn code_on_the_line_after_its_keyword() {
        assert_eq!(
            code_in(&lines("Security code:\n1234567\nThanks"), true).as_deref(),
            Some("1234567")
        );
        assert_eq!(
            code_in(
                &lines("enter the code below on the verification page:\n\n482913\n"),
                true
            )
            .as_deref(),
            Some("482913")
        );
        // A weak keyword ("code") never vouches for letters.
        assert_eq!(
            code_in(&lines("enter the code below:\nWELCOME20\n"), true),
            None
        );
    }

    #[test]
    fn html_text_entities_and_anchors() {
        let s = strip_html(
            "<html><head><style>td{}</style><title>x</title></head><body><p>Code&nbsp;de&#32;v&eacute;rification&#xA0;:</p>\
             <td><b>48&#8203;2913</b></td><a href=\"https://x.example/v?a=1&amp;b=2\">Confirmer</a>\
             <blockquote>quoted 999999</blockquote><!-- <p>hidden</p> --><a href='https://x.example/unsub'>Se d&eacute;sabonner</a></body></html>",
        );
        assert_eq!(
            s.lines,
            [
                "Code de vérification :",
                "482913",
                "Confirmer",
                "Se désabonner"
            ]
        );
        assert_eq!(s.links.len(), 2);
        assert_eq!(s.links[0].url, "https://x.example/v?a=1&b=2");
        assert_eq!(s.links[0].context, "confirmer");
        assert_eq!(code_in(&s.lines, false).as_deref(), Some("482913"));
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
            let _ = strip_html(text);
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
