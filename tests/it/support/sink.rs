//! Loopback receivers for what inbound sends out: a minimal SMTP server (`SmtpSink`, the relay
//! in outbound tests; optional STARTTLS with a self-signed certificate and AUTH PLAIN) and a
//! minimal HTTP/1.1 server (`HttpSink`, the webhook endpoint). Both record what they received
//! and can be told to refuse, so tests can drive retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A loopback port that nothing listens on (for "the relay is down").
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    /// The user of AUTH PLAIN, if the client authenticated.
    pub auth_user: Option<String>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// A header field's unfolded value.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                return value;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case(name) {
                    value = Some(v.trim().to_string());
                }
            }
        }
        value
    }
}

#[derive(Clone, Default)]
pub struct SmtpSinkOptions {
    /// Offer STARTTLS (self-signed certificate).
    pub starttls: bool,
    /// Require AUTH PLAIN with this user and password before MAIL.
    pub auth: Option<(String, String)>,
    /// Reply to the end of DATA with this instead of 250 (e.g. "451 4.3.0 try later").
    pub data_reply: Option<String>,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    pub async fn start(opts: SmtpSinkOptions) -> SmtpSink {
        Self::start_on(0, opts).await
    }

    /// Listen on a given loopback port (0: any).
    pub async fn start_on(port: u16, opts: SmtpSinkOptions) -> SmtpSink {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("sink binds");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let tls = opts.starttls.then(|| {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                .unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let rec = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rec, opts, tls) = (rec.clone(), opts.clone(), tls.clone());
                tokio::spawn(async move {
                    let _ = smtp_session(stream, rec, opts, tls).await;
                });
            }
        });
        SmtpSink {
            addr,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` messages arrived (or panic after `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("expected {n} messages at the sink, got {}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stop listening (the port is closed).
    pub fn stop(self) {
        self.task.abort();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn smtp_session(
    stream: TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    opts: SmtpSinkOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    let mut in_tls = false;
    let mut authed: Option<String> = None;
    io.get_mut().write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut mail_from = String::new();
    let mut rcpt = Vec::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let verb = cmd
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let mut caps = vec!["250-sink.test".to_string(), "250-8BITMIME".into()];
                if tls.is_some() && !in_tls {
                    caps.push("250-STARTTLS".into());
                }
                if opts.auth.is_some() {
                    caps.push("250-AUTH PLAIN".into());
                }
                caps.push("250 SIZE 100000000".into());
                caps.join("\r\n") + "\r\n"
            }
            "HELO" => "250 sink.test\r\n".into(),
            "STARTTLS" if tls.is_some() && !in_tls => {
                io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                let plain = io.into_inner();
                let acceptor = tls.clone().unwrap();
                let tls_stream = acceptor.accept(plain).await?;
                io = BufReader::new(Box::new(tls_stream));
                in_tls = true;
                continue;
            }
            "AUTH" => {
                let parts: Vec<&str> = cmd.split_whitespace().collect();
                let blob = parts.get(2).copied().unwrap_or_default();
                let decoded = decode_base64(blob);
                let fields: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
                match (&opts.auth, fields.as_slice()) {
                    (Some((u, p)), [_, user, pass])
                        if *user == u.as_bytes() && *pass == p.as_bytes() =>
                    {
                        authed = Some(u.clone());
                        "235 2.7.0 ok\r\n".into()
                    }
                    _ => "535 5.7.8 bad credentials\r\n".into(),
                }
            }
            "MAIL" => {
                if opts.auth.is_some() && authed.is_none() {
                    "530 5.7.0 authentication required\r\n".into()
                } else {
                    mail_from = between(&cmd, '<', '>');
                    rcpt.clear();
                    "250 2.1.0 ok\r\n".into()
                }
            }
            "RCPT" => {
                rcpt.push(between(&cmd, '<', '>'));
                "250 2.1.5 ok\r\n".into()
            }
            "DATA" => {
                io.get_mut().write_all(b"354 go\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    if l.starts_with(b"..") {
                        l.remove(0);
                    }
                    data.extend_from_slice(&l);
                }
                match &opts.data_reply {
                    Some(r) => format!("{r}\r\n"),
                    None => {
                        received.lock().unwrap().push(Received {
                            mail_from: mail_from.clone(),
                            rcpt: rcpt.clone(),
                            data,
                            tls: in_tls,
                            auth_user: authed.clone(),
                        });
                        "250 2.0.0 queued\r\n".into()
                    }
                }
            }
            "RSET" => {
                rcpt.clear();
                "250 ok\r\n".into()
            }
            "NOOP" => "250 ok\r\n".into(),
            "QUIT" => {
                io.get_mut().write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.1 unknown\r\n".into(),
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
        io.get_mut().flush().await?;
    }
}

fn between(s: &str, a: char, b: char) -> String {
    s.split_once(a)
        .and_then(|(_, r)| r.split_once(b))
        .map(|(m, _)| m.to_string())
        .unwrap_or_default()
}

fn decode_base64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = A.iter().position(|&x| x == c) else {
            continue;
        };
        buf = (buf << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// One HTTP request the webhook receiver got.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub target: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status we answered.
    pub status: u16,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook endpoint on loopback: records every request, answers each with the next status
/// from `statuses` (then 200 once they run out).
pub struct HttpSink {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
    statuses: Arc<Mutex<std::collections::VecDeque<u16>>>,
    task: JoinHandle<()>,
}

impl HttpSink {
    pub async fn start_on(port: u16, statuses: &[u16]) -> HttpSink {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("http sink binds");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new(statuses.iter().copied().collect()));
        let (req2, st2) = (requests.clone(), statuses.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, s) = (req2.clone(), st2.clone());
                tokio::spawn(async move {
                    let _ = http_exchange(stream, r, s).await;
                });
            }
        });
        HttpSink {
            addr,
            requests,
            statuses,
            task,
        }
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests we answered with 2xx.
    pub fn accepted(&self) -> Vec<HttpRequest> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Forget the statuses still queued: every later request is answered 200.
    pub fn clear_statuses(&self) {
        self.statuses.lock().unwrap().clear();
    }

    pub fn push_statuses(&self, statuses: &[u16]) {
        self.statuses
            .lock()
            .unwrap()
            .extend(statuses.iter().copied());
    }

    /// Wait until at least `n` requests were answered with 2xx.
    pub async fn wait_accepted(&self, n: usize, limit: Duration) -> Vec<HttpRequest> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "expected {n} accepted webhook calls, got {} (of {} requests)",
                    got.len(),
                    self.requests().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn http_exchange(
    stream: TcpStream,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
    statuses: Arc<Mutex<std::collections::VecDeque<u16>>>,
) -> std::io::Result<()> {
    let mut io = BufReader::new(stream);
    let mut line = String::new();
    io.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if io.read_line(&mut h).await? == 0 {
            return Ok(());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
    requests.lock().unwrap().push(HttpRequest {
        method,
        target,
        headers,
        body,
        status,
    });
    let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    io.get_mut().write_all(reply.as_bytes()).await?;
    io.get_mut().shutdown().await
}
