//! DATA body bytes -> message bytes. RFC 5321 §4.1.1.4 (end of data), §4.5.2 (transparency).
//!
//! Rules, chosen for SMTP-smuggling safety and for real-world senders:
//! - The only terminator is `<CRLF>.<CRLF>`, where the CRLF before the dot is the previous line's
//!   real CRLF (or the end of the DATA command line). `<LF>.<LF>`, `<LF>.<CRLF>` and `<CR>.<CR>` are
//!   content, never an end: accepting them lets a sender hide a second message inside the first.
//! - A leading dot is removed from every line that has one (dot-unstuffing).
//! - Bare LF line endings are stored as CRLF, so the stored message has one line-ending
//!   convention (what DKIM canonicalisation and every parser expect); a bare CR is kept as it is.
//! - Text lines may be longer than RFC 5321's 1000 octets: RFC 5321 §4.5.3.1 asks receivers to
//!   impose no such limits where they can, and memory does not depend on line length here.
//! - Past `max_bytes` the parser keeps scanning for the terminator but stores nothing more.

use memchr::memchr2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `crlf` tells how the previous line ended.
    LineStart { crlf: bool },
    /// A dot at line start has been read (and dropped).
    Dot { crlf: bool },
    /// `.` then CR at line start.
    DotCr { crlf: bool },
    /// Inside a line.
    Mid,
    /// Inside a line, just after a CR.
    MidCr,
}

/// Incremental DATA decoder. Feed it every byte read after the 354 reply.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    max_bytes: u64,
    /// Bytes of message content seen (stored or not).
    total: u64,
}

impl DataDecoder {
    pub fn new(max_bytes: u64) -> DataDecoder {
        DataDecoder {
            state: State::LineStart { crlf: true },
            max_bytes,
            total: 0,
        }
    }

    /// Whether the content has run past the size cap (the message will be answered 552).
    pub fn overflowed(&self) -> bool {
        self.total > self.max_bytes
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        let room = self.max_bytes.saturating_sub(self.total);
        let keep = (bytes.len() as u64).min(room) as usize;
        out.extend_from_slice(&bytes[..keep]);
        self.total += bytes.len() as u64;
    }

    /// Decode `input` into `out`. Returns `Some(consumed)` when the terminator was found (the bytes
    /// after it belong to the next command), `None` when all of `input` was consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Mid => {
                    // Fast path: copy up to the next CR or LF in one go.
                    let rest = &input[i..];
                    match memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.emit(out, rest);
                            return None;
                        }
                        Some(p) => {
                            self.emit(out, &rest[..p]);
                            i += p;
                            let b = input[i];
                            i += 1;
                            if b == b'\r' {
                                self.emit(out, b"\r");
                                self.state = State::MidCr;
                            } else {
                                self.emit(out, b"\r\n");
                                self.state = State::LineStart { crlf: false };
                            }
                        }
                    }
                }
                State::MidCr => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\n' => {
                            self.emit(out, b"\n");
                            self.state = State::LineStart { crlf: true };
                        }
                        b'\r' => self.emit(out, b"\r"),
                        _ => {
                            self.emit(out, &[b]);
                            self.state = State::Mid;
                        }
                    }
                }
                State::LineStart { crlf } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'.' => self.state = State::Dot { crlf },
                        b'\r' => {
                            self.emit(out, b"\r");
                            self.state = State::MidCr;
                        }
                        b'\n' => self.emit(out, b"\r\n"),
                        _ => {
                            self.emit(out, &[b]);
                            self.state = State::Mid;
                        }
                    }
                }
                State::Dot { crlf } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\r' => self.state = State::DotCr { crlf },
                        b'\n' => {
                            // `.<LF>`: not a terminator; keep the line as a lone dot.
                            self.emit(out, b".\r\n");
                            self.state = State::LineStart { crlf: false };
                        }
                        _ => {
                            self.emit(out, &[b]);
                            self.state = State::Mid;
                        }
                    }
                }
                State::DotCr { crlf } => {
                    let b = input[i];
                    if b == b'\n' {
                        i += 1;
                        if crlf {
                            self.state = State::LineStart { crlf: true };
                            return Some(i);
                        }
                        // `<LF>.<CRLF>`: a smuggling attempt; the dot line stays content.
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { crlf: true };
                    } else {
                        // `.<CR>x`: the CR was content after an unstuffed dot; `x` is processed
                        // as the byte after a CR.
                        self.emit(out, b"\r");
                        self.state = State::MidCr;
                    }
                }
            }
        }
        None
    }
}

/// Message bytes -> the length of its header section (RFC 5322 §2.1: it ends at the first empty
/// line), counted while the message streams in so the cap on it is applied before the rest of
/// the message is stored. Fed the stored bytes of DATA (after unstuffing) or BDAT chunks.
#[derive(Debug, Default)]
pub struct HeaderMeter {
    state: MeterState,
    bytes: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum MeterState {
    #[default]
    LineStart,
    /// A CR at the start of a line: an LF now ends the header section.
    LineStartCr,
    Mid,
    /// The empty line has been seen; nothing more is counted.
    Done,
}

impl HeaderMeter {
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.state {
                MeterState::Done => return,
                MeterState::Mid => match memchr::memchr(b'\n', input) {
                    None => {
                        self.bytes += input.len() as u64;
                        return;
                    }
                    Some(i) => {
                        self.bytes += i as u64 + 1;
                        input = &input[i + 1..];
                        self.state = MeterState::LineStart;
                    }
                },
                state => {
                    let b = input[0];
                    input = &input[1..];
                    self.bytes += 1;
                    self.state = match (state, b) {
                        (_, b'\n') => MeterState::Done,
                        (MeterState::LineStart, b'\r') => MeterState::LineStartCr,
                        _ => MeterState::Mid,
                    };
                }
            }
        }
    }

    /// Bytes of the header section seen so far (all of it once `Done`).
    pub fn header_bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `chunks` fed one at a time; returns (message, bytes left after the terminator).
    fn decode(chunks: &[&[u8]]) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut d = DataDecoder::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            if let Some(n) = d.feed(c, &mut out) {
                return (out, Some(c[n..].to_vec()));
            }
        }
        (out, None)
    }

    fn bytewise(input: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (out, rest) = decode(&chunks);
        // Rest is per-chunk here; recompute the tail from the consumed length instead.
        (out, rest.map(|_| Vec::new()))
    }

    #[test]
    fn plain_message_and_terminator() {
        let (out, rest) = decode(&[b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"]);
        assert_eq!(out, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(rest.unwrap(), b"QUIT\r\n");
    }

    #[test]
    fn empty_message_terminates_immediately() {
        let (out, rest) = decode(&[b".\r\n"]);
        assert!(out.is_empty());
        assert_eq!(rest.unwrap(), b"");
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _) = decode(&[b"..leading\r\n...\r\n.\r\n"]);
        assert_eq!(out, b".leading\r\n..\r\n");
    }

    #[test]
    fn bare_lf_is_normalised_and_never_terminates() {
        let (out, rest) = decode(&[b"a\nb\n.\nc\r\n.\r\n"]);
        assert_eq!(out, b"a\r\nb\r\n.\r\nc\r\n");
        assert!(rest.is_some());
        // <LF>.<CRLF> (smuggling) is content as well.
        let (out, rest) = decode(&[b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n"]);
        assert_eq!(out, b"a\r\n.\r\nMAIL FROM:<x@y>\r\n");
        assert_eq!(rest.unwrap(), b"");
        // <CR>.<CR> too.
        let (out, _) = decode(&[b"a\r.\rb\r\n.\r\n"]);
        assert_eq!(out, b"a\r.\rb\r\n");
    }

    #[test]
    fn split_anywhere_gives_the_same_result() {
        let input = b"H: v\r\n\r\n..x\r\nline\nbare\r\n.\r\n";
        let whole = decode(&[input]).0;
        assert_eq!(bytewise(input).0, whole);
        for cut in 0..input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(decode(&[a, b]).0, whole, "cut at {cut}");
        }
    }

    #[test]
    fn overflow_counts_but_does_not_store() {
        let mut d = DataDecoder::new(10);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"0123456789abcdef\r\n", &mut out), None);
        assert!(d.overflowed());
        assert_eq!(out.len(), 10);
        assert!(d.feed(b".\r\n", &mut out).is_some());
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn header_meter_stops_at_the_first_empty_line_wherever_the_input_is_split() {
        let msg = b"A: 1\r\nB: 2\r\n continued\r\n\r\nbody\r\n\r\nmore\r\n";
        for cut in 0..msg.len() {
            let mut m = HeaderMeter::default();
            m.feed(&msg[..cut]);
            m.feed(&msg[cut..]);
            assert_eq!(m.header_bytes(), 26, "cut at {cut}");
        }
        let mut m = HeaderMeter::default();
        m.feed(b"A: 1\n\nbody");
        assert_eq!(m.header_bytes(), 6);
        let mut m = HeaderMeter::default();
        m.feed(&[b'x'; 1000]);
        assert_eq!(
            m.header_bytes(),
            1000,
            "no empty line yet: all of it is header"
        );
    }

    #[test]
    fn long_lines_are_accepted() {
        let line = vec![b'x'; 100_000];
        let mut input = line.clone();
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, rest) = decode(&[&input]);
        assert!(rest.is_some());
        assert_eq!(&out[..100_000], &line[..]);
    }
}
