//! The load: concurrent clients, each sending its share of a run's messages as pipelined
//! transactions through the kit's SMTP client, timing each end of data.

use super::*;

/// What every client of a run shares.
pub(super) struct Shared {
    pub(super) source: Arc<dyn Messages>,
    pub(super) rcpt: String,
    pub(super) senders: u32,
    pub(super) run: u64,
    pub(super) messages: u64,
    /// The next message number to take; a client stops when it reaches `messages`. Taking numbers
    /// rather than a fixed share keeps every client busy until the run's last message.
    pub(super) next: AtomicU64,
    /// Released once every client has connected and said EHLO, so the clock measures mail only.
    pub(super) ready: Barrier,
}

#[derive(Default)]
pub(super) struct ClientOutcome {
    pub(super) ok: u64,
    pub(super) failed: u64,
    /// End-of-data to final reply, for each message answered 250.
    pub(super) latencies: Vec<Duration>,
    /// When this client's last final reply arrived.
    pub(super) finished: Option<Instant>,
    /// Messages answered with a 4xx or 5xx (not a broken connection): `451 4.3.0` when the
    /// store could not commit.
    pub(super) refused: u64,
    /// The queue id each 250 at end of data named, for the check after a PostgreSQL run.
    pub(super) queued: Vec<String>,
    pub(super) first_error: Option<String>,
}

impl ClientOutcome {
    pub(super) fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }
}

/// One run: `case.clients` connections send `case.messages` messages between them; client i
/// connects to `addrs[i % addrs.len()]`.
pub(super) async fn load(addrs: &[SocketAddr], rcpt: &str, case: &Case) -> RunResult {
    let (clients, messages) = (case.clients, case.messages);
    let shared = Arc::new(Shared {
        source: case.source.clone(),
        rcpt: rcpt.to_string(),
        senders: case.senders,
        run: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        messages,
        next: AtomicU64::new(0),
        ready: Barrier::new(clients + 1),
    });
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(i as u32, addrs[i % addrs.len()], shared.clone())))
        .collect();
    shared.ready.wait().await;
    let started = Instant::now();
    let mut total = ClientOutcome::default();
    for t in tasks {
        let out = t.await.unwrap_or_else(|e| ClientOutcome {
            first_error: Some(format!("client task failed: {e}")),
            ..ClientOutcome::default()
        });
        total.ok += out.ok;
        total.failed += out.failed;
        total.refused += out.refused;
        total.queued.extend(out.queued);
        total.latencies.extend(out.latencies);
        total.finished = total.finished.max(out.finished);
        if total.first_error.is_none() {
            total.first_error = out.first_error;
        }
    }
    // Messages never sent (every client gave up) count as failed too.
    let attempted = shared.next.load(Ordering::Relaxed).min(messages);
    total.failed += messages - attempted;
    if total.failed > 0 && total.first_error.is_none() {
        total.first_error = Some("messages not sent".into());
    }
    let elapsed = total
        .finished
        .map(|f| f.saturating_duration_since(started))
        .unwrap_or_default();
    total.latencies.sort_unstable();
    RunResult {
        ok: total.ok,
        failed: total.failed,
        elapsed_s: elapsed.as_secs_f64(),
        msgs_per_s: if elapsed.is_zero() {
            0.0
        } else {
            total.ok as f64 / elapsed.as_secs_f64()
        },
        p50_ms: percentile_ms(&total.latencies, 50.0),
        p99_ms: percentile_ms(&total.latencies, 99.0),
        peak_rss_mib: None,
        refused: total.refused,
        commits_per_s: None,
        retries: None,
        lost: None,
        duplicated: None,
        queued: total.queued,
        first_error: total.first_error,
    }
}

pub(super) async fn client(index: u32, addr: SocketAddr, shared: Arc<Shared>) -> ClientOutcome {
    let setup = async {
        let mut c = Client::try_connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        c.timeout = REPLY_TIMEOUT;
        expect_code(&mut c, 220, "greeting").await?;
        c.write(b"EHLO client.bench.example\r\n")
            .await
            .map_err(|e| format!("EHLO: {e}"))?;
        expect_code(&mut c, 250, "EHLO").await?;
        Ok::<Client<TcpStream>, String>(c)
    }
    .await;
    // Every client reaches the barrier, ready or not, or the run would never start.
    shared.ready.wait().await;
    let mut out = ClientOutcome::default();
    let mut conn = match setup {
        Ok(c) => c,
        Err(e) => {
            out.first_error = Some(format!("client {index}: {e}"));
            return out;
        }
    };
    let (mut commands, mut message) = (Vec::new(), Vec::new());
    loop {
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        if seq >= shared.messages {
            break;
        }
        let id = MessageId {
            run: shared.run,
            client: index,
            seq,
            // Below MAX_SENDERS, so it fits.
            sender: (seq % u64::from(shared.senders)) as u32,
        };
        let buffers = (&mut commands, &mut message);
        if let Err(e) = transaction(&mut conn, &shared, id, buffers, &mut out).await {
            // The connection is in an unknown state: this message failed and this client stops.
            out.fail(format!("client {index}: {e}"));
            out.finished = Some(Instant::now());
            return out;
        }
    }
    let _ = conn.write(b"QUIT\r\n").await;
    let _ = conn.reply_code().await;
    out
}

/// Read a reply and insist on `code`.
pub(super) async fn expect_code(
    c: &mut Client<TcpStream>,
    code: u16,
    what: &str,
) -> Result<(), String> {
    match c.reply_code().await {
        Ok(got) if got == code => Ok(()),
        Ok(_) => Err(format!("{what}: {}", c.last_line())),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// One message: MAIL, RCPT and DATA in one write (PIPELINING), their three replies, the body and
/// the final reply. Protocol refusals are counted in `out`; `Err` is for a broken connection.
pub(super) async fn transaction(
    conn: &mut Client<TcpStream>,
    shared: &Shared,
    id: MessageId,
    (commands, message): (&mut Vec<u8>, &mut Vec<u8>),
    out: &mut ClientOutcome,
) -> std::io::Result<()> {
    commands.clear();
    let from = shared.source.mail_from(id.sender);
    // Writing into a Vec cannot fail.
    let _ = write!(
        commands,
        "MAIL FROM:<{from}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        shared.rcpt
    );
    conn.write(commands).await?;
    let mut refused: Option<String> = None;
    for (want, what) in [(250, "MAIL"), (250, "RCPT")] {
        if conn.reply_code().await? != want && refused.is_none() {
            refused = Some(format!("{what}: {}", conn.last_line()));
        }
    }
    let data = conn.reply_code().await?;
    if data != 354 {
        refused.get_or_insert_with(|| format!("DATA: {}", conn.last_line()));
        out.refused += u64::from(data >= 400);
        // Whatever part of the transaction was accepted is dropped before the next one.
        conn.write(b"RSET\r\n").await?;
        conn.reply_code().await?;
        out.fail(refused.unwrap_or_default());
        out.finished = Some(Instant::now());
        return Ok(());
    }
    shared.source.render(id, message);
    conn.write(message).await?;
    let sent = Instant::now();
    let code = conn.reply_code().await?;
    let now = Instant::now();
    out.finished = Some(now);
    match (code, refused) {
        (250, None) => {
            out.ok += 1;
            out.latencies.push(now - sent);
            // "250 2.0.0 Ok: queued as <id>": the id is the last word.
            let line = conn.last_line();
            out.queued
                .push(line.rsplit(' ').next().unwrap_or_default().to_string());
        }
        (_, Some(r)) => out.fail(r),
        (code, None) => {
            out.refused += u64::from(code >= 400);
            out.fail(format!("end of data: {}", conn.last_line()))
        }
    }
    Ok(())
}
