//! Criterion benchmarks of the broker's storage hot paths:
//! - batch header parse, CRC32C validation, base-offset rewrite
//!   (`sluice::storage::batch`), per produced batch;
//! - sparse offset index lookup (`sluice::storage::index`), per fetch;
//! - segment append through `PartitionLog` in a glommio executor;
//! - recording metrics (`sluice::metrics`): what every request pays.
//!
//! `cargo bench --bench storage` measures. `cargo test --release --benches`
//! (and `--all-targets`) runs each benchmark once as a smoke test, so the
//! benchmarks cannot rot.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice::storage::{FlushPolicy, LogConfig, PartitionLog, batch, index};

/// One producer batch of `count` records of `value_len` bytes, as a client
/// would send it (base offset 0, no idempotence).
fn producer_batch(count: usize, value_len: usize) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Keep offset - sequence constant, or the encoder splits batches.
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(vec![(i % 251) as u8; value_len])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf.freeze()
}

fn batch_validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for (count, value_len) in [(1usize, 1024usize), (16, 1024), (128, 1024)] {
        let b = producer_batch(count, value_len);
        assert_eq!(batch::validate_batch(&b).expect("valid").1, b.len());
        g.throughput(Throughput::Bytes(b.len() as u64));
        let id = format!("{count}x{value_len}B");
        g.bench_with_input(BenchmarkId::new("header_parse", &id), &b, |bench, b| {
            bench.iter(|| batch::BatchHeader::parse(black_box(b)).expect("parse"))
        });
        g.bench_with_input(BenchmarkId::new("validate_crc", &id), &b, |bench, b| {
            bench.iter(|| batch::validate_for_append(black_box(b), 1 << 20).expect("valid"))
        });
        let mut owned = b.to_vec();
        g.bench_function(BenchmarkId::new("set_base_offset", &id), |bench| {
            let mut next = 0i64;
            bench.iter(|| {
                batch::set_base_offset(black_box(&mut owned), next);
                next += count as i64;
            })
        });
        // The CRC does not cover the base offset: still valid after rewrite.
        assert!(batch::validate_batch(&owned).is_ok());
    }
    g.finish();
}

fn index_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    // A full 1 GiB segment with one entry per 4 KiB: 262,144 entries.
    for entries in [1_024u32, 262_144] {
        let mut buf = Vec::new();
        for i in 0..entries {
            index::push_offset_entry(&mut buf, i * 4, i * 4096);
        }
        let mut probe = 0u64;
        g.bench_function(BenchmarkId::new("lookup_offset", entries), |bench| {
            bench.iter(|| {
                // Stride through the index so lookups are not all cached.
                probe = (probe + 7_919) % (u64::from(entries) * 4);
                index::lookup_offset(black_box(&buf), probe).expect("entry")
            })
        });
    }
    g.finish();
}

/// Appends through PartitionLog on a glommio executor driven from this
/// thread: each Criterion sample runs `iters` appends inside one
/// `LocalExecutor::run`.
fn segment_append(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let ex = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor");
    let mut g = c.benchmark_group("partition_log");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);
    for (name, flush) in [
        // Write-behind: append returns once the batch has an offset and
        // buffer room; measures the append path and the writer.
        (
            "append_write_behind",
            FlushPolicy::Interval(Duration::from_secs(1)),
        ),
        // acks=all durability: every append waits for its fdatasync
        // (group commit across appends in flight; here there is one).
        ("append_durable", FlushPolicy::Always),
    ] {
        let dir = root.join(name);
        let log = ex.run(open_log(root.clone(), dir, flush));
        let b = producer_batch(16, 1024);
        g.throughput(Throughput::Bytes(b.len() as u64));
        let durable = matches!(flush, FlushPolicy::Always);
        g.bench_function(BenchmarkId::new(name, "16x1KiB"), |bench| {
            bench.iter_custom(|iters| {
                ex.run(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let info = log.append(b.clone()).await.expect("append");
                        if durable {
                            log.wait_durable(&info).await.expect("durable");
                        }
                    }
                    start.elapsed()
                })
            })
        });
        ex.run(async move { log.close().await.expect("close") });
    }
    g.finish();
    drop(tmp);
}

async fn open_log(
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
    flush: FlushPolicy,
) -> std::rc::Rc<PartitionLog> {
    sluice::runtime::file::warm_iopoll_probe(Path::new(&root))
        .await
        .expect("iopoll probe");
    PartitionLog::open(
        dir,
        LogConfig {
            flush,
            ..LogConfig::default()
        },
    )
    .await
    .expect("open log")
}

/// The cost of recording on the request path: one request (counter plus
/// latency histogram, with the `Instant::now()` it needs) and one size
/// histogram observation (a produced partition).
fn metrics_record(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    g.bench_function("request_done", |b| {
        b.iter(|| sluice::metrics::request_done(black_box(0), Instant::now()))
    });
    g.bench_function("request_done_and_bytes", |b| {
        b.iter(|| {
            let started = Instant::now();
            sluice::metrics::bytes_in(black_box(1024));
            sluice::metrics::request_done(black_box(1), started);
            sluice::metrics::bytes_out(black_box(512));
        })
    });
    // Baseline: the clock read inside request_done (elapsed()).
    g.bench_function("instant_elapsed_baseline", |b| {
        let started = Instant::now();
        b.iter(|| black_box(started.elapsed()))
    });
    g.bench_function("size_observe", |b| {
        b.iter(|| sluice::metrics::produce_partition_bytes(black_box(16 * 1024)))
    });
    g.finish();
}

criterion_group!(
    benches,
    batch_validation,
    index_lookup,
    segment_append,
    metrics_record
);
criterion_main!(benches);
