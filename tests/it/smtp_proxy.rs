//! Transcript tests for a listener behind a load balancer speaking the PROXY protocol (HAProxy
//! spec v1 and v2): the header's source address becomes the client address everywhere (EHLO
//! reply, stored record, per-IP limits), and only trusted proxies may send one.
use crate::support;
use std::net::Ipv6Addr;

use support::*;
use tokio::net::TcpStream;

const HOSTED: &str = "support@demo.inbound.test";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A server whose only listener expects PROXY headers from `trusted` (TOML list items).
/// Sender authentication is off: the proxied addresses are not ours, and these tests must not
/// look anything up in DNS (the resolver points at a closed loopback port to be sure).
async fn proxy_server(trusted: &str, extra: &str) -> TestServer {
    let dir = TempDir::new("proxy");
    let cfg = ConfigBuilder::new(dir.path())
        .listener_toml(&format!(
            "addr = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [{trusted}]"
        ))
        .set("auth", "enabled = false")
        .set("dns", "nameservers = [\"127.0.0.1:9\"]")
        .inbox("demo", "support@demo.inbound.test")
        .extra(extra)
        .parse();
    TestServer::start_config(dir, cfg).await
}

fn v1(source: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {source} 192.0.2.25 {port} 25\r\n").into_bytes()
}

fn v2_tcp4(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[192, 0, 2, 25]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

fn v2_tcp6(source: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
    h.extend_from_slice(&source.octets());
    h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

/// Connect, send `header`, read the greeting.
async fn via_proxy(srv: &TestServer, header: &[u8]) -> Client<TcpStream> {
    let mut c = srv.connect().await;
    c.send_raw(header).await;
    c.expect("220").await;
    c
}

async fn deliver(srv: &TestServer, c: &mut Client<TcpStream>) -> inbound::store::MessageRecord {
    c.cmd("EHLO relay.example", "250").await;
    let r = c
        .send_message("a@example.com", &[HOSTED], &message("proxied"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    srv.ctx.store.get(&r.last_word()).unwrap().expect("stored")
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_header_sets_the_client_address() {
    let srv = proxy_server(r#""127.0.0.1""#, "").await;
    let mut c = via_proxy(&srv, &v1("203.0.113.9", 40000)).await;
    let ehlo = c.cmd("EHLO relay.example", "250").await;
    assert!(ehlo.lines[0].contains("[203.0.113.9]"), "{ehlo:?}");
    let rec = deliver(&srv, &mut c).await;
    assert_eq!(rec.client_ip, "203.0.113.9");
    assert_eq!(rec.client_port, 40000);
    assert!(
        rec.trace_headers.contains("[203.0.113.9]"),
        "{}",
        rec.trace_headers
    );

    // Header and the first command in one write: the command is not lost.
    let mut c = srv.connect().await;
    let mut w = v1("198.51.100.4", 1234);
    w.extend_from_slice(b"EHLO relay.example\r\n");
    c.send_raw(&w).await;
    c.expect("220").await;
    let ehlo = c.expect("250").await;
    assert!(ehlo.lines[0].contains("[198.51.100.4]"), "{ehlo:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_headers_for_ipv4_and_ipv6_set_the_client_address() {
    let srv = proxy_server(r#""127.0.0.0/8""#, "").await;
    let mut c = via_proxy(&srv, &v2_tcp4([203, 0, 113, 77], 5555)).await;
    let rec = deliver(&srv, &mut c).await;
    assert_eq!(
        (rec.client_ip.as_str(), rec.client_port),
        ("203.0.113.77", 5555)
    );

    let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let mut c = via_proxy(&srv, &v2_tcp6(v6, 6666)).await;
    let rec = deliver(&srv, &mut c).await;
    assert_eq!(
        (rec.client_ip.as_str(), rec.client_port),
        ("2001:db8::7", 6666)
    );

    // LOCAL (a health check): the proxy's own address stays.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let mut c = via_proxy(&srv, &local).await;
    let rec = deliver(&srv, &mut c).await;
    assert_eq!(rec.client_ip, "127.0.0.1");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_peer_is_refused_even_with_a_header() {
    let srv = proxy_server(r#""10.0.0.0/8""#, "").await;
    let mut c = srv.connect().await;
    c.send_raw(&v1("203.0.113.9", 40000)).await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    // Nor without one.
    let mut c = srv.connect().await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_malformed_header_closes_the_connection() {
    let srv = proxy_server(r#""127.0.0.1""#, "").await;
    for bad in [
        &b"EHLO client.example\r\n"[..],
        b"PROXY TCP4 not-an-ip 192.0.2.25 1 25\r\n",
        b"PROXY TCP6 203.0.113.9 192.0.2.25 1 25\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
    ] {
        let mut c = srv.connect().await;
        c.send_raw(bad).await;
        c.expect_closed().await;
    }
    assert!(srv.messages().is_empty());
    // The listener still serves well-formed connections.
    let mut c = via_proxy(&srv, &v1("203.0.113.9", 1)).await;
    deliver(&srv, &mut c).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_limits_apply_to_the_proxied_address() {
    let srv = proxy_server(
        r#""127.0.0.1""#,
        "[limits]\nmax_connections_per_ip = 1\nmessages_per_ip_per_minute = 1\n",
    )
    .await;
    // Every connection comes from 127.0.0.1, but they are three different clients to us.
    let mut a = via_proxy(&srv, &v1("203.0.113.9", 1)).await;
    let mut b = via_proxy(&srv, &v1("203.0.113.10", 2)).await;
    let mut c = srv.connect().await;
    c.send_raw(&v1("203.0.113.9", 3)).await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    // The message rate too: one for .9, one for .10.
    deliver(&srv, &mut a).await;
    deliver(&srv, &mut b).await;
    a.cmd("MAIL FROM:<a@example.com>", "451 4.7.1").await;
    b.cmd("MAIL FROM:<a@example.com>", "451 4.7.1").await;
    let mut d = via_proxy(&srv, &v1("203.0.113.11", 4)).await;
    let rec = deliver(&srv, &mut d).await;
    assert_eq!(rec.client_ip, "203.0.113.11");
    srv.stop().await;
}

/// Issue #11: a host holds a whole IPv6 /64 and rotated addresses to get past the per-IP limits.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_clients_in_one_64_share_the_per_ip_limits() {
    let srv = proxy_server(r#""127.0.0.1""#, "[limits]\nmax_connections_per_ip = 1\n").await;
    let mut a = via_proxy(&srv, &v2_tcp6("2001:db8:1:2::1".parse().unwrap(), 1)).await;
    // Another address of the same /64 is the same client.
    let mut c = srv.connect().await;
    c.send_raw(&v2_tcp6("2001:db8:1:2:ffff::9".parse().unwrap(), 2))
        .await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    // The next /64 is another client.
    let mut b = via_proxy(&srv, &v2_tcp6("2001:db8:1:3::1".parse().unwrap(), 3)).await;
    deliver(&srv, &mut a).await;
    deliver(&srv, &mut b).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ipv6_prefix_length_is_configurable() {
    let srv = proxy_server(
        r#""127.0.0.1""#,
        "[limits]\nmax_connections_per_ip = 1\nipv6_prefix_length = 128\n",
    )
    .await;
    let mut a = via_proxy(&srv, &v2_tcp6("2001:db8:1:2::1".parse().unwrap(), 1)).await;
    let mut b = via_proxy(&srv, &v2_tcp6("2001:db8:1:2::2".parse().unwrap(), 2)).await;
    deliver(&srv, &mut a).await;
    deliver(&srv, &mut b).await;
    srv.stop().await;
}
