//! Value syntaxes every section shares: durations ("30s", "5m"), IP networks in CIDR notation,
//! mail addresses and domains. Each parser says what it accepts; the sections say where.

use std::net::IpAddr;
use std::time::Duration;

/// Read a secret file (`relay.password_file`, `webhook[].secret_file`, `api.token_files`). A path
/// starting with `$CREDENTIALS_DIRECTORY/` is read from the directory systemd's `LoadCredential=`
/// fills (deploy/inbound.service): with `DynamicUser=yes` the service cannot read root-owned
/// files under /etc, but it can read its own credentials. Errors are the text for the key path.
pub fn read_secret_file(path: &str) -> Result<String, String> {
    const VAR: &str = "$CREDENTIALS_DIRECTORY/";
    let resolved = match path.strip_prefix(VAR) {
        None => std::path::PathBuf::from(path),
        Some(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => std::path::Path::new(&dir).join(name),
            None => {
                return Err(format!(
                    "{path:?} needs $CREDENTIALS_DIRECTORY, which is not set (systemd sets it for \
                     LoadCredential=; elsewhere set it to the directory holding {name:?})"
                ))
            }
        },
    };
    std::fs::read_to_string(&resolved).map_err(|e| format!("cannot read {resolved:?}: {e}"))
}

/// `local@domain` split at the last `@`; `None` when either side is empty.
pub fn split_address(address: &str) -> Option<(&str, &str)> {
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`), or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are IPv4 for every check we make.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parse "90s", "5m", "1h", "250ms", "2d"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// A domain in the one form every comparison uses: lower case, no final dot, and U-labels for
/// internationalised names (RFC 5890), so `xn--bcher-kva.example` and `bücher.example` are the
/// same domain in RCPT, config and API. A name IDNA cannot map is only lower-cased.
pub fn normalize_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.');
    let lower = d.to_lowercase();
    if lower.is_ascii() && !lower.contains("xn--") {
        return lower;
    }
    match idna::domain_to_unicode(d) {
        (u, Ok(())) => u,
        _ => lower,
    }
}

/// `local@domain` in lower case, without a final dot on the domain; `None` when it is not an
/// address.
pub fn normalize_address(address: &str) -> Option<String> {
    let (local, domain) = split_address(address.trim())?;
    if local.contains(char::is_whitespace)
        || domain.contains(char::is_whitespace)
        || !domain.contains('.')
    {
        return None;
    }
    Some(format!(
        "{}@{}",
        local.to_lowercase(),
        normalize_domain(domain)
    ))
}

/// Domains in lower case, without a final dot.
pub fn domains(list: &[String]) -> Vec<String> {
    list.iter().map(|d| normalize_domain(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.9.9".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("1.2.3.4/33").is_none());
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("x"), None);
    }
}
