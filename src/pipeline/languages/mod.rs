//! Localised text -> what it means to a mail client: a header label (`Von:`, `差出人：`), a
//! forward or reply banner, a reply verb, a subject prefix. The data is one table per language
//! in `table.rs`; this file folds text the same way on both sides and answers lookups, for
//! attribution and verification alike.
//!
//! Folding makes the tables spelling-tolerant where clients differ only in form: lower case,
//! the Turkish dotted/dotless i read as `i`, bidirectional marks (which right-to-left clients put
//! around labels) and zero-width characters dropped, any run of spaces (no-break, narrow, ideographic)
//! read as one space. The lookup sets are built once, on first use.

mod table;

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use crate::pipeline::html::invisible;

/// What one language's clients write around a forwarded or quoted message.
#[derive(Debug)]
pub struct Language {
    /// BCP 47 tag, for tests and reports.
    pub code: &'static str,
    /// Header labels of a forwarded block, by field.
    pub from: &'static [&'static str],
    pub date: &'static [&'static str],
    pub to: &'static [&'static str],
    pub cc: &'static [&'static str],
    pub subject: &'static [&'static str],
    /// Labels that belong to a header block but are not read (Reply-To, Importance).
    pub other: &'static [&'static str],
    /// Banners that say "forwarded"; the decoration around them tells the client (see
    /// `attribution::lines`).
    pub forward_banners: &'static [&'static str],
    /// Banners only one client writes: (the start of the banner as written, with its colon if it
    /// has one; layout name).
    pub client_banners: &'static [(&'static str, &'static str)],
    /// Banners above both replies and forwards ("-----Original Message-----").
    pub original_banners: &'static [&'static str],
    /// The verb of a reply attribution line ("On … wrote:").
    pub reply_verbs: &'static [&'static str],
    /// Subject prefixes, without their colon.
    pub forward_prefixes: &'static [&'static str],
    pub reply_prefixes: &'static [&'static str],
}

/// Every language we read.
pub fn all() -> &'static [Language] {
    table::LANGUAGES
}

/// A field of a forwarded header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    From,
    Date,
    To,
    Cc,
    Subject,
    Other,
}

impl Field {
    /// One bit per field, for sets of fields.
    pub fn bit(self) -> u8 {
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

/// Marks that set text direction: invisible, and put around labels by right-to-left clients.
pub fn is_bidi_mark(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The form both the tables and the text are compared in (see the module docs).
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if invisible(c) || is_bidi_mark(c) || c == '\u{0307}' {
            continue;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        match c {
            'İ' | 'I' | 'ı' => out.push('i'),
            '’' | '‘' | 'ʼ' => out.push('\''),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

struct Lookups {
    labels: HashMap<String, Field>,
    /// Longest label, in bytes as written in a table (a text label is looked up only when its
    /// colon comes within this reach).
    longest_label: usize,
    forward_banners: Vec<String>,
    client_banners: Vec<(String, &'static str)>,
    original_banners: Vec<String>,
    reply_verbs: Vec<String>,
    forward_prefixes: HashSet<String>,
    reply_prefixes: HashSet<String>,
}

static LOOKUPS: LazyLock<Lookups> = LazyLock::new(|| {
    let mut l = Lookups {
        labels: HashMap::new(),
        longest_label: 0,
        forward_banners: Vec::new(),
        client_banners: Vec::new(),
        original_banners: Vec::new(),
        reply_verbs: Vec::new(),
        forward_prefixes: HashSet::new(),
        reply_prefixes: HashSet::new(),
    };
    for lang in all() {
        let fields = [
            (lang.from, Field::From),
            (lang.date, Field::Date),
            (lang.to, Field::To),
            (lang.cc, Field::Cc),
            (lang.subject, Field::Subject),
            (lang.other, Field::Other),
        ];
        for (labels, field) in fields {
            for label in labels {
                l.longest_label = l.longest_label.max(label.len());
                // The first language to claim a label keeps it: "Data" is a date in Italian and
                // Polish, never anything else; conflicts would show in the tests below.
                l.labels.entry(fold(label)).or_insert(field);
            }
        }
        let push = |into: &mut Vec<String>, items: &[&str]| {
            for b in items {
                let f = fold(b);
                if !into.contains(&f) {
                    into.push(f);
                }
            }
        };
        push(&mut l.forward_banners, lang.forward_banners);
        push(&mut l.original_banners, lang.original_banners);
        push(&mut l.reply_verbs, lang.reply_verbs);
        for (banner, layout) in lang.client_banners {
            l.client_banners.push((fold(banner), layout));
        }
        l.forward_prefixes
            .extend(lang.forward_prefixes.iter().map(|p| fold(p)));
        l.reply_prefixes
            .extend(lang.reply_prefixes.iter().map(|p| fold(p)));
    }
    // Longer banners first, so "begin forwarded message" wins over "forwarded message".
    l.forward_banners
        .sort_by_key(|b| std::cmp::Reverse(b.len()));
    l.original_banners
        .sort_by_key(|b| std::cmp::Reverse(b.len()));
    l
});

/// The field a label names (`Von`, `差出人`, `Envoyé`), as written before its colon.
pub fn field(label: &str) -> Option<Field> {
    if label.len() > LOOKUPS.longest_label + 16 {
        return None;
    }
    LOOKUPS.labels.get(&fold(label)).copied()
}

/// How far into a line a label's colon may be, in bytes.
pub fn label_reach() -> usize {
    LOOKUPS.longest_label + 16
}

/// What a banner's folded text (decoration and colon removed) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Banner {
    /// "Forwarded message" and its translations; the layout when only one client writes it.
    Forward(Option<&'static str>),
    /// "Original Message" and its translations: reply or forward alike.
    Original,
}

/// The banner `core` starts with, if any. `core` is folded text; `with_colon` says whether the
/// line ended with a colon (Apple Mail's and MailMate's banners do).
pub fn banner(core: &str, with_colon: bool) -> Option<Banner> {
    let l = &*LOOKUPS;
    for (b, layout) in &l.client_banners {
        let matched = match b.strip_suffix(':') {
            Some(text) => with_colon && core.starts_with(text),
            None => core.starts_with(b.as_str()),
        };
        if matched {
            return Some(Banner::Forward(Some(layout)));
        }
    }
    if l.forward_banners
        .iter()
        .any(|b| core.starts_with(b.as_str()))
    {
        return Some(Banner::Forward(None));
    }
    if l.original_banners
        .iter()
        .any(|b| core.starts_with(b.as_str()))
    {
        return Some(Banner::Original);
    }
    None
}

/// Whether folded `text` holds a reply verb as a word of its own (not inside another word).
pub fn has_reply_verb(text: &str) -> bool {
    LOOKUPS.reply_verbs.iter().any(|verb| {
        text.match_indices(verb.as_str()).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            // CJK scripts do not separate words; a verb there follows the name directly.
            let cjk = verb.chars().next().is_some_and(is_cjk);
            cjk || !before.is_some_and(char::is_alphabetic)
        })
    })
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{9FFF}' | '\u{AC00}'..='\u{D7AF}')
}

/// What a subject's leading prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Forward,
    Reply,
    None,
}

/// The colon ending a subject prefix: ASCII, or full width as CJK clients write it.
fn prefix_colon(s: &str) -> Option<(usize, usize)> {
    s.char_indices()
        .take_while(|&(i, _)| i <= 24)
        .find(|&(_, c)| c == ':' || c == '：')
        .map(|(i, c)| (i, c.len_utf8()))
}

/// What the subject's leading prefix says ("[EXTERNAL] FW: x" is a forward, "RE: Fwd: x" a
/// reply, "TR : x" (French spacing), "Re[2]: x", "转发： x").
pub fn subject_kind(subject: &str) -> Prefix {
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
    let Some((colon, _)) = prefix_colon(s) else {
        return Prefix::None;
    };
    let token = s[..colon].split(['[', '(']).next().unwrap_or("");
    let token = fold(token);
    if LOOKUPS.forward_prefixes.contains(&token) {
        Prefix::Forward
    } else if LOOKUPS.reply_prefixes.contains(&token) {
        Prefix::Reply
    } else {
        Prefix::None
    }
}

/// The subject without its reply/forward prefixes and [tags], for comparing subjects.
pub fn strip_subject_prefixes(subject: &str) -> &str {
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
        match prefix_colon(s) {
            Some((c, len)) => s = s[c + len..].trim_start(),
            None => break,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_25_languages_each_with_every_field() {
        let langs = all();
        assert!(langs.len() >= 25, "{} languages", langs.len());
        for l in langs {
            for (name, labels) in [
                ("from", l.from),
                ("date", l.date),
                ("to", l.to),
                ("subject", l.subject),
            ] {
                assert!(!labels.is_empty(), "{}: no {name} label", l.code);
            }
            assert!(
                !l.forward_banners.is_empty(),
                "{}: no forward banner",
                l.code
            );
            assert!(!l.reply_verbs.is_empty(), "{}: no reply verb", l.code);
        }
    }

    #[test]
    fn every_from_label_reads_as_from() {
        // A From label that another language took for a different field would lose forwards.
        for l in all() {
            for label in l.from {
                assert_eq!(field(label), Some(Field::From), "{}: {label}", l.code);
            }
            for label in l.subject {
                assert_eq!(field(label), Some(Field::Subject), "{}: {label}", l.code);
            }
        }
    }

    #[test]
    fn folding() {
        assert_eq!(fold("  İletilen\u{a0}İleti "), "iletilen ileti");
        assert_eq!(fold("\u{200f}מאת\u{200f}"), "מאת");
        assert_eq!(fold("Message d’origine"), "message d'origine");
        assert_eq!(field("Envoyé"), Some(Field::Date));
        assert_eq!(field("보낸\u{3000}사람"), Some(Field::From));
        assert_eq!(field("Note"), None);
    }

    #[test]
    fn banners_and_verbs() {
        assert_eq!(
            banner(&fold("Пересылаемое сообщение"), false),
            Some(Banner::Forward(None))
        );
        assert_eq!(
            banner(&fold("Původní zpráva"), false),
            Some(Banner::Original)
        );
        assert_eq!(
            banner("forwarded message", true),
            Some(Banner::Forward(Some("mailmate")))
        );
        assert_eq!(
            banner("forwarded message", false),
            Some(Banner::Forward(None))
        );
        assert_eq!(
            banner(&fold("メッセージを転送"), false),
            Some(Banner::Forward(Some("hubspot")))
        );
        assert_eq!(banner("we forwarded message logs", false), None);
        assert!(has_reply_verb("on mon, jane <j@x.example> wrote:"));
        assert!(has_reply_verb("张伟 <zw@x.example> 写道："));
        assert!(!has_reply_verb("rewrote the draft:"));
    }

    #[test]
    fn subject_prefixes() {
        assert_eq!(subject_kind("Fwd: hello"), Prefix::Forward);
        assert_eq!(subject_kind("[EXTERNAL] FW: hello"), Prefix::Forward);
        assert_eq!(subject_kind("TR : facture"), Prefix::Forward);
        assert_eq!(subject_kind("WG: Angebot"), Prefix::Forward);
        assert_eq!(subject_kind("Doorst: offerte"), Prefix::Forward);
        assert_eq!(subject_kind("转发：报价"), Prefix::Forward);
        assert_eq!(subject_kind("İLT: teklif"), Prefix::Forward);
        assert_eq!(subject_kind("Re[2]: hello"), Prefix::Reply);
        assert_eq!(subject_kind("RE: Fwd: hello"), Prefix::Reply);
        assert_eq!(subject_kind("AW: WG: Angebot"), Prefix::Reply);
        assert_eq!(subject_kind("Question: pricing"), Prefix::None);
        assert_eq!(subject_kind(""), Prefix::None);
        assert_eq!(strip_subject_prefixes("Fwd: RE: [x] Hello"), "Hello");
        assert_eq!(strip_subject_prefixes("转发：报价"), "报价");
    }
}
