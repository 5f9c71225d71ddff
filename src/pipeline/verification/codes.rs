//! Body lines -> the confirmation code next to a keyword ("Confirmation code: 123456",
//! "482913 is your verification code"), in the languages providers write.

use crate::pipeline::html::invisible;

/// Lines before a code on its own line that may hold the keyword ("Your code is below:").
const KEYWORD_LOOKBACK_LINES: usize = 3;
/// Words between a keyword and the "is" or ":" that introduces its code ("code for email
/// forwarding is 620481"); past them, or past the end of the sentence, there is no code.
const QUALIFIER_WORDS: usize = 8;

// --- Word lists. All folded: lower case, Latin accents removed (see `fold`). ---

/// Phrases that put a code right after (or before) them. Single words of 7+ letters also match
/// as the tail of a compound ("Gmail-Weiterleitungsbestätigungscode").
pub(super) const STRONG_KEYWORDS: &[&[&str]] = &[
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
pub(super) const WEAK_KEYWORDS: &[&str] = &[
    "code",
    "codigo",
    "codice",
    "kod",
    "kode",
    "koodi",
    "код",
    "コード",
];

pub(super) const WEAK_DENY: &[&str] = &[
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
pub(super) const CONNECTORS: &[&str] = &[
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
pub(super) const BACK_CONNECTORS: &[&str] = &[
    "is", "as", "ist", "als", "est", "comme", "es", "como", "e", "er", "ar", "jest", "-", "–", ":",
];

// --- Words and codes. ---

/// Lower case, with the accents of Latin letters removed, one char for one char (so a keyword
/// list need not spell "vérification" and "verification" both).
pub(super) fn fold(s: &str) -> String {
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
pub(super) struct Tok {
    /// As written, without surrounding punctuation.
    pub(super) text: String,
    pub(super) folded: String,
    /// Punctuation that ends a sentence or clause followed it ("code." / "code,").
    pub(super) stop: bool,
}

/// Split a line into words; `:` is a word of its own ("code:123456", "code : 123456").
pub(super) fn tokenize(line: &str) -> Vec<Tok> {
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
pub(super) enum Strength {
    Weak,
    Strong,
}

/// Keyword occurrences in a line: (first token, one past the last, strength).
pub(super) fn keywords(toks: &[Tok], weak: bool) -> Vec<(usize, usize, Strength)> {
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
pub(super) fn code_shape(text: &str, digits_only: bool, min_digits: usize) -> Option<String> {
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
pub(super) fn code_in(lines: &[String], weak: bool) -> Option<String> {
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
pub(super) fn assigned_code(toks: &[Tok], digits_only: bool) -> Option<String> {
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

pub(super) fn is_connector(t: &Tok) -> bool {
    CONNECTORS.contains(&t.folded.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        super::super::plain_lines(text)
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
}
