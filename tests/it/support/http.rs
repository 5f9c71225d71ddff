//! A tiny HTTP/1.1 client over a tokio `TcpStream` (one request per connection,
//! `Connection: close`), and `Api`: that client pointed at a TestServer's API, which checks every
//! answer it gets against the server's own `/openapi.json` (the documented status, and for JSON
//! the schema), so every API test is also a test of the document.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::schema;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.code` of an error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error answer: {}", self.json()))
            .to_string()
    }

    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Send one request and read the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect to the API");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write request");
    if let Some(b) = body {
        s.write_all(b).await.expect("write body");
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("the API answers within 30 s")
        .expect("read answer");
    parse(&raw)
}

fn parse(raw: &[u8]) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of header in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("header is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let rest = &raw[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("content-length");
        assert_eq!(rest.len(), len, "body length differs from Content-Length");
        rest.to_vec()
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&data[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A client of one server's API that validates every answer against `/openapi.json`.
pub struct Api {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub spec: Value,
}

impl Api {
    /// Fetch the document (it needs no token) and keep it for the checks.
    pub async fn new(addr: SocketAddr, token: Option<&str>) -> Api {
        let r = request(addr, "GET", "/openapi.json", &[], None).await;
        assert_eq!(r.status, 200, "GET /openapi.json");
        assert_eq!(r.header("content-type"), Some("application/json"));
        Api {
            addr,
            token: token.map(str::to_string),
            spec: r.json(),
        }
    }

    /// The same server, another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            addr: self.addr,
            token: token.map(str::to_string),
            spec: self.spec.clone(),
        }
    }

    pub async fn call(&self, method: &str, target: &str, body: Option<&Value>) -> HttpResponse {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        self.call_raw(method, target, bytes.as_deref()).await
    }

    /// Send a body as it is (malformed JSON tests).
    pub async fn call_raw(&self, method: &str, target: &str, body: Option<&[u8]>) -> HttpResponse {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let r = request(self.addr, method, target, &headers, body).await;
        if let Err(e) = schema::check_response(&self.spec, method, target, &r) {
            panic!("{method} {target}: the answer does not match /openapi.json: {e}");
        }
        r
    }

    pub async fn get(&self, target: &str) -> HttpResponse {
        self.call("GET", target, None).await
    }

    pub async fn post(&self, target: &str, body: Option<&Value>) -> HttpResponse {
        self.call("POST", target, body).await
    }

    /// GET expecting 200; the JSON body.
    pub async fn ok(&self, target: &str) -> Value {
        let r = self.get(target).await;
        assert_eq!(
            r.status,
            200,
            "GET {target}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }
}
