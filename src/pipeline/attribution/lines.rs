//! Body text -> lines, and what a line is: a header label (`From:`, `Von:` …), a separator
//! (`---------- Forwarded message ---------`, `-----Original Message-----`), a reply attribution
//! (`On … wrote:`).

use std::borrow::Cow;

use super::address::{clean_name, extract_mailbox_at, Mailbox};

/// One body line with its `>` quoting removed.
pub(super) struct Line<'a> {
    /// How many `>` quote it.
    pub(super) depth: u8,
    /// The content, trimmed.
    pub(super) text: &'a str,
}

pub(super) fn split_lines(text: &str) -> Vec<Line<'_>> {
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
pub(super) enum Field {
    From,
    Date,
    To,
    Cc,
    Subject,
    Other,
}

impl Field {
    pub(super) fn bit(self) -> u8 {
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
pub(super) const LABELS: &[(&str, Field)] = &[
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
pub(super) fn label(text: &str) -> Option<(Field, &str)> {
    let s = text.trim_start_matches(|c: char| c == '*' || c.is_whitespace());
    let colon = s.find(':').filter(|&c| c > 0 && c <= 24)?;
    let name = s[..colon].trim_end_matches(|c: char| c == '*' || c.is_whitespace());
    let lower = name.to_lowercase();
    let field = LABELS.iter().find(|(l, _)| *l == lower).map(|&(_, f)| f)?;
    let value = s[colon + 1..].trim_matches(|c: char| c == '*' || c.is_whitespace());
    Some((field, value))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Separator {
    /// A banner that says "forwarded": the block under it is a forward.
    Forward,
    /// "-----Original Message-----", a rule line, Outlook's bordered div: reply or forward alike.
    Ambiguous,
}

/// Banners that say "forwarded" (Gmail, Apple Mail / iOS, Thunderbird, Yahoo, mutt, Outlook
/// for Android), lower-cased, in the languages we read.
pub(super) const FORWARD_BANNERS: &[&str] = &[
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
pub(super) const AMBIGUOUS_BANNERS: &[&str] = &[
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

pub(super) fn separator(text: &str) -> Option<Separator> {
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

pub(super) fn is_decoration(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| "-_=*—–".contains(c))
}

/// Verbs of reply attribution lines ("On … wrote:", "Le … a écrit :", "Am … schrieb …:",
/// "El … escribió:", "Il … ha scritto:", "Em … escreveu:", "Op … schreef …:", "W dniu …
/// napisał(a):", "Den … skrev …:").
pub(super) const REPLY_VERBS: &[&str] = &[
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
pub(super) fn attribution_line(lines: &[Line<'_>], i: usize) -> Option<Option<Mailbox>> {
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
pub(super) const ATTRIBUTION_FILLERS: &[&str] = &[
    "am", "pm", "a.m.", "p.m.", "uhr", "schrieb", "schreef", "skrev", "h", "hs", "gmt", "utc",
    "cet",
];

pub(super) fn attribution_name(before_address: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::html::RULE_LINE;

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
}
