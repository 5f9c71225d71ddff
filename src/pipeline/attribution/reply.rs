//! Body text -> the new text of a reply or forward: what its writer typed, without the quoted
//! history under it and without their signature. RFC 3676 §4.3 (the `-- ` signature line),
//! RFC 3676 §4.5 (`>` quoting), and the clients' own layouts.
//!
//! The history starts at the first of these (read with the same line helpers and language
//! tables as attribution, so "Am … schrieb …:" or "-----Ursprüngliche Nachricht-----" count in
//! every language attribution knows):
//! - a reply attribution line ("On … wrote:") *not* followed by `>` quoting (Outlook-style
//!   history below it); one that is followed by `>` quoting only loses that line, so the
//!   answers of an interleaved (bottom-posted) reply stay;
//! - a forward banner ("---------- Forwarded message ---------", "Begin forwarded message:") or
//!   an "Original Message" banner; a bare rule line only when a header block with a From
//!   follows (Outlook's `________________________________`);
//! - a header block without a separator: From, a date and a subject or recipient;
//! - a signature line, `-- ` (or `--`, as clients that trim trailing spaces send it).
//!
//! Above that, `>`-quoted lines are dropped. Lines keep their own endings; blank lines at either
//! end are trimmed. Linear in the text: each line is looked at a bounded number of times.

use super::forwarded::{block_after_separator, parse_block};
use super::lines::{
    attribution_line, is_decoration, label, separator, split_lines, unfold_inline_blocks, Separator,
};

/// The new text of `text` (a plain-text body, or an HTML body converted by
/// `html::to_text`, whose quotes are `>` lines too).
pub fn new_text(text: &str) -> String {
    // Yahoo's one-line forward block, cut into lines as attribution reads it.
    let text = unfold_inline_blocks(text);
    let raw: Vec<&str> = text.split('\n').collect();
    let lines = split_lines(&text);
    let mut kept: Vec<&str> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let as_written = raw[i].trim_end_matches('\r');
        if as_written == "-- " || as_written == "--" {
            break;
        }
        if line.depth > 0 {
            i += 1;
            continue;
        }
        if quote_attribution(&lines, i) {
            i += 1;
            continue;
        }
        if !line.text.is_empty() && starts_history(&lines, i) {
            match next_quoted(&lines, i, true) {
                // An attribution over `>` quoting: drop the line, the quote drops below.
                Some(true) => {
                    i += 1;
                    continue;
                }
                _ => break,
            }
        }
        kept.push(raw[i]);
        i += 1;
    }
    let is_blank = |l: &&str| l.trim().is_empty();
    let start = kept.iter().position(|l| !is_blank(l)).unwrap_or(kept.len());
    let end = kept
        .iter()
        .rposition(|l| !is_blank(l))
        .map_or(start, |e| e + 1);
    kept[start..end]
        .join("\n")
        .trim_end_matches('\r')
        .to_string()
}

/// A line that introduces the `>` quote right under it without a reply verb: Gmail's Japanese
/// "2024年1月8日(月) 10:15 山田 <…>:", and clients that write only "name <address>:". It ends with
/// a colon and names an address or a date; dropped like the quote it introduces.
fn quote_attribution(lines: &[super::lines::Line<'_>], i: usize) -> bool {
    let text = lines[i].text;
    lines[i].depth == 0
        && text.len() <= 400
        && text.ends_with([':', '：'])
        && text.contains(|c: char| c == '@' || c.is_ascii_digit())
        && next_quoted(lines, i, false) == Some(true)
}

/// Whether the history starts at line `i`.
fn starts_history(lines: &[super::lines::Line<'_>], i: usize) -> bool {
    let text = lines[i].text;
    if attribution_line(lines, i).is_some() {
        return true;
    }
    if let Some((sep, _)) = separator(text) {
        return match sep {
            Separator::Forward => true,
            // "-----Original Message-----" says it in words; a bare rule only above a block.
            Separator::Ambiguous if !is_decoration(text) => true,
            Separator::Ambiguous => block_after_separator(lines, i).is_some(),
        };
    }
    if label(text).is_some() {
        let block = parse_block(lines, i);
        return block.has_from() && block.field_count() >= 3;
    }
    false
}

/// For an attribution line at `i` (possibly wrapped onto `i + 1` when `wrapped` may be): whether
/// the first non-blank line after it is `>`-quoted. `None` when nothing follows.
fn next_quoted(lines: &[super::lines::Line<'_>], i: usize, wrapped: bool) -> Option<bool> {
    let mut j = i + 1;
    // A wrapped attribution line ends on the next line, with the colon.
    if wrapped && !lines[i].text.ends_with([':', '：']) && j < lines.len() {
        j += 1;
    }
    lines[j..]
        .iter()
        .find(|l| !l.text.is_empty() || l.depth > 0)
        .map(|l| l.depth > 0)
}

#[cfg(test)]
mod tests {
    use super::new_text;

    #[test]
    fn gmail_reply_in_english_and_german() {
        let en = "Thanks, that fixed it.\r\n\r\nOn Mon, Jan 8, 2024 at 10:15 AM Jane Doe <jane@example.com> wrote:\r\n> Try restarting.\r\n> \r\n";
        assert_eq!(new_text(en), "Thanks, that fixed it.");
        let de = "Danke!\n\nAm Mo., 8. Jan. 2024 um 10:15 Uhr schrieb Jane Doe <jane@example.com>:\n> Bitte neu starten.\n";
        assert_eq!(new_text(de), "Danke!");
        // Gmail in Japanese writes no verb: date, name, address and a colon over the quote.
        let ja =
            "承知しました。\n\n2024年1月8日(月) 10:15 山田 太郎 <taro@example.jp>:\n\n> 請求書\n";
        assert_eq!(new_text(ja), "承知しました。");
    }

    #[test]
    fn outlook_history_without_quote_marks() {
        let t = "Yes, Tuesday works.\r\n\r\n________________________________\r\nFrom: Jane Doe <jane@example.com>\r\nSent: Monday, January 8, 2024 10:15 AM\r\nTo: Support <support@acme.example>\r\nSubject: Meeting\r\n\r\nCan we meet?\r\n";
        assert_eq!(new_text(t), "Yes, Tuesday works.");
        let fr = "Oui.\n\n-----Message d'origine-----\nDe : Jane\nEnvoyé : lundi\nÀ : Support\nObjet : Réunion\n";
        assert_eq!(new_text(fr), "Oui.");
    }

    #[test]
    fn interleaved_answers_stay_and_signatures_go() {
        let t = "On Mon, Jan 8, 2024 at 10:15 AM Jane <jane@example.com> wrote:\n> Which version?\n2.4\n> Which OS?\nLinux\n\n-- \nBob\nACME Support\n";
        assert_eq!(new_text(t), "2.4\nLinux");
    }

    #[test]
    fn a_forward_keeps_only_the_forwarders_note() {
        let t = "FYI, see below.\n\n---------- Forwarded message ---------\nFrom: Carol <carol@customer.example>\nDate: Sat, 21 Nov 2026\nSubject: question\n\nhello\n";
        assert_eq!(new_text(t), "FYI, see below.");
        let ja = "ご確認ください。\n\n-------- 転送されたメッセージ --------\n差出人: Carol <carol@customer.example>\n";
        assert_eq!(new_text(ja), "ご確認ください。");
    }

    #[test]
    fn plain_text_is_kept_whole() {
        let t = "Hello,\n\nmy printer is broken -- again.\nDate: tomorrow is fine\n";
        assert_eq!(new_text(t), t.trim_end());
    }
}
