//! Test name server -> DNS answers on 127.0.0.1. RFC 1034 §4.3.2 (authoritative lookup), RFC 2308
//! (negative answers).
//!
//! `TestDns` is an in-process authoritative server built on hickory-server: UDP and TCP on one
//! ephemeral loopback port, serving exactly the records a test adds (at any time, also while it
//! runs) and nothing else. It is authoritative for the whole tree, so its answers are final:
//!
//! - a name with no records answers NXDOMAIN; a name that has records of other types answers
//!   NOERROR with no answer (NODATA). SPF ("void lookups", RFC 7208 §4.6.4) and DMARC (the
//!   organizational-domain fallback) depend on that distinction. Both carry an SOA of the root in
//!   the authority section, as RFC 2308 asks, with the current TTL as negative TTL;
//! - a CNAME is followed through the server's own data (at most 8 links) like any in-zone alias;
//! - TXT text longer than 255 bytes becomes several character-strings of one record (RFC 1035
//!   §3.3.14); clients join them (RFC 7208 §3.3, RFC 6376 §3.6.2.2). DKIM keys need this;
//! - answers too big for the client's UDP payload size come back truncated, and the client retries
//!   over TCP on the same port.
//!
//! Failure modes: `set_mode(Mode::Down)` drops every query (the client times out),
//! `Mode::Slow(d)` answers after `d`, `Mode::ServFail` answers SERVFAIL; `add_timeout(name)` drops
//! only the queries for one name whose type has no records there. Every query is counted and logged
//! first, whatever the mode, so tests can assert caching (`queries()`, `queries_for()`).
//!
//! The server stops when the `TestDns` is dropped. It never forwards anything: all traffic stays on
//! 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use mail_auth::hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::MessageAuthenticator;
use tokio::task::JoinHandle;

/// How the server answers, for every name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answer from the data.
    #[default]
    Normal,
    /// Drop every query without an answer: the client times out. The query is still counted.
    Down,
    /// Answer from the data after this delay.
    Slow(Duration),
    /// Answer SERVFAIL to everything.
    ServFail,
}

/// Longest CNAME chain the server follows before it answers with what it has; a loop in the
/// test data ends there too.
const MAX_CNAME_LINKS: usize = 8;

/// TTL of records added before any `set_ttl`.
const DEFAULT_TTL_SECS: u32 = 300;

/// Largest character-string in a TXT record (its length is one octet).
const TXT_STRING_MAX_BYTES: usize = 255;

/// How long a resolver from `resolver_opts()` waits for one answer before it gives up.
pub const RESOLVER_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct TestDns {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

/// One query as the server received it, name lowercased without the final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedQuery {
    pub name: String,
    pub rtype: RecordType,
    /// Came over TCP (a retry after a truncated UDP answer), not UDP.
    pub tcp: bool,
}

#[derive(Default)]
struct State {
    /// Records by owner name (lowercase, no final dot). Order within a name is insertion order.
    zone: RwLock<HashMap<String, Vec<RData>>>,
    /// Names whose queries are dropped when the name has no record of the queried type.
    timeouts: RwLock<HashSet<String>>,
    mode: Mutex<Mode>,
    ttl_secs: AtomicU32,
    queries: AtomicUsize,
    log: Mutex<Vec<LoggedQuery>>,
}

impl TestDns {
    /// Bind UDP and TCP on the same ephemeral port of 127.0.0.1 and start serving (empty: every
    /// name is NXDOMAIN).
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp local addr");
        let state = Arc::new(State {
            ttl_secs: AtomicU32::new(DEFAULT_TTL_SECS),
            ..State::default()
        });
        let mut server = Server::new(Handler(state.clone()));
        server.register_socket(udp);
        // An idle TCP connection is closed after 10 s; at most 64 answers queue per connection.
        server.register_listener(tcp, Duration::from_secs(10), 64);
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        TestDns { addr, state, task }
    }

    /// The server's address (UDP and TCP), e.g. for a config's `nameservers = ["127.0.0.1:PORT"]`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A resolver configuration whose only name server is this one, over UDP and TCP.
    pub fn resolver_config(&self) -> ResolverConfig {
        let mut ns = NameServerConfig::udp_and_tcp(self.addr.ip());
        for conn in &mut ns.connections {
            conn.port = self.addr.port();
        }
        ResolverConfig::from_name_servers(vec![ns])
    }

    /// Resolver options for tests: one try of `RESOLVER_TIMEOUT` per query (so `Mode::Down`
    /// fails fast) and no hosts file. hickory's own answer cache stays on, as in production.
    pub fn resolver_opts() -> ResolverOpts {
        let mut opts = ResolverOpts::default();
        opts.timeout = RESOLVER_TIMEOUT;
        opts.attempts = 1;
        opts.use_hosts_file = ResolveHosts::Never;
        opts
    }

    /// A mail-auth authenticator that asks only this server.
    pub fn authenticator(&self) -> MessageAuthenticator {
        MessageAuthenticator::new(self.resolver_config(), Self::resolver_opts())
            .expect("build resolver for TestDns")
    }

    /// TXT record; text over 255 bytes is split into several character-strings of one record.
    pub fn add_txt(&self, name: &str, text: &str) {
        let strings: Vec<&[u8]> = if text.is_empty() {
            vec![b""]
        } else {
            text.as_bytes().chunks(TXT_STRING_MAX_BYTES).collect()
        };
        self.add_record(name, RData::TXT(TXT::from_bytes(strings)));
    }

    /// TXT record made of exactly these character-strings (each at most 255 bytes).
    pub fn add_txt_strings(&self, name: &str, strings: &[&str]) {
        for s in strings {
            assert!(s.len() <= TXT_STRING_MAX_BYTES, "TXT string over 255 bytes");
        }
        let strings = strings.iter().map(|s| s.as_bytes()).collect();
        self.add_record(name, RData::TXT(TXT::from_bytes(strings)));
    }

    pub fn add_a(&self, name: &str, addr: &str) {
        let ip: Ipv4Addr = addr.parse().unwrap_or_else(|_| panic!("bad IPv4 {addr:?}"));
        self.add_record(name, RData::A(A(ip)));
    }

    pub fn add_aaaa(&self, name: &str, addr: &str) {
        let ip: Ipv6Addr = addr.parse().unwrap_or_else(|_| panic!("bad IPv6 {addr:?}"));
        self.add_record(name, RData::AAAA(AAAA(ip)));
    }

    pub fn add_mx(&self, name: &str, preference: u16, exchange: &str) {
        self.add_record(name, RData::MX(MX::new(preference, dns_name(exchange))));
    }

    /// PTR for an address literal (IPv4 or IPv6): the owner is its in-addr.arpa / ip6.arpa name.
    pub fn add_ptr(&self, ip: &str, target: &str) {
        let ip: IpAddr = ip.parse().unwrap_or_else(|_| panic!("bad IP {ip:?}"));
        let owner = Name::from(ip).to_string();
        self.add_record(&owner, RData::PTR(PTR(dns_name(target))));
    }

    /// PTR at a literal owner name (`4.3.2.1.in-addr.arpa`).
    pub fn add_ptr_at(&self, owner: &str, target: &str) {
        self.add_record(owner, RData::PTR(PTR(dns_name(target))));
    }

    pub fn add_cname(&self, name: &str, target: &str) {
        self.add_record(name, RData::CNAME(CNAME(dns_name(target))));
    }

    /// Any record, for what the helpers above do not cover (a PTR under a literal arpa name,
    /// a TXT of zero strings).
    pub fn add_record(&self, name: &str, rdata: RData) {
        let mut zone = self.state.zone.write().expect("zone lock");
        zone.entry(key(name)).or_default().push(rdata);
    }

    /// Forget every record of `name` (it answers NXDOMAIN again) and its timeout mark.
    pub fn remove(&self, name: &str) {
        self.state
            .zone
            .write()
            .expect("zone lock")
            .remove(&key(name));
        self.state
            .timeouts
            .write()
            .expect("timeouts lock")
            .remove(&key(name));
    }

    /// Drop the queries for `name` whose type has no record at `name` (all of them when it has
    /// none): the client times out. Types that have records there still answer.
    pub fn add_timeout(&self, name: &str) {
        self.state
            .timeouts
            .write()
            .expect("timeouts lock")
            .insert(key(name));
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode lock") = mode;
    }

    /// TTL for records added from now on and for negative answers.
    pub fn set_ttl(&self, secs: u32) {
        self.state.ttl_secs.store(secs, Ordering::Relaxed);
    }

    /// Queries received since the start (or `reset_queries`), answered or not.
    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }

    /// Queries received for `name` (any type).
    pub fn queries_for(&self, name: &str) -> usize {
        let name = key(name);
        self.query_log().iter().filter(|q| q.name == name).count()
    }

    pub fn query_log(&self) -> Vec<LoggedQuery> {
        self.state.log.lock().expect("log lock").clone()
    }

    pub fn reset_queries(&self) {
        let mut log = self.state.log.lock().expect("log lock");
        log.clear();
        self.state.queries.store(0, Ordering::SeqCst);
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // Aborting the task drops the hickory Server, whose JoinSet aborts the UDP and TCP loops.
        self.task.abort();
    }
}

/// UDP on an ephemeral port, then TCP on the same one; another process may hold that TCP port,
/// so try a few UDP ports.
async fn bind_pair() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp 127.0.0.1:0");
        let addr = udp.local_addr().expect("udp local addr");
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP after 20 tries");
}

/// Zone key: lowercase, without the final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Zone key of a name from the wire: its raw labels (not `Display`, which escapes odd bytes).
fn name_key(name: &Name) -> String {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    labels.join(".")
}

/// A name as written; labels that are no hostname (`foo:bar/baz`, test data for odd targets)
/// are taken as raw bytes, as DNS allows.
fn dns_name(name: &str) -> Name {
    let mut n = Name::from_str_relaxed(name).or_else(|_| {
        let labels = name.trim_end_matches('.').split('.').map(str::as_bytes);
        Name::from_labels(labels)
    });
    let n = n
        .as_mut()
        .unwrap_or_else(|e| panic!("bad name {name:?}: {e}"));
    n.set_fqdn(true);
    n.clone()
}

/// What the data says for one query.
enum Outcome {
    /// Say nothing: the client times out.
    Drop,
    Answer {
        code: ResponseCode,
        answers: Vec<Record>,
    },
}

impl State {
    fn mode(&self) -> Mode {
        *self.mode.lock().expect("mode lock")
    }

    fn lookup(&self, qname: &Name, qtype: RecordType) -> Outcome {
        let zone = self.zone.read().expect("zone lock");
        let timeouts = self.timeouts.read().expect("timeouts lock");
        let ttl = self.ttl_secs.load(Ordering::Relaxed);
        let mut answers = Vec::new();
        let mut owner = qname.clone();
        for _ in 0..=MAX_CNAME_LINKS {
            let name = name_key(&owner);
            let rdatas = zone.get(&name).map(Vec::as_slice).unwrap_or_default();
            let matching: Vec<&RData> = rdatas
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .collect();
            if !matching.is_empty() {
                answers.extend(
                    matching
                        .into_iter()
                        .map(|r| Record::from_rdata(owner.clone(), ttl, r.clone())),
                );
                return Outcome::Answer {
                    code: ResponseCode::NoError,
                    answers,
                };
            }
            if timeouts.contains(&name) {
                return Outcome::Drop;
            }
            let cname = rdatas.iter().find_map(|r| match r {
                RData::CNAME(c) => Some(c.0.clone()),
                _ => None,
            });
            match cname {
                Some(target) => {
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    owner = target;
                }
                None => {
                    // NXDOMAIN only when the name has nothing at all (RFC 8020: nor below it).
                    let exists = !rdatas.is_empty() || has_descendant(&zone, &name);
                    let code = if exists {
                        ResponseCode::NoError
                    } else {
                        ResponseCode::NXDomain
                    };
                    return Outcome::Answer { code, answers };
                }
            }
        }
        // A CNAME loop or an over-long chain: answer the chain as far as it went.
        Outcome::Answer {
            code: ResponseCode::NoError,
            answers,
        }
    }

    fn log(&self, name: &Name, rtype: RecordType, tcp: bool) {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.log.lock().expect("log lock").push(LoggedQuery {
            name: name_key(name),
            rtype,
            tcp,
        });
    }

    /// The negative-answer SOA: this server is authoritative for the root.
    fn soa(&self) -> Record {
        let ttl = self.ttl_secs.load(Ordering::Relaxed);
        let soa = SOA::new(
            dns_name("ns.test-dns.invalid."),
            dns_name("hostmaster.test-dns.invalid."),
            1,
            3600,
            600,
            86400,
            ttl,
        );
        Record::from_rdata(Name::root(), ttl, RData::SOA(soa))
    }
}

/// An empty non-terminal (a name with no records but names below it) exists: NODATA, not
/// NXDOMAIN.
fn has_descendant(zone: &HashMap<String, Vec<RData>>, name: &str) -> bool {
    let suffix = format!(".{name}");
    zone.keys().any(|k| k.ends_with(&suffix))
}

struct Handler(Arc<State>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let state = &self.0;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let silent = ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        });

        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response.send_response(msg).await.unwrap_or(silent);
        };
        let qname = info.query.original().name().clone();
        let qtype = info.query.query_type();
        state.log(&qname, qtype, request.protocol() == Protocol::Tcp);

        match state.mode() {
            Mode::Down => return silent,
            Mode::Slow(delay) => tokio::time::sleep(delay).await,
            Mode::ServFail => {
                let msg = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                return response.send_response(msg).await.unwrap_or(silent);
            }
            Mode::Normal => {}
        }

        let (code, answers) = match state.lookup(&qname, qtype) {
            Outcome::Drop => return silent,
            Outcome::Answer { code, answers } => (code, answers),
        };
        let soa = if answers.iter().any(|r| r.record_type() == qtype) || qtype == RecordType::ANY {
            vec![]
        } else {
            vec![state.soa()]
        };
        metadata.response_code = code;

        // Echo EDNS like a real server, so the client's advertised UDP payload size applies;
        // without it answers over 512 bytes would be truncated.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns
        });
        let mut builder = builder;
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let msg = builder.build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            soa.iter(),
            std::iter::empty(),
        );
        response.send_response(msg).await.unwrap_or(silent)
    }
}
