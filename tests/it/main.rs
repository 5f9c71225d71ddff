//! The one integration test binary (as ripgrep's `tests/tests.rs`): a `mod` line per area, all
//! sharing one kit in `support/` (a real server on loopback, a transcript-style SMTP client, a
//! loopback DNS server, a DKIM/ARC signer, HTTP and SMTP sinks) and `process/` (the real binary
//! as a child process). One binary links once, instead of once per area.

// The shared kit. Not every area uses every helper.
#[allow(dead_code)]
mod process;
#[allow(dead_code)]
mod support;

// SMTP on the wire, transcript style.
/// The session fuzzer's corpus replayed through the real state machine.
mod fuzz_corpus;
/// Other people's SMTP clients (Python's smtplib, swaks) against the real server.
mod interop;
/// IPv4 and IPv6 wildcard listeners on one port, as the production example config has them.
mod listeners;
/// The basic ESMTP dialogue.
mod smtp_basic;
/// DATA transparency, line endings, smuggling.
mod smtp_data;
/// Connection caps, rates, timeouts, error counts.
mod smtp_limits;
/// Every command, the recipient table, PIPELINING.
mod smtp_protocol;
/// Listeners behind a PROXY-protocol load balancer.
mod smtp_proxy;
/// How sessions end at shutdown.
mod smtp_shutdown;
/// The 30 MB size cap (RFC 1870).
mod smtp_size;
/// Slow, trickling and non-reading clients are cut by deadlines, not held (#11).
mod smtp_slow;
/// STARTTLS with a real rustls handshake.
mod smtp_tls;

// Sender authentication.
/// Issue #10's spoofing attempts, one test per attack, each refused or quarantined.
mod auth_attacks;
/// DKIM signatures and ARC sets with one tag or key record changed, against RFC 6376/8301/8617.
mod auth_conformance;
/// SPF, DKIM, ARC, DMARC and the forwarding policy end to end over SMTP with loopback DNS.
mod auth_e2e;
/// The harness's own loopback DNS server and signer answer as a real one would.
mod dns_harness;
/// RFC 7208 conformance: the OpenSPF test suite.
mod spf_suite;

// What the pipeline makes of a message.
/// Original senders of forwarded mail, over the fixture corpus.
mod attribution_corpus;
/// Threading, assignment and tickets end to end.
mod conversations;
/// The message fuzzer's corpus and every fixture through parse and attribution.
mod fuzz_message_corpus;
/// Self-service inboxes through the API: onboarding, locks, clashes with the file, bad input.
mod inbox_api;
/// Inbox setup: confirmation codes and the connected state.
mod inbox_setup;
/// What `GET /v1/messages/{id}` reads from a stored message: bodies in many charsets, the new
/// text of replies and forwards, headers, addresses, attachment parts (#15).
mod message_content;
/// `inbound route --explain` on message files.
mod route_explain;
/// Providers' forwarding confirmations, over the fixture corpus.
mod verification_corpus;
/// One vocabulary: the same object through the API, the CLI's --json and webhooks (#15).
mod vocabulary;

// The source tree itself.
/// Import graph: no cycle, no stage reaching up into server/api, a store that knows no stage.
mod architecture;

// Durability.
/// SIGKILL under load: every acknowledged message survives byte-identical.
mod crash;
/// A full disk: temporary refusals, nothing refused visible, healing without a restart.
mod disk_full;
/// Recovery at start removes what was never acknowledged.
mod recovery;
/// Memory, file descriptors, file modes and the shutdown deadline stay bounded (#11).
mod resources;
/// Retention lifetimes and the sweeper.
mod retention;
/// The same store cases against the embedded store and a real PostgreSQL (#13).
mod store_conformance;

// Several nodes on one PostgreSQL (#13).
/// Two `inbound serve` processes sharing one database: one truth for threads, dedup, round robin.
mod multi_node;
/// One node under concurrent load from one sender: no `451` from hot rows.
mod pg_load;
/// `inbound store migrate` and `inbound store copy`, and `serve` on a database it cannot use.
mod store_cli;
/// The database stopped under load, or not answering, and back; a node too big for its server.
mod store_faults;

// Around the message: outbox, API, operations.
/// The HTTP API over real HTTP, validated against /openapi.json.
mod api;
/// The `inbound` command as an operator runs it.
mod cli;
/// The accept and reject lines an operator greps, WARN for deferrals, INBOUND_LOG checked.
mod logging;
/// Metrics, readiness and what the HTTP endpoints serve.
mod observability;
/// The operator's actions from the command line (quarantine, conversations, outbox, config).
mod operator_cli;
/// Notification mail through a real relay on loopback.
mod outbound;
/// Users and teams through the API: routing to them, restarts, reloads, refusals, events.
mod people_api;
/// Config reload while mail flows.
mod reload;
/// Signed webhooks to a real HTTP receiver on loopback.
mod webhooks;
