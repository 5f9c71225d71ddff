//! Body text -> lines, and what a line is: a header label (`From:`, `Von:` …), a separator
//! (`---------- Forwarded message ---------`, `-----Original Message-----`), a reply attribution
//! (`On … wrote:`).

use std::borrow::Cow;

use super::address::{clean_name, extract_mailbox_at, Mailbox};
use super::Layout;
pub(super) use crate::pipeline::languages::Field;
use crate::pipeline::languages::{self, is_bidi_mark, Banner};

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
            let mut s = raw.trim_matches(|c: char| c.is_whitespace() || is_bidi_mark(c));
            let mut depth = 0u8;
            while let Some(rest) = s.strip_prefix('>') {
                depth = depth.saturating_add(1);
                s = rest.trim_start();
            }
            Line { depth, text: s }
        })
        .collect()
}

/// `From: value`, `*Von:* value`, `De : value` (French spacing, with NBSP), `差出人：value`
/// (full-width colon), `‏מאת:‏ value` (with bidirectional marks) -> (field, value).
pub(super) fn label(text: &str) -> Option<(Field, &str)> {
    let s = text.trim_start_matches(|c: char| c == '*' || c.is_whitespace() || is_bidi_mark(c));
    let reach = languages::label_reach();
    let (colon, width) = s
        .char_indices()
        .take_while(|&(i, _)| i <= reach)
        .find(|&(_, c)| c == ':' || c == '：')
        .map(|(i, c)| (i, c.len_utf8()))?;
    if colon == 0 {
        return None;
    }
    let name =
        s[..colon].trim_end_matches(|c: char| c == '*' || c.is_whitespace() || is_bidi_mark(c));
    let field = languages::field(name)?;
    let value =
        s[colon + width..].trim_matches(|c: char| c == '*' || c.is_whitespace() || is_bidi_mark(c));
    Some((field, value))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Separator {
    /// A banner that says "forwarded": the block under it is a forward.
    Forward,
    /// "-----Original Message-----", a rule line, Outlook's bordered div: reply or forward alike.
    Ambiguous,
}

fn is_decoration_char(c: char) -> bool {
    "-_=*—–".contains(c)
}

/// A separator line and the layout it belongs to. The banner's words come from the language
/// tables; which client wrote it shows in the decoration around them: Apple Mail ends its banner
/// with a colon and no rule, Yahoo draws five dashes, Thunderbird eight (three in Polish), Gmail
/// (and HubSpot and Missive, which copy it) ten; Outlook writes `-----Original Message-----`
/// or a rule, IONOS ten dashes around "Original Message".
pub(super) fn separator(text: &str) -> Option<(Separator, Layout)> {
    let text = text.trim_matches(|c: char| c.is_whitespace() || is_bidi_mark(c));
    if text.len() > 160 || text.is_empty() {
        return None;
    }
    let with_colon = text.ends_with([':', '：']);
    let first = text.chars().next()?;
    if !(is_decoration_char(first) || with_colon) {
        return None;
    }
    if text.chars().count() >= 8 && text.chars().all(is_decoration_char) {
        return Some((Separator::Ambiguous, Layout::Outlook));
    }
    let dashes = text.chars().take_while(|&c| c == '-').count();
    let spaced = text[dashes..].starts_with(' ');
    let core = text.trim_matches(|c: char| {
        is_decoration_char(c) || c == ':' || c == '：' || c.is_whitespace()
    });
    let folded = languages::fold(core);
    match languages::banner(&folded, with_colon && dashes == 0)? {
        Banner::Forward(Some(client)) => Some((Separator::Forward, Layout::from_client(client))),
        Banner::Forward(None) => {
            let layout = match dashes {
                0 => Layout::AppleMail,
                3 | 7 | 8 => Layout::Thunderbird,
                1..=6 => Layout::Yahoo,
                _ => Layout::Gmail,
            };
            Some((Separator::Forward, layout))
        }
        Banner::Original if dashes >= 9 && spaced => Some((Separator::Ambiguous, Layout::Ionos)),
        Banner::Original => Some((Separator::Ambiguous, Layout::Outlook)),
    }
}

pub(super) fn is_decoration(text: &str) -> bool {
    !text.is_empty() && text.chars().all(is_decoration_char)
}

/// Yahoo's plain-text part writes its forward banner and the whole header block on one line
/// ("----- Forwarded Message ----- From: Jane <j@x.example>To: … Sent: …Subject: …"): such a
/// line is cut into a banner line and one line per label, so the block reads like any other.
/// Other text is returned as it is.
pub(super) fn unfold_inline_blocks(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut done = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let Some(pieces) = inline_block(line.trim_end()) else {
            continue;
        };
        let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 64));
        o.push_str(&text[done..start]);
        for piece in pieces {
            o.push_str(piece.trim());
            o.push('\n');
        }
        done = offset;
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[done..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    }
}

/// The longest line read as a one-line forward block; a real one is well under 1 KiB, and the
/// bound keeps the label search linear in the body.
const MAX_INLINE_BLOCK_BYTES: usize = 4096;

/// The pieces of a one-line forward block: the banner, then each `Label: value`.
fn inline_block(line: &str) -> Option<Vec<&str>> {
    if line.len() > MAX_INLINE_BLOCK_BYTES {
        return None;
    }
    let t = line.trim_start_matches(|c: char| c == '>' || c.is_whitespace());
    let lead = t.len() - t.trim_start_matches('-').len();
    if lead < 3 {
        return None;
    }
    let after = &t[lead..];
    let close = after.find("---")?;
    let rest_at = close + after[close..].len() - after[close..].trim_start_matches('-').len();
    let rest = &after[rest_at..];
    if rest.trim().is_empty() || label(rest.trim()).is_none() {
        return None;
    }
    let banner_line = &t[..lead + rest_at];
    separator(banner_line)?;
    let mut pieces = vec![banner_line];
    let mut from = 0;
    for start in label_starts(rest).into_iter().skip(1) {
        pieces.push(&rest[from..start]);
        from = start;
    }
    pieces.push(&rest[from..]);
    Some(pieces)
}

/// Where the labels of a run-together header block start: a known label right before a colon,
/// at the start, after a non-letter ("…example>To:", "GMT+1Subject:") or where a lower-case
/// letter meets the label's capital ("…acme.exampleSent:").
fn label_starts(rest: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let reach = languages::label_reach();
    for (colon, _) in rest.match_indices([':', '：']) {
        let mut window_start = colon.saturating_sub(reach);
        while !rest.is_char_boundary(window_start) {
            window_start += 1;
        }
        let candidates = rest[window_start..colon]
            .char_indices()
            .map(|(i, c)| (window_start + i, c));
        let mut best = None;
        for (i, c) in candidates {
            let prev = rest[..i].chars().next_back();
            let boundary = match prev {
                None => true,
                Some(p) => !p.is_alphabetic() || (p.is_lowercase() && c.is_uppercase()),
            };
            if boundary && c.is_alphabetic() && languages::field(&rest[i..colon]).is_some() {
                best = Some(i);
                break;
            }
        }
        if let Some(i) = best {
            if starts.last().is_none_or(|&l| l < i) {
                starts.push(i);
            }
        }
    }
    starts
}

/// A reply attribution line at `i` (possibly wrapped onto the next line). Returns the mailbox it
/// names, if any.
pub(super) fn attribution_line(lines: &[Line<'_>], i: usize) -> Option<Option<Mailbox>> {
    let text = lines[i].text;
    let joined: Cow<'_, str> = if text.ends_with([':', '：']) {
        Cow::Borrowed(text)
    } else {
        let next = lines.get(i + 1)?.text;
        if next.len() > 80
            || !next.ends_with([':', '：'])
            || text.len() > 300
            || label(next).is_some()
        {
            return None;
        }
        Cow::Owned(format!("{text} {next}"))
    };
    if joined.len() > 400 || !joined.contains(|c: char| c.is_ascii_digit() || c == '@') {
        return None;
    }
    let has_verb = languages::has_reply_verb(&languages::fold(&joined));
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
/// Outlook 2019 puts a word for "user" or "at the time" there in some languages (Dutch heeft,
/// Hungarian időpontban, Russian пользователь, Slovak používateľ).
pub(super) const ATTRIBUTION_FILLERS: &[&str] = &[
    "am",
    "pm",
    "a.m.",
    "p.m.",
    "uhr",
    "schrieb",
    "schreef",
    "skrev",
    "h",
    "hs",
    "gmt",
    "utc",
    "cet",
    "heeft",
    "időpontban",
    "пользователь",
    "používateľ",
    "kl.",
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
        assert_eq!(
            label("差出人： 山田 <t@x.example>").map(|l| l.0),
            Some(Field::From)
        );
        assert_eq!(
            label("\u{200f}מאת:\u{200f} דנה <d@x.example>"),
            Some((Field::From, "דנה <d@x.example>"))
        );
        assert_eq!(label("Note: x"), None);
        assert_eq!(label("On Mon, 8 Jan 2024 at 10:15, Jane wrote:"), None);
    }

    #[test]
    fn separators() {
        use Layout::*;
        use Separator::*;
        let cases = [
            ("---------- Forwarded message ---------", Forward, Gmail),
            ("Begin forwarded message:", Forward, AppleMail),
            ("Forwarded message:", Forward, Mailmate),
            (
                "-------- Weitergeleitete Nachricht --------",
                Forward,
                Thunderbird,
            ),
            ("-------- Forwarded Message --------", Forward, Thunderbird),
            ("--- Treść przekazanej wiadomości ---", Forward, Thunderbird),
            ("----- Forwarded Message -----", Forward, Yahoo),
            ("----- Пересылаемое сообщение -----", Forward, Yahoo),
            ("---------- İletilen ileti ---------", Forward, Gmail),
            ("---------- メッセージを転送 ---------", Forward, Hubspot),
            ("転送されたメッセージ:", Forward, AppleMail),
            ("以下是转发的邮件：", Forward, AppleMail),
            ("-----Original Message-----", Ambiguous, Outlook),
            ("-----Původní zpráva-----", Ambiguous, Outlook),
            ("-----Alkuperäinen viesti-----", Ambiguous, Outlook),
            ("---------- Original Message ----------", Ambiguous, Ionos),
            (
                "----- Forwarded message from Jane <j@x.example> -----",
                Forward,
                Mutt,
            ),
            (RULE_LINE, Ambiguous, Outlook),
        ];
        for (line, sep, layout) in cases {
            assert_eq!(separator(line), Some((sep, layout)), "{line}");
        }
        assert_eq!(separator("-- "), None);
        assert_eq!(separator("We forwarded message logs to you:"), None);
    }

    /// Every string of every language table reads as what it is, in each client's decoration.
    #[test]
    fn every_table_string_is_recognised() {
        use crate::pipeline::languages;
        for lang in languages::all() {
            for b in lang.forward_banners {
                let cases = [
                    (format!("---------- {b} ---------"), Layout::Gmail),
                    (format!("-------- {b} --------"), Layout::Thunderbird),
                    (format!("----- {b} -----"), Layout::Yahoo),
                ];
                for (line, layout) in cases {
                    assert_eq!(
                        separator(&line),
                        Some((Separator::Forward, layout)),
                        "{}: {line}",
                        lang.code
                    );
                }
            }
            for b in lang.original_banners {
                let line = format!("-----{b}-----");
                assert_eq!(
                    separator(&line),
                    Some((Separator::Ambiguous, Layout::Outlook)),
                    "{}: {line}",
                    lang.code
                );
            }
            let fields = [
                (lang.from, Field::From),
                (lang.subject, Field::Subject),
                (lang.to, Field::To),
            ];
            for (labels, field) in fields {
                for l in labels {
                    for line in [format!("{l}: x <x@y.example>"), format!("*{l}：* x")] {
                        assert_eq!(
                            label(&line).map(|f| f.0),
                            Some(field),
                            "{}: {line}",
                            lang.code
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn yahoo_one_line_block_is_unfolded() {
        let text = "FYI\n\n----- Forwarded Message ----- From: Jane Doe <jane@client.example>To: \
                    support@acme.exampleSent: Monday, January 8, 2024, 10:15:00 AM GMT+1Subject: \
                    Invoice 10:30\n\nHello\n";
        let unfolded = unfold_inline_blocks(text);
        assert_eq!(
            unfolded,
            "FYI\n\n----- Forwarded Message -----\nFrom: Jane Doe <jane@client.example>\nTo: \
             support@acme.example\nSent: Monday, January 8, 2024, 10:15:00 AM GMT+1\nSubject: \
             Invoice 10:30\n\nHello\n"
        );
        assert!(matches!(
            unfold_inline_blocks("a\n--- b ---\n"),
            Cow::Borrowed(_)
        ));
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
