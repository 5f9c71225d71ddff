//! Sender + message -> which provider sent it, and whether the sender is an automated one. The
//! providers' own domains and the words their confirmations use; no RFC covers these.

use super::{under, Mail, Sender};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Provider {
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
    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn link_domains(self) -> &'static [&'static str] {
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
    pub(super) fn names_requester(self) -> bool {
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
pub(super) enum Family {
    Google,
    GoogleGroups,
    Microsoft,
    Yahoo,
    Zoho,
    Fastmail,
    Apple,
}

pub(super) const ZOHO_DOMAINS: &[&str] = &[
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
pub(super) const FAMILIES: &[(&str, Family, bool)] = &[
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
pub(super) const GENERIC_PROVIDERS: &[&str] = &[
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

/// Which product of a provider family sent the mail.
pub(super) fn named_provider(family: Family, sender: &Sender, mail: &Mail) -> Provider {
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

/// What a Google Groups confirmation talks about.
pub(super) const GROUP_MEMBERSHIP: &[&str] = &[
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
pub(super) const GROUP_ADDED: &[&str] = &[
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

pub(super) const MICROSOFT_365_WORDS: &[&str] = &[
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
pub(super) const VERIFY_WORDS: &[&str] = &[
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

/// A local part that a program sends from, not a person.
pub(super) fn automated_local(local: &str) -> bool {
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
pub(super) fn is_role_address(address: &str) -> bool {
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
pub(super) fn gmail_subject_code(subject: &str) -> Option<String> {
    let start = subject.find("(#")? + 2;
    let rest = subject.get(start..)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let closed = rest.get(digits.len()..).is_some_and(|r| r.starts_with(')'));
    (closed && (4..=12).contains(&digits.len())).then_some(digits)
}
