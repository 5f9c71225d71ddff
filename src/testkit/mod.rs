//! The kit the integration tests and `inbound bench` share, compiled only with the `testkit`
//! feature (the tests enable it through the package's self dev-dependency, `bench` through its
//! own feature): an SMTP client (`smtp`), a loopback DNS server (`dns`), a DKIM/ARC signer with
//! test keys (`sign`), a server config builder (`config`) and a throwaway PostgreSQL cluster
//! (`pg`). Nothing in the server imports it.

pub mod config;
pub mod dns;
pub mod pg;
pub mod sign;
pub mod smtp;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory under the system temporary directory, removed with everything in it on drop.
/// Kept short: a test server's admin Unix socket lives inside it and socket paths are limited
/// to 108 bytes.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("inb-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that was free a moment ago. Another process could take it before the server
/// binds; the kernel hands out ephemeral ports in a way that makes that unlikely, and the server
/// then fails loudly ("cannot listen on ...") rather than the test passing wrongly.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}
