//! Benchmark of creating an inbox through the API's action (`actions::inboxes::create`):
//! validation against the file's and the API's inboxes, one sled transaction (definition,
//! address claim, setup state, webhook event) made durable with its flush, and the new
//! recipient table put in force. On a real on-disk store, as the server runs it. Criterion
//! measures the create; a timing loop after it prints the median at growing table sizes
//! (each create checks against every inbox already there). Run: `cargo bench --bench inboxes`.

use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use inbound::actions::inboxes;
use inbound::config::{self, raw::RawInbox};
use inbound::context::{shutdown, Ctx};
use inbound::store::Store;

fn config_text(data: &std::path::Path) -> String {
    format!(
        r#"
[server]
data_dir = "{}"
hosted_domain = "inbound.test"
[[listener]]
addr = "127.0.0.1:0"
[[user]]
id = "alice"
[[webhook]]
id = "app"
url = "http://127.0.0.1:9/hooks"
secret = "whsec-bench-0123456789"
[[inbox]]
id = "demo"
address = "support@demo.inbound.test"
"#,
        data.display()
    )
}

fn spec(n: usize) -> RawInbox {
    serde_json::from_value(serde_json::json!({
        "id": format!("team-{n}"),
        "tenant": format!("team-{n}"),
        "local": "support",
        "connected_address": format!("support@team-{n}.example"),
        "from_name": format!("Team {n} Support"),
        "auto_assign": { "users": ["alice"] },
        "rule": [{ "name": "billing", "match": { "subject": ["invoice"] }, "assign": { "users": ["alice"] } }],
    }))
    .expect("a valid spec")
}

fn create(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("inbound-bench-inboxes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config::parse(&config_text(&dir)).expect("bench config");
    let store = Store::open(&dir, &cfg.store).expect("store");
    let (_trigger, shutdown) = shutdown::channel();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let ctx = Ctx::new(cfg, store, None, shutdown).expect("context");
    let next = AtomicUsize::new(0);
    let mut group = c.benchmark_group("inbox");
    group.sample_size(30);
    group.bench_function("create (one durable transaction)", |b| {
        b.iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            inboxes::create(&ctx, spec(n)).expect("created")
        })
    });
    group.finish();
    let mut times = Vec::new();
    for _ in 0..1000 {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let t = std::time::Instant::now();
        inboxes::create(&ctx, spec(n)).expect("created");
        times.push((n, t.elapsed()));
    }
    for chunk in times.chunks(250) {
        let mut d: Vec<_> = chunk.iter().map(|(_, t)| *t).collect();
        d.sort();
        eprintln!(
            "create with {}..{} inboxes already there: median {:?}, p90 {:?}",
            chunk[0].0 + 1,
            chunk[chunk.len() - 1].0 + 1,
            d[d.len() / 2],
            d[d.len() * 9 / 10]
        );
    }
    drop(ctx);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, create);
criterion_main!(benches);
