//! Small helpers shared by several stages: RFC 5322 dates, hex, SHA-256, domain relations
//! (within, organizational domain by the Public Suffix List).

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `Sun, 22 Nov 2026 16:05:30 +0000` (RFC 5322 §3.3), in UTC.
pub fn rfc5322_date(unix_ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = (unix_ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2026-11-22T16:05:30Z` (RFC 3339), in UTC.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Whether `domain` is `parent` or one of its subdomains, ignoring case and a final dot:
/// `mx.google.com` is within `google.com`; `evilgoogle.com` is not.
pub fn domain_within(domain: &str, parent: &str) -> bool {
    let d = domain.trim_end_matches('.');
    let p = parent.trim_end_matches('.');
    if d.len() == p.len() {
        return d.eq_ignore_ascii_case(p);
    }
    d.len() > p.len()
        && d.as_bytes()[d.len() - p.len() - 1] == b'.'
        && d[d.len() - p.len()..].eq_ignore_ascii_case(p)
}

/// The organizational domain of `domain` (RFC 7489 §3.2): its registrable part by the Public
/// Suffix List (the `psl` crate embeds the list, private section included), lowercased, without a
/// final dot. `mail.victim.co.uk` -> `victim.co.uk`, `a.b.github.io` -> `b.github.io`; a public
/// suffix itself (`co.uk`), a single label or an empty name is its own organizational domain.
/// The one place that answers this question: auth alignment, verification, attribution.
pub fn org_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    match psl::domain_str(&d) {
        Some(org) => org.to_string(),
        None => d,
    }
}

/// Relaxed alignment (RFC 7489 §3.1): both names non-empty with the same organizational domain.
/// `attacker.co.uk` is not aligned with `victim.co.uk`.
pub fn relaxed_aligned(a: &str, b: &str) -> bool {
    !a.trim_end_matches('.').is_empty()
        && !b.trim_end_matches('.').is_empty()
        && org_domain(a) == org_domain(b)
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Equality of two byte strings in time independent of where they differ (for secrets: tokens,
/// code digests): every byte is looked at and the differences are folded before one comparison.
/// Only the length may show.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Create `dir` (and its parents) readable by our user only, and make it so if it exists: mail
/// and its records are nobody else's business, whatever the umask.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Files and directories this process creates from now on are private (0600/0700), including
/// those a library creates for us (sled's). Called first thing by the CLI, as Postfix's master
/// sets `umask 077`.
pub fn private_umask() {
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Give the heap's free pages back to the kernel (glibc's `malloc_trim(0)`); elsewhere a no-op.
///
/// glibc returns freed memory only from the top of each arena, so what a burst freed in the
/// middle (the snapshot sled reads while opening the store, the nodes a page split copies,
/// a batch of message buffers) stays resident until something else reuses it. Measured on a
/// store of 200,000 messages (#11): 10 MiB of a 77 MiB RSS were free heap pages. Called once
/// after the store opens and from the server's minute tick; it walks the arenas, taking each
/// one's lock for a moment, so it runs on a blocking thread there.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganises the allocator's own free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `url` with the password of its userinfo replaced by `***` (`postgres://u:***@host/db`), for
/// messages and logs. A URL without a password is returned as it is.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }

    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_363_530_000),
            "Sun, 22 Nov 2026 16:05:30 +0000"
        );
        assert_eq!(rfc3339(1_795_363_530_000), "2026-11-22T16:05:30Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn base64_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn domains() {
        assert!(domain_within("mx.Google.com.", "google.com"));
        assert!(domain_within("google.com", "GOOGLE.COM"));
        assert!(!domain_within("evilgoogle.com", "google.com"));
        assert!(!domain_within("com", "google.com"));
    }

    #[test]
    fn organizational_domains_follow_the_public_suffix_list() {
        for (name, org) in [
            ("mail.victim.co.uk", "victim.co.uk"),
            ("attacker.co.uk", "attacker.co.uk"),
            ("co.uk", "co.uk"),
            ("shop.example.com.au", "example.com.au"),
            ("victim.github.io", "victim.github.io"),
            ("a.b.victim.github.io", "victim.github.io"),
            ("Mail.ACME.example.", "acme.example"),
            ("a.b.acme.com", "acme.com"),
            ("com", "com"),
            ("", ""),
        ] {
            assert_eq!(org_domain(name), org, "{name}");
        }
        assert!(relaxed_aligned("mail.acme.example", "acme.example"));
        assert!(relaxed_aligned("bounce.victim.co.uk", "victim.co.uk"));
        assert!(!relaxed_aligned("attacker.co.uk", "victim.co.uk"));
        assert!(!relaxed_aligned("attacker.com.au", "victim.com.au"));
        assert!(!relaxed_aligned("attacker.github.io", "victim.github.io"));
        assert!(!relaxed_aligned("co.uk", "victim.co.uk"));
        assert!(!relaxed_aligned("", ""));
    }

    #[test]
    fn hashes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://inbound:s3cr@t:x@db.example:5432/mail?sslmode=disable"),
            "postgres://inbound:***@db.example:5432/mail?sslmode=disable"
        );
        assert_eq!(
            mask_url_password("postgres://inbound@127.0.0.1/mail"),
            "postgres://inbound@127.0.0.1/mail"
        );
        assert_eq!(mask_url_password("not a url"), "not a url");
    }
}
