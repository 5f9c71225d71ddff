//! HTML body -> text lines and the links in it, for the stages that read bodies (attribution,
//! verification). HTML Living Standard §13.2 (tokenising, loosely) and §13.5 (named character
//! references: the subset mail bodies use).
//!
//! One converter for every stage, so a `<br>`, an entity or a `<blockquote>` reads the same way
//! everywhere. It keeps the line structure that forwarded headers and confirmation codes rely
//! on: `<br>` and block elements end lines, text inside `<blockquote>` is prefixed with `>` as a
//! plain-text client would quote it, `<head>`, styles, scripts and comments are left out, and
//! invisible characters (zero-width spaces, soft hyphens) are dropped so they cannot split a
//! word. [`Options`] says the few things the stages want differently.
//!
//! Pure and bounded: linear in the input (a tag's quoted attributes are scanned at most
//! [`QUOTE_AWARE_BYTES`] far), at most [`MAX_LINKS`] links, quoting at most [`MAX_QUOTE`] deep,
//! never panics.

/// The line drawn for `<hr>` and Outlook's bordered `<div>` when [`Options::rules`] is set.
pub const RULE_LINE: &str = "________________________________";

/// Links past this many in one body are not recorded.
pub const MAX_LINKS: usize = 200;

/// Deeper `<blockquote>` nesting is quoted as this many levels, so hostile markup cannot
/// multiply the output.
pub const MAX_QUOTE: u32 = 8;

/// How far a tag's quoted attribute values are honoured when looking for its `>`; past it the
/// first `>` is taken, which keeps malformed HTML linear.
pub const QUOTE_AWARE_BYTES: usize = 2048;

/// What a stage wants from the conversion.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Table cells end lines (a code alone in its cell), instead of being spaced apart (a
    /// forwarded header's label and value in two cells of one row).
    pub cells_as_lines: bool,
    /// `<hr>` and Outlook's separator `<div>` become [`RULE_LINE`]; else they only end a line.
    pub rules: bool,
    /// A `mailto:` link whose text hides the address gets ` <address>` appended.
    pub mailto_addresses: bool,
}

/// Attribution reads header blocks: rows stay whole, separators show, addresses are spelled out.
pub const FOR_ATTRIBUTION: Options = Options {
    cells_as_lines: false,
    rules: true,
    mailto_addresses: true,
};

/// Verification reads codes and links: one cell per line, nothing added to the text.
pub const FOR_VERIFICATION: Options = Options {
    cells_as_lines: true,
    rules: false,
    mailto_addresses: false,
};

/// An `<a href>` and the text it wraps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The `href` value, entities decoded, trimmed.
    pub href: String,
    /// The link's text, whitespace collapsed.
    pub text: String,
}

/// A converted body.
#[derive(Debug, Default)]
pub struct Converted {
    /// The text, lines ending in `\n`; quoted lines start with `>` (one per level) and a space.
    pub text: String,
    /// The links, in document order, at most [`MAX_LINKS`].
    pub links: Vec<Anchor>,
}

/// Elements whose content is never text.
const SKIPPED: &[&str] = &["head", "style", "script", "title", "template", "noscript"];

/// Elements that start or end a line.
const BLOCKS: &[&str] = &[
    "p", "tr", "li", "ul", "ol", "table", "tbody", "thead", "h1", "h2", "h3", "h4", "h5", "h6",
    "dt", "dd", "section", "article", "header", "footer", "center", "address", "body",
];

/// Convert `html` to text, as `options` says.
pub fn to_text(html: &str, options: Options) -> Converted {
    let bytes = html.as_bytes();
    let mut out = Out {
        s: String::with_capacity(html.len() / 2),
        quote: 0,
    };
    let mut links = Vec::new();
    let mut i = 0;
    let mut skip: Option<&'static str> = None;
    let mut pre = 0u32;
    // The open anchor: its href and where its text starts in `out`.
    let mut anchor: Option<(String, usize)> = None;
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
                if !closing && !inner.ends_with('/') {
                    if let Some(&s) = SKIPPED.iter().find(|&&s| s == name) {
                        skip = Some(s);
                        continue;
                    }
                }
                match name.as_str() {
                    "br" => out.end_line(),
                    "hr" if options.rules => out.rule(),
                    "div" if options.rules && !closing && is_outlook_separator(inner) => out.rule(),
                    "hr" | "div" => out.end_line(),
                    "td" | "th" if options.cells_as_lines => out.end_line(),
                    "td" | "th" => out.space(),
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
                    "a" if closing => {
                        if let Some((href, start)) = anchor.take() {
                            let text = out.s.get(start..).unwrap_or("").trim().to_string();
                            if options.mailto_addresses && !text.contains('@') {
                                if let Some(addr) = mailto_address(&href) {
                                    out.push_str(" <");
                                    out.push_str(&addr);
                                    out.push('>');
                                }
                            }
                            if links.len() < MAX_LINKS {
                                links.push(Anchor { href, text });
                            }
                        }
                    }
                    "a" => {
                        anchor = attribute(inner, "href")
                            .map(|v| (decode_entities(&v).trim().to_string(), out.s.len()));
                    }
                    n if BLOCKS.contains(&n) => out.end_line(),
                    _ => {}
                }
            }
            b'&' => {
                if let Some((decoded, len)) = entity(&html[i..]) {
                    if skip.is_none() {
                        out.text_char(decoded, pre > 0);
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
                if skip.is_none() {
                    out.text_char(c, pre > 0);
                }
            }
        }
    }
    if let Some((href, start)) = anchor {
        if links.len() < MAX_LINKS {
            let text = out.s.get(start..).unwrap_or("").trim().to_string();
            links.push(Anchor { href, text });
        }
    }
    Converted { text: out.s, links }
}

/// Characters that take no space and would split a word or a code if kept.
pub fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

/// The '>' closing a tag that starts at `from`, skipping quoted attribute values.
fn tag_end(bytes: &[u8], from: usize) -> Option<usize> {
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

/// The text being built, with the blockquote depth of where it is.
struct Out {
    s: String,
    quote: u32,
}

impl Out {
    fn start_line(&mut self) {
        if self.quote > 0 && (self.s.is_empty() || self.s.ends_with('\n')) {
            for _ in 0..self.quote.min(MAX_QUOTE) {
                self.s.push('>');
            }
            self.s.push(' ');
        }
    }

    fn text_char(&mut self, c: char, pre: bool) {
        if invisible(c) {
        } else if c == '\n' && pre {
            self.end_line();
        } else if c.is_whitespace() {
            self.space();
        } else {
            self.push(c);
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

/// The address of a `mailto:` link, without its `?subject=…` and with `%40` read as `@`.
fn mailto_address(href: &str) -> Option<String> {
    let head = href.get(..7)?;
    if !head.eq_ignore_ascii_case("mailto:") {
        return None;
    }
    let addr: String = href[7..]
        .chars()
        .take_while(|&c| !(c == '"' || c == '\'' || c == '?' || c == '>' || c.is_whitespace()))
        .collect();
    let addr = addr.replace("%40", "@");
    addr.contains('@').then_some(addr)
}

/// The value of attribute `name` inside a tag (`a href="…"`), as written.
pub fn attribute(tag: &str, name: &str) -> Option<String> {
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

/// `s` with its character references decoded; an unknown one stays as written.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        match entity(rest) {
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

/// Decode the entity at the start of `s` ("&amp;", "&#233;", "&#xE9;"): (char, bytes used).
pub fn entity(s: &str) -> Option<(char, usize)> {
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

/// The one entity table: Latin-1 by position, then the typographic ones mail uses.
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
        "trade" => '™',
        "ensp" | "emsp" | "thinsp" => ' ',
        "zwnj" => '\u{200C}',
        "zwj" => '\u{200D}',
        "lrm" => '\u{200E}',
        "rlm" => '\u{200F}',
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

    fn text(html: &str) -> String {
        to_text(html, FOR_ATTRIBUTION).text
    }

    #[test]
    fn lines_rules_quotes_and_mailto() {
        let html = "<html><head><style>p{margin:0}</style></head><body><div>Hi&nbsp;team</div>\
            <div style=\"border:none;border-top:solid #E1E1E1 1.0pt\"><p><b>De&nbsp;:</b> Jean \
            &lt;<a href=\"mailto:jean@x.example\">jean@x.example</a>&gt;<br><b>Envoy&eacute;&nbsp;:\
            </b> lundi</p></div><a href='mailto:z@y.example?subject=x'>Zed</a><!-- a > b --></body>";
        assert_eq!(
            text(html),
            format!("Hi team\n{RULE_LINE}\nDe : Jean <jean@x.example>\nEnvoyé : lundi\nZed <z@y.example>\n")
        );
        assert_eq!(text("a < b && c <unclosed"), "a < b && c <unclosed");
        assert_eq!(
            text("Sure.<blockquote>From: x<br><blockquote>deep</blockquote></blockquote>"),
            "Sure.\n> From: x\n>> deep\n"
        );
        let deep = "<blockquote>".repeat(10_000) + "x";
        assert_eq!(text(&deep), ">>>>>>>> x");
    }

    #[test]
    fn cells_links_and_invisible_characters_for_verification() {
        let c = to_text(
            "<html><head><style>td{}</style><title>x</title></head><body><p>Code&nbsp;de&#32;v&eacute;rification&#xA0;:</p>\
             <td><b>48&#8203;2913</b></td><a href=\"https://x.example/v?a=1&amp;b=2\">Confirmer</a>\
             <blockquote>quoted 999999</blockquote><!-- <p>hidden</p> --><a href='https://x.example/unsub'>Se d&eacute;sabonner</a></body></html>",
            FOR_VERIFICATION,
        );
        assert_eq!(
            c.text,
            "Code de vérification :\n482913\nConfirmer\n> quoted 999999\nSe désabonner\n"
        );
        assert_eq!(c.links.len(), 2);
        assert_eq!(c.links[0].href, "https://x.example/v?a=1&b=2");
        assert_eq!(c.links[0].text, "Confirmer");
    }

    #[test]
    fn entities() {
        assert_eq!(
            decode_entities("a&amp;b &eacute; &#x41;&#66; &bogus; &"),
            "a&b é AB &bogus; &"
        );
        assert_eq!(entity("&#xFFFFFFFF;"), None);
        assert_eq!(entity("&Uuml;"), Some(('Ü', 6)));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for s in [
            "",
            "&",
            "&#;",
            "<",
            "<a href=",
            "<a href='",
            "<!--",
            "<style>",
            "<a href=\"mailto:",
            "</a>",
            "<pre>\n</pre>",
            "é<é>",
        ] {
            let _ = to_text(s, FOR_ATTRIBUTION);
            let _ = to_text(s, FOR_VERIFICATION);
            let _ = attribute(s, "href");
        }
    }
}
