//! PROXY protocol header (HAProxy spec, versions 1 and 2) -> the real client address.
//! Accepted only on listeners configured for it and only from trusted proxy addresses (the
//! listener checks that before calling `read_header`): anyone else could claim any address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
/// We never accept a v2 header with more than this many bytes of addresses and TLVs.
const V2_MAX_PAYLOAD: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("no PROXY header within the timeout")]
    Timeout,
    #[error("connection closed before the PROXY header ended")]
    Closed,
    #[error("I/O error reading the PROXY header: {0}")]
    Io(String),
}

/// What the header said. `None` source: a `LOCAL`/`UNKNOWN` connection (health checks), which
/// keeps the proxy's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
}

/// Parse a header at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ProxyError::NotProxy);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX {
        return Err(ProxyError::Malformed("v1 line too long"));
    }
    let line = std::str::from_utf8(&buf[prefix.len()..end])
        .map_err(|_| ProxyError::Malformed("v1 not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["UNKNOWN", ..] => ProxyHeader { source: None },
        [proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source address"))?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Malformed("v1 address family mismatch"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source port"))?;
            ProxyHeader {
                source: Some(SocketAddr::new(ip, port)),
            }
        }
        _ => return Err(ProxyError::Malformed("v1 fields")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(12);
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::NotProxy);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::Malformed("v2 payload too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let payload = &buf[16..16 + len];
    let header = match ver_cmd & 0x0f {
        0x0 => ProxyHeader { source: None }, // LOCAL
        0x1 => match fam >> 4 {
            0x1 if payload.len() >= 12 => {
                let ip = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
                let port = u16::from_be_bytes([payload[8], payload[9]]);
                ProxyHeader {
                    source: Some(SocketAddr::new(IpAddr::V4(ip), port)),
                }
            }
            0x2 if payload.len() >= 36 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&payload[..16]);
                let port = u16::from_be_bytes([payload[32], payload[33]]);
                ProxyHeader {
                    source: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)),
                }
            }
            0x0 => ProxyHeader { source: None },
            0x1 | 0x2 => return Err(ProxyError::Malformed("v2 address block too short")),
            _ => ProxyHeader { source: None }, // AF_UNIX: no IP to report
        },
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Some((header, 16 + len)))
}

/// Read a PROXY header from the start of a connection. Returns the header and any bytes the
/// client sent after it (the session starts with them).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(ProxyHeader, Vec<u8>), ProxyError> {
    let mut buf = Vec::with_capacity(128);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = [0u8; 512];
    loop {
        if let Some((header, used)) = parse(&buf)? {
            return Ok((header, buf.split_off(used)));
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| ProxyError::Timeout)?
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_leftover() {
        let (h, used) = parse(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nEHLO x\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("203.0.113.7:40000".parse().unwrap()));
        assert_eq!(used, 43);
    }

    #[test]
    fn v1_partial_unknown_and_bad() {
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0.source, None);
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n").is_err());
        assert_eq!(parse(b"EHLO x\r\n"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v2_tcp6() {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&[0u8; 16]);
        b.extend_from_slice(&4242u16.to_be_bytes());
        b.extend_from_slice(&25u16.to_be_bytes());
        let (h, used) = parse(&b).unwrap().unwrap();
        assert_eq!(h.source, Some(SocketAddr::new(IpAddr::V6(src), 4242)));
        assert_eq!(used, b.len());
        assert_eq!(parse(&b[..20]).unwrap(), None);
    }
}
