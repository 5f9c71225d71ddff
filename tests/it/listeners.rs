//! Binding listeners as `config/inbound.toml` does: `0.0.0.0:PORT` and `[::]:PORT` together
//! (issue #16: with Linux's default bindv6only=0 the second bind failed and the server looped).

use std::net::{SocketAddr, TcpListener};

use crate::support::{Client, TempDir, TestServer};

/// A port free on both families right now (the test binds it again at once).
fn free_dual_port() -> u16 {
    loop {
        let v4 = TcpListener::bind("0.0.0.0:0").expect("bind v4");
        let port = v4.local_addr().expect("addr").port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test]
async fn ipv4_and_ipv6_wildcards_bind_the_same_port_and_both_answer() {
    let port = free_dual_port();
    let dir = TempDir::new("dual");
    let cfg = crate::support::ConfigBuilder::test(dir.path())
        .listener(&format!("0.0.0.0:{port}"))
        .add_listener(&format!("[::]:{port}"))
        .parse();
    let server = TestServer::start_config(dir, cfg).await;
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        let mut c = Client::connect(addr).await;
        c.expect("220").await;
        c.cmd("QUIT", "221").await;
    }
    server.stop().await;
}
