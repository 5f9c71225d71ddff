//! Message bodies on disk, with the maildir discipline: write under `tmp/`, fsync, rename into
//! `msg/`, fsync the directory. A body smaller than the inline threshold never touches the spool:
//! it travels inside the database commit instead (one fsync for many messages).
//!
//! `BodyBuffer` is what a session writes DATA/BDAT into: memory up to the inline threshold, then a
//! temporary file, so a 30 MB message costs a session at most `SPILL_CHUNK` bytes of memory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes a spilled body keeps in memory before writing them to its temporary file.
/// When reached, the session waits for that write before reading more from the socket.
const SPILL_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct Spool {
    tmp: PathBuf,
    msg: PathBuf,
}

impl Spool {
    pub fn open(root: &Path) -> io::Result<Spool> {
        let spool = Spool {
            tmp: root.join("tmp"),
            msg: root.join("msg"),
        };
        crate::util::private_dir(root)?;
        crate::util::private_dir(&spool.tmp)?;
        crate::util::private_dir(&spool.msg)?;
        Ok(spool)
    }

    pub fn tmp_path(&self, queue_id: &str) -> PathBuf {
        self.tmp.join(queue_id)
    }

    pub fn msg_path(&self, queue_id: &str) -> PathBuf {
        self.msg.join(format!("{queue_id}.eml"))
    }

    /// Move a fsynced temporary file into place. The caller fsyncs `msg/` once per batch
    /// (`sync_msg_dir`) before it records the message.
    pub fn publish(&self, queue_id: &str) -> io::Result<()> {
        fs::rename(self.tmp_path(queue_id), self.msg_path(queue_id))
    }

    pub fn sync_msg_dir(&self) -> io::Result<()> {
        File::open(&self.msg)?.sync_all()
    }

    pub fn read(&self, queue_id: &str) -> io::Result<Vec<u8>> {
        fs::read(self.msg_path(queue_id))
    }

    pub fn remove(&self, queue_id: &str) -> io::Result<()> {
        match fs::remove_file(self.msg_path(queue_id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Recovery step one: everything under `tmp/` belongs to a transaction that never got its 250.
    pub fn clear_tmp(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.tmp)? {
            fs::remove_file(entry?.path())?;
            n += 1;
        }
        Ok(n)
    }

    /// Queue ids of the bodies in `msg/`.
    pub fn published_ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.msg)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".eml")) {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }
}

/// How much of a spilled body's start is kept in memory for header inspection.
const HEAD_MAX: usize = 64 * 1024;

/// Where a finished body is.
#[derive(Debug)]
pub enum Body {
    /// Small: the bytes go into the database commit.
    Inline(Vec<u8>),
    /// Large: written and fsynced to `tmp/<queue_id>`; the commit renames it into place.
    Spooled { len: u64 },
}

/// An incoming body: memory first, a temporary spool file past `inline_max` bytes.
pub struct BodyBuffer {
    spool: Spool,
    queue_id: String,
    inline_max: usize,
    buf: Vec<u8>,
    file: Option<File>,
    written: u64,
    hash: ring::digest::Context,
    /// The first `HEAD_MAX` bytes of a spilled body.
    head: Vec<u8>,
}

/// A body that has been received completely.
pub struct Finished {
    pub queue_id: String,
    pub body: Body,
    pub len: u64,
    /// SHA-256 of the body, hex.
    pub sha256: String,
    head: Vec<u8>,
    /// Where a spooled body's temporary file lives; `None` for inline bodies.
    spool: Option<Spool>,
}

impl Finished {
    /// A body already complete in memory (tools that bypass SMTP, such as `route --explain`).
    pub fn inline(queue_id: String, bytes: Vec<u8>) -> Finished {
        let sha256 = crate::util::sha256_hex(&bytes);
        let len = bytes.len() as u64;
        Finished {
            queue_id,
            body: Body::Inline(bytes),
            len,
            sha256,
            head: Vec::new(),
            spool: None,
        }
    }

    /// The start of the message (all of it when inline): enough for its header section.
    pub fn head(&self) -> &[u8] {
        match &self.body {
            Body::Inline(bytes) => bytes,
            Body::Spooled { .. } => &self.head,
        }
    }

    /// All of the body in memory: borrowed when inline, read back from its temporary file when
    /// it was spooled (the caller bounds how many such reads run at once).
    pub async fn read_all(&self) -> io::Result<std::borrow::Cow<'_, [u8]>> {
        match (&self.body, &self.spool) {
            (Body::Inline(bytes), _) => Ok(std::borrow::Cow::Borrowed(bytes)),
            (Body::Spooled { .. }, Some(spool)) => Ok(std::borrow::Cow::Owned(
                tokio::fs::read(spool.tmp_path(&self.queue_id)).await?,
            )),
            (Body::Spooled { .. }, None) => Err(io::Error::other("spooled body without a spool")),
        }
    }

    /// A body that will not be committed (refused after DATA): remove its temporary file, if
    /// it has one. Nothing was acknowledged, so nothing is lost.
    pub fn discard(&self) {
        if let (Body::Spooled { .. }, Some(spool)) = (&self.body, &self.spool) {
            let _ = fs::remove_file(spool.tmp_path(&self.queue_id));
        }
    }
}

impl BodyBuffer {
    pub fn new(spool: Spool, queue_id: String, inline_max: usize) -> BodyBuffer {
        BodyBuffer {
            spool,
            queue_id,
            inline_max,
            buf: Vec::with_capacity(8 * 1024),
            file: None,
            written: 0,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            head: Vec::new(),
        }
    }

    pub fn queue_id(&self) -> &str {
        &self.queue_id
    }

    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer the session appends received bytes to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Whether the in-memory part should be written out before more is read.
    pub fn wants_spill(&self) -> bool {
        if self.file.is_some() {
            self.buf.len() >= SPILL_CHUNK
        } else {
            self.buf.len() > self.inline_max
        }
    }

    /// Write the in-memory part to the temporary file (created on first use).
    pub async fn spill(&mut self) -> io::Result<()> {
        let chunk = std::mem::take(&mut self.buf);
        self.hash.update(&chunk);
        if self.head.len() < HEAD_MAX {
            let n = (HEAD_MAX - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
        }
        let file = self.file.take();
        let path = self.spool.tmp_path(&self.queue_id);
        let n = chunk.len() as u64;
        let (file, mut chunk) =
            tokio::task::spawn_blocking(move || -> io::Result<(File, Vec<u8>)> {
                let mut chunk = chunk;
                let mut file = match file {
                    Some(f) => f,
                    None => OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)?,
                };
                file.write_all(&chunk)?;
                chunk.clear();
                Ok((file, chunk))
            })
            .await
            .map_err(io::Error::other)??;
        self.written += n;
        self.file = Some(file);
        // Reuse the allocation for the next chunk.
        chunk.reserve(SPILL_CHUNK.saturating_sub(chunk.capacity()));
        self.buf = chunk;
        Ok(())
    }

    /// Finish the body: small ones come back in memory, large ones are flushed and fsynced.
    /// The temporary file is renamed into place by the store's commit, not here.
    pub async fn finish(mut self) -> io::Result<Finished> {
        let queue_id = std::mem::take(&mut self.queue_id);
        if self.file.is_none() {
            let buf = std::mem::take(&mut self.buf);
            let sha256 = crate::util::sha256_hex(&buf);
            let len = buf.len() as u64;
            return Ok(Finished {
                queue_id,
                body: Body::Inline(buf),
                len,
                sha256,
                head: Vec::new(),
                spool: None,
            });
        }
        // Restore the id so a failure below still removes the temporary file (Drop).
        self.queue_id = queue_id;
        self.spill().await?;
        if let Some(file) = self.file.take() {
            tokio::task::spawn_blocking(move || file.sync_all())
                .await
                .map_err(io::Error::other)??;
        }
        let len = self.written;
        let hash = std::mem::replace(
            &mut self.hash,
            ring::digest::Context::new(&ring::digest::SHA256),
        );
        Ok(Finished {
            queue_id: std::mem::take(&mut self.queue_id),
            body: Body::Spooled { len },
            len,
            sha256: crate::util::hex(hash.finish().as_ref()),
            head: std::mem::take(&mut self.head),
            spool: Some(self.spool.clone()),
        })
    }
}

impl Drop for BodyBuffer {
    /// An abandoned body (RSET, 552, disconnect) leaves no temporary file behind.
    fn drop(&mut self) {
        // After `finish` the file is closed and the id taken: the store owns the file now.
        if !self.queue_id.is_empty() && (self.file.take().is_some() || self.written > 0) {
            let _ = fs::remove_file(self.spool.tmp_path(&self.queue_id));
        }
    }
}
