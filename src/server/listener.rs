//! TCP accept -> a session task. A permit is taken before `accept` (a full server stops growing),
//! the PROXY header is read where configured, per-IP limits are applied to the real client
//! address, and STARTTLS moves the session onto a rustls stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use super::proxy;
use super::Ctx;
use crate::config::ListenerConfig;
use crate::limits::{Admission, Refusal};
use crate::metrics::ConnectionRefusal;
use crate::smtp::reply::Reply;
use crate::smtp::session::{tls_version_name, Outcome, Session};

/// Connections the kernel queues before `accept` (tokio's own default for `TcpListener::bind`).
/// When full, new SYNs wait or are dropped by the kernel until the accept loop catches up.
const BACKLOG: i32 = 1024;

/// Bind a listening socket. An IPv6 address is bound IPv6-only (`IPV6_V6ONLY`), whatever the
/// host's `net.ipv6.bindv6only`: with Linux's default (0) `[::]:25` would also claim IPv4 port 25,
/// and a config listening on `0.0.0.0:25` and `[::]:25` could not start. IPv4 clients reach the
/// IPv4 listener; each family is configured explicitly.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // As tokio's bind does: a restarted server can listen again while old connections linger in
    // TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// How long a trusted proxy has to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(
    socket: TcpListener,
    lcfg: ListenerConfig,
    ctx: Arc<Ctx>,
    done: mpsc::Sender<()>,
) {
    let lcfg = Arc::new(lcfg);
    let mut shutdown = ctx.shutdown.clone();
    // Readiness counts running accept loops; this one stops counting when it returns.
    let _running = ctx.health.listener_running();
    loop {
        // `biased`: shutdown is checked first. A connection waiting in the backlog when shutdown
        // begins would otherwise win half the time and be greeted 220 only to get 421 at once.
        let admission = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            a = ctx.limits.admit() => a,
        };
        let permit = match admission {
            Admission::Closed => break,
            a => a,
        };
        let (stream, addr) = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The permit was chosen before `accept`: if the server was full then but a session has
        // ended while we waited for this connection, serve it.
        let permit = match permit {
            Admission::Busy(p) => match ctx.limits.try_session() {
                Some(session) => Admission::Session(session),
                None => Admission::Busy(p),
            },
            other => other,
        };
        // Shutdown began while this connection waited in `accept`: a 421 now rather than a
        // greeting followed at once by one.
        if shutdown.is_triggered() {
            ctx.metrics
                .connections_refused
                .inc(ConnectionRefusal::Shutdown);
            tokio::spawn(async move {
                refuse(stream, Reply::SHUTTING_DOWN).await;
                drop(permit);
            });
            break;
        }
        match permit {
            Admission::Busy(p) => {
                ctx.metrics
                    .connections_refused
                    .inc(ConnectionRefusal::MaxConnections);
                tokio::spawn(async move {
                    info!(peer = %addr, "refused: server at max_connections");
                    refuse(stream, Reply::TOO_MANY_CONNECTIONS).await;
                    drop(p);
                });
            }
            Admission::Session(p) => {
                let (ctx, lcfg, done) = (ctx.clone(), lcfg.clone(), done.clone());
                let span =
                    tracing::info_span!("smtp", peer = %addr, client = tracing::field::Empty);
                tokio::spawn(
                    async move {
                        handle(stream, addr, p, ctx, &lcfg).await;
                        drop(done);
                    }
                    .instrument(span),
                );
            }
            Admission::Closed => break,
        }
    }
}

async fn refuse(mut stream: TcpStream, reply: Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn handle(
    mut stream: TcpStream,
    addr: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    ctx: Arc<Ctx>,
    lcfg: &ListenerConfig,
) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let (peer, early) = if lcfg.proxy_protocol {
        if !lcfg.trusted_proxies.iter().any(|n| n.contains(addr.ip())) {
            ctx.metrics
                .connections_refused
                .inc(ConnectionRefusal::UntrustedProxy);
            warn!("PROXY listener: connection from an untrusted address refused");
            refuse(stream, Reply::UNTRUSTED_PROXY).await;
            return;
        }
        match proxy::read_header(&mut stream, PROXY_HEADER_TIMEOUT).await {
            Ok((header, rest)) => (header.source.unwrap_or(addr), rest),
            Err(e) => {
                ctx.metrics
                    .connections_refused
                    .inc(ConnectionRefusal::ProxyHeader);
                warn!(error = %e, "bad PROXY header; closing");
                return;
            }
        }
    } else {
        (addr, Vec::new())
    };
    tracing::Span::current().record("client", tracing::field::display(peer.ip()));
    let _guard = match ctx.limits.register(peer.ip(), permit) {
        Ok(g) => g,
        Err(refusal) => {
            let (reply, reason) = match refusal {
                Refusal::TooManyFromIp => (Reply::TOO_MANY_FROM_IP, ConnectionRefusal::PerIp),
                Refusal::RateFromIp => (Reply::CONNECTION_RATE, ConnectionRefusal::Rate),
            };
            ctx.metrics.connections_refused.inc(reason);
            info!(reason = ?refusal, "connection refused");
            refuse(stream, reply).await;
            return;
        }
    };
    ctx.metrics.connections_accepted.inc();
    info!("connection opened");
    let mut session = Session::new(stream, ctx.clone(), peer, early);
    let result = match session.greet_and_run().await {
        Ok(Outcome::StartTls) => {
            let (stream, state) = session.into_parts();
            // STARTTLS is only answered 220 when an acceptor exists; only a reload that
            // disabled TLS in between can take it away (the client then retries).
            let Some(acceptor) = ctx.tls() else {
                return;
            };
            let timeout = ctx.limits.cfg.command_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let version = tls_version_name(tls.get_ref().1.protocol_version());
                    info!(tls = %version, "TLS established");
                    let mut session = Session::resume(tls, state, version);
                    session.run().await.map(|_| ())
                }
                Ok(Err(e)) => {
                    info!(error = %e, "TLS handshake failed");
                    Ok(())
                }
                Err(_) => {
                    info!("TLS handshake timed out");
                    Ok(())
                }
            }
        }
        Ok(Outcome::Closed) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        info!(error = %e, "session ended with an error");
    }
    info!(
        duration_ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
}
