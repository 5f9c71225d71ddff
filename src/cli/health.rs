//! `inbound health`: GET the API's `/healthz` on this machine and exit 0 on `200`, 1 otherwise;
//! the container image's HEALTHCHECK, and a probe for scripts. HTTP/1.1 by hand (RFC 9112 §3):
//! the image has no curl, and one request needs no client library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::load_config;

/// Connect, write and read deadlines: a probe that hangs is a failed probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probe `api` (default: the found config's `api.listen`, a wildcard read as loopback).
pub fn run(api: Option<SocketAddr>) -> Result<ExitCode> {
    let mut addr = match api {
        Some(a) => a,
        None => load_config(None)?.api.listen,
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .with_context(|| format!("connecting to the API at {addr}"))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    // The status line fits in the first few hundred bytes; `take` bounds what a wrong peer
    // could make us buffer.
    (&mut stream)
        .take(4096)
        .read_to_end(&mut head)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let status = String::from_utf8_lossy(&head);
    let line = status.lines().next().unwrap_or_default();
    if line.split_whitespace().nth(1) == Some("200") {
        println!("healthy ({addr}: {line})");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("unhealthy ({addr}: {line:?})");
        Ok(ExitCode::FAILURE)
    }
}
