//! PartitionLog tests, each in its own glommio executor and temp directory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::batch::test_util::{encode_batch, encode_batch_ts};
use super::segment::{INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_path};
use super::*;
use crate::runtime::file;
use crate::types::Offset;

fn run<F, Fut>(f: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            file::warm_iopoll_probe(&root).await.unwrap();
            f(root.join("topic-0")).await
        })
        .unwrap()
        .join()
        .unwrap();
    drop(tmp);
}

fn small_cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        tail_cache_bytes: 2048,
        ..LogConfig::default()
    }
}

/// Append one batch of `count` records (timestamps ts0..) and wait until durable.
async fn append_durable(
    log: &Rc<PartitionLog>,
    count: usize,
    ts0: i64,
    value_len: usize,
) -> AppendInfo {
    let info = log
        .append(encode_batch(0, count, ts0, value_len))
        .await
        .unwrap();
    log.wait_durable(&info).await.unwrap();
    info
}

/// Read everything from `from` to the high watermark, check the records
/// are contiguous with keys matching offsets, return (offset, timestamp) pairs.
async fn read_all(log: &PartitionLog, from: i64, max_bytes: usize) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut next = from;
    let hw = log.high_watermark().0;
    while next < hw {
        let data = log.read(Offset(next), max_bytes).await.unwrap();
        assert!(
            !data.records.is_empty(),
            "empty read at {next} below hw {hw}"
        );
        let mut b = data.records.clone();
        let sets = RecordBatchDecoder::decode_all(&mut b).unwrap();
        for set in sets {
            for r in set.records {
                if r.offset < next {
                    continue; // the first batch may start before `next`
                }
                assert_eq!(r.offset, next, "records not contiguous");
                assert_eq!(
                    r.key.as_deref(),
                    Some(format!("k{}", r.offset - offset_key_shift(&r)).as_bytes())
                );
                out.push((r.offset, r.timestamp));
                next += 1;
            }
        }
    }
    out
}

/// Keys were encoded with the producer-side offsets (base 0 per batch), so
/// a record's key is k<index in batch>; recover that index from the
/// sequence (encoded equal to the producer-side offset).
fn offset_key_shift(r: &kafka_protocol::records::Record) -> i64 {
    r.offset - i64::from(r.sequence)
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == LOG_SUFFIX))
        .collect();
    v.sort();
    v
}

#[test]
fn append_and_read_across_segment_roll() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        let mut expected = 0;
        for i in 0..60 {
            let info = append_durable(&log, 5, 1000 + i * 10, 40).await;
            assert_eq!(info.base_offset, Offset(expected));
            assert_eq!(info.last_offset, Offset(expected + 4));
            expected += 5;
        }
        assert_eq!(log.log_end_offset(), Offset(300));
        assert_eq!(log.high_watermark(), Offset(300));
        assert!(log_files(&dir).len() > 3, "expected several segments");
        for max in [1, 700, 100_000] {
            let got = read_all(&log, 0, max).await;
            assert_eq!(got.len(), 300);
        }
        // Reads from the middle of every segment (disk, not the tail cache).
        let got = read_all(&log, 123, 1000).await;
        assert_eq!(got.first().unwrap().0, 123);
        log.close().await.unwrap();

        // After reopening, sealed segments are read through mapped indexes.
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.high_watermark(), Offset(300));
        assert_eq!(read_all(&log, 0, 900).await.len(), 300);
        for start in [0, 1, 57, 150, 299] {
            assert_eq!(read_all(&log, start, 600).await.len() as i64, 300 - start);
        }
        log.close().await.unwrap();
    });
}

#[test]
fn offsets_continue_after_close_and_reopen() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        for _ in 0..3 {
            append_durable(&log, 4, 1, 10).await;
        }
        log.close().await.unwrap();
        assert!(matches!(
            log.append(encode_batch(0, 1, 1, 1)).await,
            Err(StorageError::Closed)
        ));
        assert!(matches!(
            log.read(Offset(0), 100).await,
            Err(StorageError::Closed)
        ));

        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(12));
        assert_eq!(log.high_watermark(), Offset(12));
        let info = append_durable(&log, 2, 1, 10).await;
        assert_eq!(info.base_offset, Offset(12));
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 14);
        // A crash (no close): the log is dropped, files keep preallocated zeros.
        drop(log);
        crate::runtime::sleep(Duration::from_millis(10)).await;
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(14));
        let info = append_durable(&log, 1, 1, 10).await;
        assert_eq!(info.base_offset, Offset(14));
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 15);
        log.close().await.unwrap();
    });
}

/// Append 10 batches of 3 records, close, damage the log file with
/// `damage(path, last batch start, file len)`, reopen: the last batch is
/// gone, the first 9 are intact, new appends continue at 27.
fn check_tail_damage(damage: fn(&Path, u64, u64)) {
    run(move |dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let mut sizes = Vec::new();
        for i in 0..10 {
            let b = encode_batch(0, 3, 100 + i, 30);
            sizes.push(b.len() as u64);
            let info = log.append(b).await.unwrap();
            log.wait_durable(&info).await.unwrap();
        }
        log.close().await.unwrap();
        let path = segment_path(&dir, 0, LOG_SUFFIX);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, sizes.iter().sum::<u64>());
        damage(&path, len - sizes[9], len);

        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(27));
        assert_eq!(log.high_watermark(), Offset(27));
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 27);
        let info = append_durable(&log, 2, 1, 30).await;
        assert_eq!(info.base_offset, Offset(27));
        let all = read_all(&log, 0, 1 << 20).await;
        assert_eq!(all.len(), 29);
        log.close().await.unwrap();
        // And again, after a clean close.
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(29));
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 29);
        log.close().await.unwrap();
    });
}

#[test]
fn torn_tail_is_truncated_at_recovery() {
    check_tail_damage(|path, last_start, len| {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(last_start + (len - last_start) / 2).unwrap();
    });
}

#[test]
fn flipped_byte_in_last_batch_is_truncated_at_recovery() {
    check_tail_damage(|path, _last_start, len| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[len as usize - 5] ^= 0x5a;
        std::fs::write(path, bytes).unwrap();
    });
}

#[test]
fn garbage_after_preallocated_end_is_ignored_and_zeroed() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        append_durable(&log, 3, 1, 10).await;
        log.close().await.unwrap();
        // A valid-looking batch after a run of zeros (as if from an old
        // life of the file): recovery stops at the zeros and must cut it.
        let path = segment_path(&dir, 0, LOG_SUFFIX);
        let mut bytes = std::fs::read(&path).unwrap();
        let end = bytes.len();
        bytes.extend_from_slice(&[0u8; 100]);
        bytes.extend_from_slice(&encode_batch(3, 2, 1, 10));
        std::fs::write(&path, bytes).unwrap();
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(3));
        let info = append_durable(&log, 1, 1, 10).await;
        assert_eq!(info.base_offset, Offset(3));
        log.close().await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, size) = batch::validate_batch(&bytes[end..]).unwrap();
        assert_eq!(
            bytes.len(),
            end + size,
            "nothing stale after the logical end"
        );
    });
}

#[test]
fn damaged_index_files_are_rebuilt() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        for i in 0..80 {
            append_durable(&log, 4, 10_000 + i * 4, 40).await;
        }
        log.close().await.unwrap();
        let logs = log_files(&dir);
        assert!(logs.len() >= 4);
        let base_of = |p: &Path| {
            super::segment::parse_segment_file_name(p.file_name().unwrap().to_str().unwrap())
                .unwrap()
        };
        let (b0, b1, b2) = (base_of(&logs[0]), base_of(&logs[1]), base_of(&logs[2]));
        let originals: Vec<(PathBuf, Vec<u8>)> = [b0, b1, b2]
            .iter()
            .flat_map(|b| {
                [
                    segment_path(&dir, *b, INDEX_SUFFIX),
                    segment_path(&dir, *b, TIME_INDEX_SUFFIX),
                ]
            })
            .map(|p| {
                let d = std::fs::read(&p).unwrap();
                (p, d)
            })
            .collect();
        assert!(
            !originals[0].1.is_empty(),
            "segment 0 should have index entries"
        );
        // Deleted, garbled (odd length), and an entry pointing past the end.
        std::fs::remove_file(segment_path(&dir, b0, INDEX_SUFFIX)).unwrap();
        std::fs::write(segment_path(&dir, b1, TIME_INDEX_SUFFIX), [7u8; 13]).unwrap();
        let mut bad = originals[4].1.clone();
        bad.extend_from_slice(&u32::MAX.to_be_bytes()[..]);
        bad.extend_from_slice(&1_000_000u32.to_be_bytes());
        std::fs::write(segment_path(&dir, b2, INDEX_SUFFIX), bad).unwrap();

        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        for (p, d) in &originals {
            assert_eq!(
                &std::fs::read(p).unwrap(),
                d,
                "{} not rebuilt identically",
                p.display()
            );
        }
        let all = read_all(&log, 0, 500).await;
        assert_eq!(all.len(), 320);
        for start in [1, 33, 77, 159, 319] {
            assert_eq!(read_all(&log, start, 300).await.len() as i64, 320 - start);
        }
        // Timestamps 10_000 + offset.
        for t in [9_000, 10_000, 10_037, 10_101, 10_159, 10_319] {
            let (o, ts) = log.offset_for_timestamp(t).await.unwrap().unwrap();
            assert_eq!((o.0, ts), ((t - 10_000).max(0), t.max(10_000)));
        }
        log.close().await.unwrap();
    });
}

#[test]
fn read_inside_a_batch_returns_the_whole_batch() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let b0 = encode_batch(0, 10, 1, 20);
        let b1 = encode_batch(0, 10, 1, 20);
        append_durable(&log, 10, 1, 20).await;
        append_durable(&log, 10, 1, 20).await;
        for reopened in [false, true] {
            let first = log_or_reopen(&log, &dir, reopened).await;
            let d = first.read(Offset(5), 1).await.unwrap();
            assert_eq!(
                d.records.len(),
                b0.len(),
                "first batch whole even above max_bytes"
            );
            assert_eq!(i64::from_be_bytes(d.records[..8].try_into().unwrap()), 0);
            let d = first.read(Offset(5), b0.len() + b1.len()).await.unwrap();
            assert_eq!(d.records.len(), b0.len() + b1.len());
            let d = first
                .read(Offset(5), b0.len() + b1.len() - 1)
                .await
                .unwrap();
            assert_eq!(d.records.len(), b0.len());
            let d = first.read(Offset(19), 1 << 20).await.unwrap();
            assert_eq!(i64::from_be_bytes(d.records[..8].try_into().unwrap()), 10);
            assert_eq!(d.high_watermark, Offset(20));
            assert_eq!(d.log_start_offset, Offset(0));
            if reopened {
                first.close().await.unwrap();
            }
        }
    });
}

/// `log` itself, or (after closing it) a freshly reopened log (reads from disk).
async fn log_or_reopen(log: &Rc<PartitionLog>, dir: &Path, reopen: bool) -> Rc<PartitionLog> {
    if !reopen {
        return log.clone();
    }
    log.close().await.unwrap();
    PartitionLog::open(dir.to_owned(), LogConfig::default())
        .await
        .unwrap()
}

#[test]
fn offset_out_of_range() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let d = log.read(Offset(0), 100).await.unwrap();
        assert!(d.records.is_empty());
        append_durable(&log, 3, 1, 1).await;
        assert!(log.read(Offset(3), 100).await.unwrap().records.is_empty());
        match log.read(Offset(4), 100).await {
            Err(
                e @ StorageError::OffsetOutOfRange {
                    requested: 4,
                    log_start: 0,
                    high_watermark: 3,
                },
            ) => {
                assert_eq!(e.kafka_error_code(), 1)
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            log.read(Offset(-1), 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();
    });
}

#[test]
fn invalid_batches_are_rejected_with_nothing_appended() {
    run(|dir| async move {
        let cfg = LogConfig {
            max_message_bytes: 1000,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        append_durable(&log, 2, 1, 10).await;
        let good = encode_batch(0, 2, 1, 10);
        let mut bad = good.to_vec();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let mut blob = good.to_vec();
        blob.extend_from_slice(&bad);
        let e = log.append(Bytes::from(blob)).await.unwrap_err();
        assert!(matches!(e, StorageError::CorruptBatch(_)), "{e:?}");
        assert_eq!(e.kafka_error_code(), 2);
        let e = log.append(encode_batch(0, 2, 1, 2000)).await.unwrap_err();
        assert!(
            matches!(e, StorageError::BatchTooLarge { max: 1000, .. }),
            "{e:?}"
        );
        assert_eq!(e.kafka_error_code(), 10);
        let mut m = good.to_vec();
        m[16] = 1;
        assert!(matches!(
            log.append(Bytes::from(m)).await,
            Err(StorageError::UnsupportedMagic(1))
        ));
        assert!(matches!(
            log.append(Bytes::new()).await,
            Err(StorageError::InvalidRecord(_))
        ));
        let mut trailing = good.to_vec();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(
            log.append(Bytes::from(trailing)).await,
            Err(StorageError::CorruptBatch(_))
        ));
        assert_eq!(log.log_end_offset(), Offset(2));
        let info = append_durable(&log, 1, 1, 10).await;
        assert_eq!(info.base_offset, Offset(2));
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 3);
        log.close().await.unwrap();
    });
}

#[test]
fn several_batches_in_one_append_and_wait_durable() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let mut blob = encode_batch(0, 2, 1, 10).to_vec();
        blob.extend_from_slice(&encode_batch(0, 3, 1, 10));
        let listener = log.hw_changed();
        let info = log.append(Bytes::from(blob)).await.unwrap();
        assert_eq!((info.base_offset, info.last_offset), (Offset(0), Offset(4)));
        listener.await;
        log.wait_durable(&info).await.unwrap();
        assert_eq!(log.high_watermark(), Offset(5));
        // Many concurrent appends: offsets follow call order, one durable wait.
        let mut tasks = Vec::new();
        for i in 0..50 {
            let l = log.clone();
            tasks.push(crate::runtime::spawn(async move {
                let info = l.append(encode_batch(0, 1, i, 10)).await.unwrap();
                l.wait_durable(&info).await.unwrap();
                info.base_offset.0
            }));
        }
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.push(t.await);
        }
        offsets.sort();
        assert_eq!(offsets, (5..55).collect::<Vec<_>>());
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 55);
        log.close().await.unwrap();
    });
}

#[test]
fn backpressure_keeps_order() {
    run(|dir| async move {
        let cfg = LogConfig {
            pending_bytes_max: 300,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..30 {
            let l = log.clone();
            tasks.push(crate::runtime::spawn(async move {
                // Each batch ~ 150 bytes: at most two queued at a time.
                let info = l.append(encode_batch(0, 1, i, 80)).await.unwrap();
                (i, info)
            }));
        }
        let mut last = None;
        for t in tasks {
            let (i, info) = t.await;
            assert_eq!(i, info.base_offset.0, "FIFO order");
            last = Some(info);
        }
        log.wait_durable(&last.unwrap()).await.unwrap();
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 30);
        log.close().await.unwrap();
    });
}

#[test]
fn timestamps() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), None);
        assert_eq!(log.max_timestamp().await.unwrap(), None);
        // Batches with non-monotonic timestamps.
        let batches: Vec<Vec<i64>> = (0..30)
            .map(|i| vec![1000 + i * 10, 995 + i * 10, 1003 + i * 10])
            .collect();
        for ts in &batches {
            let info = log.append(encode_batch_ts(0, ts, 50)).await.unwrap();
            log.wait_durable(&info).await.unwrap();
        }
        // Peak in an early batch.
        let info = log
            .append(encode_batch_ts(0, &[500, 99_999, 600], 50))
            .await
            .unwrap();
        log.wait_durable(&info).await.unwrap();
        let info = log.append(encode_batch_ts(0, &[2000], 50)).await.unwrap();
        log.wait_durable(&info).await.unwrap();
        let all: Vec<(i64, i64)> = read_all(&log, 0, 1 << 20).await;
        let expect = |t: i64| {
            all.iter()
                .find(|(_, ts)| *ts >= t)
                .map(|(o, ts)| (Offset(*o), *ts))
        };
        for reopened in [false, true] {
            let l = log_or_reopen_cfg(&log, &dir, reopened).await;
            for t in [
                0, 995, 1000, 1001, 1004, 1100, 1250, 1296, 1297, 1999, 2000, 50_000, 99_999,
                100_000,
            ] {
                assert_eq!(
                    l.offset_for_timestamp(t).await.unwrap(),
                    expect(t),
                    "ts {t} reopened {reopened}"
                );
            }
            assert_eq!(l.max_timestamp().await.unwrap(), Some((Offset(91), 99_999)));
            if reopened {
                l.close().await.unwrap();
            }
        }
    });
}

async fn log_or_reopen_cfg(log: &Rc<PartitionLog>, dir: &Path, reopen: bool) -> Rc<PartitionLog> {
    if !reopen {
        return log.clone();
    }
    log.close().await.unwrap();
    PartitionLog::open(dir.to_owned(), small_cfg())
        .await
        .unwrap()
}

#[test]
fn sync_failure_fails_the_log_and_recovery_keeps_durable_data() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        append_durable(&log, 2, 1, 10).await;
        file::fault::fail_next_syncs(1);
        let info = log.append(encode_batch(0, 2, 1, 10)).await.unwrap();
        let e = log.wait_durable(&info).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 56);
        assert_eq!(log.high_watermark(), Offset(2));
        assert!(matches!(
            log.append(encode_batch(0, 1, 1, 10)).await,
            Err(StorageError::Io { .. })
        ));
        assert!(log.close().await.is_err());
        // A restart: a failed file-system sync fails the shard's group commit for good.
        crate::storage::io::Env::init_production(crate::storage::io::SyncScope::default(), None);
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        // The unsynced batch may or may not have reached the file; offsets
        // stay consistent either way.
        let leo = log.log_end_offset().0;
        assert!(leo == 2 || leo == 4);
        assert_eq!(read_all(&log, 0, 1 << 20).await.len() as i64, leo);
        log.close().await.unwrap();
    });
}

#[test]
fn interval_policy_moves_hw_after_write() {
    run(|dir| async move {
        let cfg = LogConfig {
            flush: FlushPolicy::Interval(Duration::from_millis(20)),
            ..small_cfg()
        };
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        for i in 0..20 {
            append_durable(&log, 3, i, 100).await;
        }
        crate::runtime::sleep(Duration::from_millis(50)).await;
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 60);
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(60));
        log.delete().await.unwrap();
        assert!(!dir.exists());
    });
}

#[test]
fn segment_ms_rolls() {
    run(|dir| async move {
        let cfg = LogConfig {
            segment_ms: 1,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        for _ in 0..3 {
            append_durable(&log, 1, 1, 1).await;
            crate::runtime::sleep(Duration::from_millis(3)).await;
        }
        assert_eq!(log_files(&dir).len(), 3);
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 3);
        log.close().await.unwrap();
    });
}

// ---- idempotent producers ----

use super::batch::test_util::encode_idempotent;
use super::producer_state::SNAPSHOT_SUFFIX;

/// Wall-clock now: producer state expires by batch timestamp, so tests use
/// real ones.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == SNAPSHOT_SUFFIX))
        .collect();
    v.sort();
    v
}

/// Append and wait until durable; the error code on failure.
async fn produce(log: &Rc<PartitionLog>, b: Bytes) -> Result<AppendInfo, i16> {
    let info = log.append(b).await.map_err(|e| e.kafka_error_code())?;
    log.wait_durable(&info)
        .await
        .map_err(|e| e.kafka_error_code())?;
    Ok(info)
}

#[test]
fn idempotent_duplicates_including_queued_batches() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let ts = now_ms();
        let a = encode_idempotent(7, 0, 0, 3, ts);
        let first = log.append(a.clone()).await.unwrap();
        // Still queued: not written, not visible.
        assert!(log.high_watermark() < log.log_end_offset());
        let retry = log.append(a.clone()).await.unwrap();
        assert_eq!(retry, first);
        assert_eq!(log.log_end_offset(), Offset(3));
        log.wait_durable(&first).await.unwrap();
        // A retry after it is durable too.
        assert_eq!(
            produce(&log, a.clone()).await.unwrap().base_offset,
            Offset(0)
        );
        // Interleaved with a non-idempotent batch and another producer.
        append_durable(&log, 2, ts, 5).await;
        let b = encode_idempotent(7, 0, 3, 2, ts);
        assert_eq!(
            produce(&log, b.clone()).await.unwrap().base_offset,
            Offset(5)
        );
        let other = encode_idempotent(8, 0, 0, 1, ts);
        assert_eq!(produce(&log, other).await.unwrap().base_offset, Offset(7));
        assert_eq!(produce(&log, b).await.unwrap().base_offset, Offset(5));
        assert_eq!(produce(&log, a).await.unwrap().base_offset, Offset(0));
        assert_eq!(log.log_end_offset(), Offset(8));
        assert_eq!(read_all_count(&log).await, 8);
        let p = log.producers();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].producer_id, p[0].epoch, p[0].last_sequence),
            (7, 0, 4)
        );
        assert_eq!((p[1].producer_id, p[1].last_sequence), (8, 0));
        log.close().await.unwrap();
    });
}

async fn read_all_count(log: &PartitionLog) -> usize {
    let mut n = 0;
    let mut next = 0;
    while next < log.high_watermark().0 {
        let d = log.read(Offset(next), 1 << 20).await.unwrap();
        let mut b = d.records.clone();
        for set in RecordBatchDecoder::decode_all(&mut b).unwrap() {
            for r in set.records {
                if r.offset >= next {
                    n += 1;
                    next = r.offset + 1;
                }
            }
        }
    }
    n
}

#[test]
fn idempotent_gaps_fencing_epochs_and_wrap() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let ts = now_ms();
        produce(&log, encode_idempotent(1, 5, 0, 2, ts))
            .await
            .unwrap();
        // Gap: 3 instead of 2.
        assert_eq!(
            produce(&log, encode_idempotent(1, 5, 3, 1, ts)).await,
            Err(45)
        );
        // Older epoch: fenced.
        assert_eq!(
            produce(&log, encode_idempotent(1, 4, 2, 1, ts)).await,
            Err(47)
        );
        // Newer epoch must start at 0.
        assert_eq!(
            produce(&log, encode_idempotent(1, 6, 2, 1, ts)).await,
            Err(45)
        );
        assert_eq!(log.log_end_offset(), Offset(2));
        produce(&log, encode_idempotent(1, 6, 0, 1, ts))
            .await
            .unwrap();
        assert_eq!(
            produce(&log, encode_idempotent(1, 5, 2, 1, ts)).await,
            Err(47)
        );
        // Wrap at i32::MAX (a batch never wraps inside with this encoder).
        produce(&log, encode_idempotent(2, 0, i32::MAX - 1, 2, ts))
            .await
            .unwrap();
        assert_eq!(
            produce(&log, encode_idempotent(2, 0, 1, 1, ts)).await,
            Err(45)
        );
        produce(&log, encode_idempotent(2, 0, 0, 1, ts))
            .await
            .unwrap();
        produce(&log, encode_idempotent(2, 0, 1, 1, ts))
            .await
            .unwrap();
        // Control batches from a producer and several idempotent batches at once are refused.
        let mut control = encode_idempotent(3, 0, 0, 1, ts).to_vec();
        control[22] |= 0x30;
        let crc = batch::compute_crc(&control);
        control[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(produce(&log, Bytes::from(control)).await, Err(87));
        let mut two = encode_idempotent(3, 0, 0, 1, ts).to_vec();
        two.extend_from_slice(&encode_idempotent(3, 0, 1, 1, ts));
        assert_eq!(produce(&log, Bytes::from(two)).await, Err(87));
        assert_eq!(log.log_end_offset(), Offset(7));
        log.close().await.unwrap();
    });
}

/// State written by `write`, then checked after a clean close + reopen
/// (`crash == false`) or a drop without close (`crash == true`).
fn check_state_survives(crash: bool) {
    run(move |dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let ts = now_ms();
        let mut last = Vec::new();
        for i in 0..10 {
            let b = encode_idempotent(42, 1, i * 2, 2, ts);
            produce(&log, b.clone()).await.unwrap();
            last.push(b);
        }
        if crash {
            drop(log);
            crate::runtime::sleep(Duration::from_millis(10)).await;
            assert!(snapshot_files(&dir).is_empty());
        } else {
            log.close().await.unwrap();
            assert_eq!(snapshot_files(&dir).len(), 1);
        }
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(20));
        // The last five batches are duplicates, with their offsets.
        for (i, b) in last.iter().enumerate().skip(5) {
            let info = produce(&log, b.clone()).await.unwrap();
            assert_eq!(info.base_offset, Offset(i as i64 * 2));
        }
        assert_eq!(produce(&log, last[0].clone()).await, Err(45));
        assert_eq!(
            produce(&log, encode_idempotent(42, 0, 20, 1, ts)).await,
            Err(47)
        );
        assert_eq!(
            produce(&log, encode_idempotent(42, 1, 21, 1, ts)).await,
            Err(45)
        );
        assert_eq!(
            produce(&log, encode_idempotent(42, 1, 20, 1, ts))
                .await
                .unwrap()
                .base_offset,
            Offset(20)
        );
        assert_eq!(log.log_end_offset(), Offset(21));
        log.close().await.unwrap();
    });
}

/// Transactions in one partition: two producers' transactions, one committed and one
/// aborted, a plain batch between them; read_committed stops at the open transaction's first
/// offset and reports the aborted one; after a crash (or a close) and reopen, the open
/// transaction is still open and the aborted one still reported.
fn check_transactions_survive(crash: bool) {
    use super::batch::test_util::encode_transactional;
    use super::producer_state::{AbortedTxn, Marker};
    run(move |dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        let ts = now_ms();
        produce(&log, encode_transactional(1, 0, 0, 2, ts))
            .await
            .unwrap(); // 0..2
        produce(&log, encode_transactional(2, 0, 0, 2, ts))
            .await
            .unwrap(); // 2..4
        produce(&log, encode_batch(0, 1, ts, 10)).await.unwrap(); // 4
        let info = log.append_marker(1, 0, Marker::Abort, 0).await.unwrap(); // 5
        log.wait_durable(&info).await.unwrap();
        assert_eq!(log.last_stable_offset(), Offset(2));
        let read = log.read_chunks_committed(Offset(0), 1 << 20).await.unwrap();
        assert_eq!(read.last_stable_offset, Offset(2));
        let aborted = AbortedTxn {
            producer_id: 1,
            first_offset: 0,
            last_offset: 5,
        };
        assert_eq!(read.aborted, vec![aborted]);
        let mut b = read.records.join();
        let sets = RecordBatchDecoder::decode_all(&mut b).unwrap();
        assert_eq!(sets.iter().map(|s| s.records.len()).sum::<usize>(), 2);
        // read_uncommitted reads to the high watermark.
        assert_eq!(read_all_count(&log).await, 6);
        // Between the last stable offset and the high watermark: nothing, no error.
        let between = log.read_chunks_committed(Offset(3), 1 << 20).await.unwrap();
        assert!(between.records.is_empty());
        // A producer may not write a marker itself; an old epoch's marker is refused.
        let forged = super::batch::encode_marker(2, 0, Marker::Commit, 0, ts);
        assert_eq!(produce(&log, forged).await, Err(87));
        log.append_marker(2, 1, Marker::Commit, 0).await.unwrap(); // 6, fences epoch 0
        assert_eq!(
            log.append_marker(2, 0, Marker::Commit, 0)
                .await
                .unwrap_err()
                .kafka_error_code(),
            47
        );
        produce(&log, encode_transactional(3, 0, 0, 3, ts))
            .await
            .unwrap(); // 7..10
        let end = append_durable(&log, 1, ts, 10).await.last_offset.0;
        assert_eq!(end, 10);
        assert_eq!(log.last_stable_offset(), Offset(7));
        if crash {
            drop(log);
            crate::runtime::sleep(Duration::from_millis(10)).await;
        } else {
            log.close().await.unwrap();
        }
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(11));
        assert_eq!(log.last_stable_offset(), Offset(7));
        assert_eq!(log.open_transactions(), vec![(3, 7)]);
        let read = log.read_chunks_committed(Offset(0), 1 << 20).await.unwrap();
        assert_eq!(read.aborted, vec![aborted]);
        // The open one commits after the restart: everything is stable.
        let info = log.append_marker(3, 0, Marker::Commit, 0).await.unwrap();
        log.wait_durable(&info).await.unwrap();
        assert_eq!(log.last_stable_offset(), Offset(12));
        log.close().await.unwrap();
    });
}

#[test]
fn transactions_survive_close_and_reopen() {
    check_transactions_survive(false);
}

#[test]
fn transactions_survive_a_crash() {
    check_transactions_survive(true);
}

#[test]
fn producer_state_survives_close_and_reopen() {
    check_state_survives(false);
}

#[test]
fn producer_state_survives_a_crash() {
    check_state_survives(true);
}

#[test]
fn producer_snapshots_and_replay_across_segment_rolls() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        let ts = now_ms();
        let mut sent: Vec<(Bytes, i64)> = Vec::new();
        let mut seq = [0i32; 2];
        for i in 0..240 {
            let p = i % 2;
            let b = encode_idempotent(100 + p as i64, 0, seq[p], 3, ts);
            seq[p] += 3;
            let info = produce(&log, b.clone()).await.unwrap();
            sent.push((b, info.base_offset.0));
        }
        assert!(log_files(&dir).len() > 4, "expected several segments");
        let snaps = snapshot_files(&dir);
        assert_eq!(
            snaps.len(),
            log_files(&dir).len() - 1,
            "one snapshot per segment but the first (taken at each roll): {snaps:?}"
        );
        // Crash: no close snapshot; the newest one is at the active segment's base.
        drop(log);
        crate::runtime::sleep(Duration::from_millis(10)).await;

        // Each variant: which snapshots to remove or damage before reopening.
        for variant in ["as is", "newest damaged", "none"] {
            let snaps = snapshot_files(&dir);
            match variant {
                "newest damaged" => {
                    let last = snaps.last().unwrap();
                    let mut b = std::fs::read(last).unwrap();
                    let n = b.len();
                    b[n / 2] ^= 0xff;
                    std::fs::write(last, b).unwrap();
                }
                "none" => {
                    for s in &snaps {
                        std::fs::remove_file(s).unwrap();
                    }
                }
                _ => {}
            }
            let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
            assert_eq!(log.log_end_offset(), Offset(720), "{variant}");
            // The last five batches of each producer are duplicates.
            for (b, base) in sent.iter().rev().take(10) {
                let info = log.append(b.clone()).await.unwrap();
                assert_eq!(info.base_offset, Offset(*base), "{variant}");
            }
            let p = log.producers();
            assert_eq!(p.len(), 2);
            assert_eq!(p[0].last_sequence, seq[0] - 1, "{variant}");
            assert_eq!(p[1].last_sequence, seq[1] - 1, "{variant}");
            assert_eq!(log.log_end_offset(), Offset(720));
            // Crash again without appending.
            drop(log);
            crate::runtime::sleep(Duration::from_millis(10)).await;
        }
        // Carry on after the rebuild; a clean close leaves a snapshot at the end.
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        let b = encode_idempotent(100, 0, seq[0], 3, ts);
        assert_eq!(produce(&log, b).await.unwrap().base_offset, Offset(720));
        log.close().await.unwrap();
        let snaps = snapshot_files(&dir);
        assert!(
            snaps
                .last()
                .unwrap()
                .ends_with("00000000000000000723.snapshot")
        );
        assert!(snaps.len() <= 2);
    });
}

#[test]
fn failed_log_does_not_claim_unwritten_batches() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        let ts = now_ms();
        produce(&log, encode_idempotent(5, 0, 0, 2, ts))
            .await
            .unwrap();
        file::fault::fail_next_writes(1);
        let b = encode_idempotent(5, 0, 2, 2, ts);
        assert_eq!(produce(&log, b.clone()).await, Err(56));
        // The log is stopped: the retry is refused, not taken as a duplicate.
        assert_eq!(produce(&log, b.clone()).await, Err(56));
        assert!(log.close().await.is_err());
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(2));
        // After recovery the retry is appended for real.
        assert_eq!(
            produce(&log, b.clone()).await.unwrap().base_offset,
            Offset(2)
        );
        assert_eq!(log.log_end_offset(), Offset(4));
        assert_eq!(produce(&log, b).await.unwrap().base_offset, Offset(2));
        log.close().await.unwrap();
    });
}

/// Size retention deletes the oldest sealed segments (files too), moves
/// the log start, and reads below it are out of range; a reopen keeps it.
#[test]
fn retention_by_bytes_and_time_then_reopen() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        for i in 0..40 {
            append_durable(&log, 4, 1_000 + i, 200).await;
        }
        let segments_before = log_files(&dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .count();
        assert!(segments_before > 5, "{segments_before} segments");
        // Keep at most ~3 segments' worth.
        log.update_config(LogConfig {
            retention_bytes: 3 * 4096,
            ..log.cfg()
        });
        let n = log.enforce_retention(i64::MAX / 2).await.unwrap();
        assert!(n > 0);
        let start = log.log_start_offset().0;
        assert!(start > 0);
        assert!(log.size_bytes() < 4 * 4096);
        assert!(!segment_path(&dir, 0, LOG_SUFFIX).exists());
        assert!(matches!(
            log.read(Offset(start - 1), 1 << 20).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let all = read_all(&log, start, 1 << 20).await;
        assert_eq!(all.len() as i64, 160 - start);
        // Time: every sealed segment is older than 1 ms at time 10^9.
        log.update_config(LogConfig {
            retention_bytes: -1,
            retention_ms: 1,
            ..log.cfg()
        });
        log.enforce_retention(1_000_000_000).await.unwrap();
        let start = log.log_start_offset().0;
        let files = log_files(&dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .count();
        assert_eq!(files, 1, "only the active segment remains");
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.log_start_offset().0, start);
        assert_eq!(log.high_watermark().0, 160);
        log.close().await.unwrap();
    });
}

/// Time retention and segments whose batches carry no timestamp (-1, as Raft's control
/// batches): such a segment has no age of its own, so it goes with the next segment old
/// enough and stays while the next one is not.
#[test]
fn undated_segments_expire_with_the_next_one() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        // One 3 KB batch per 4 KiB segment: old, undated, new, new (active).
        let mut bases = Vec::new();
        for ts in [1_000, -1, 1_000_000_000, 1_000_000_000] {
            bases.push(append_durable(&log, 1, ts, 3_000).await.base_offset.0);
        }
        log.update_config(LogConfig {
            retention_ms: 1,
            ..log.cfg()
        });
        assert_eq!(log.enforce_retention(1_000_000_000).await.unwrap(), 1);
        assert_eq!(
            log.log_start_offset().0,
            bases[1],
            "the undated segment stays before a new one"
        );
        assert_eq!(log.enforce_retention(1_000_000_010).await.unwrap(), 2);
        assert_eq!(
            log.log_start_offset().0,
            bases[3],
            "it goes with the next one once that is old"
        );
        log.close().await.unwrap();
    });
}

/// DeleteRecords inside a segment: persisted, survives a reopen; -1 means
/// the high watermark; above it is out of range.
#[test]
fn delete_records_persists_log_start() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        for i in 0..20 {
            append_durable(&log, 4, 1_000 + i, 200).await;
        }
        assert_eq!(log.delete_records(33).await.unwrap(), Offset(33));
        assert!(matches!(
            log.delete_records(81).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Below the start: no change.
        assert_eq!(log.delete_records(5).await.unwrap(), Offset(33));
        let first = read_all(&log, 33, 1 << 20).await;
        assert_eq!(first.first().map(|r| r.0), Some(33));
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(33));
        assert_eq!(log.delete_records(-1).await.unwrap(), Offset(80));
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(80));
        log.close().await.unwrap();
    });
}

/// LogAppendTime: the stored batch carries the append time as its max
/// timestamp and the timestamp-type bit, with a valid CRC.
#[test]
fn log_append_time_rewrites_header() {
    run(|dir| async move {
        let cfg = LogConfig {
            log_append_time: true,
            ..small_cfg()
        };
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        let info = append_durable(&log, 3, 1_000, 10).await;
        assert!(info.log_append_time_ms > 1_000_000_000_000);
        let data = log.read(Offset(0), 1 << 20).await.unwrap();
        let (h, _) = batch::validate_batch(&data.records).unwrap();
        assert_eq!(h.max_timestamp, info.log_append_time_ms);
        assert_ne!(h.attributes & batch::ATTR_LOG_APPEND_TIME, 0);
        log.close().await.unwrap();
    });
}

// ---- clean-shutdown marker ----

use super::clean_shutdown::{CLEAN_SHUTDOWN_FILE, CleanShutdown};
use super::log::SegmentSummary;

/// Everything a reader can observe of a log, to compare the two open paths.
#[derive(Debug, PartialEq)]
struct Observed {
    log_end: Offset,
    high_watermark: Offset,
    records: Vec<(i64, i64, Option<Bytes>)>,
    segments: Vec<SegmentSummary>,
    producers: Vec<ProducerInfo>,
    max_timestamp: Option<(Offset, i64)>,
}

/// Every visible record as (offset, timestamp, value), checking offsets
/// are contiguous from 0.
async fn read_records(log: &PartitionLog) -> Vec<(i64, i64, Option<Bytes>)> {
    let mut out = Vec::new();
    let mut next = 0;
    let hw = log.high_watermark().0;
    for _ in 0..100_000 {
        if next >= hw {
            break;
        }
        let d = log.read(Offset(next), 700).await.unwrap();
        let mut b = d.records.clone();
        for set in RecordBatchDecoder::decode_all(&mut b).unwrap() {
            for r in set.records {
                if r.offset >= next {
                    assert_eq!(r.offset, next, "records not contiguous");
                    out.push((r.offset, r.timestamp, r.value));
                    next += 1;
                }
            }
        }
    }
    assert_eq!(next, hw, "read everything below the high watermark");
    out
}

async fn observe(log: &PartitionLog) -> Observed {
    Observed {
        log_end: log.log_end_offset(),
        high_watermark: log.high_watermark(),
        records: read_records(log).await,
        segments: log.segment_summaries(),
        producers: log.producers(),
        max_timestamp: log.max_timestamp().await.unwrap(),
    }
}

/// Several segments, plain and idempotent batches; returns the idempotent
/// batches sent with their base offsets.
async fn fill(log: &Rc<PartitionLog>, rounds: i32, seq0: i32) -> Vec<(Bytes, Offset)> {
    let ts = now_ms();
    let mut sent = Vec::new();
    for i in 0..rounds {
        append_durable(log, 3, ts + i64::from(i), 60).await;
        let b = encode_idempotent(77, 0, seq0 + i * 2, 2, ts + i64::from(i));
        let info = produce(log, b.clone()).await.unwrap();
        sent.push((b, info.base_offset));
    }
    sent
}

fn marker_path(dir: &Path) -> PathBuf {
    dir.join(CLEAN_SHUTDOWN_FILE)
}

async fn crash(log: Rc<PartitionLog>) {
    drop(log);
    crate::runtime::sleep(Duration::from_millis(10)).await;
}

/// A clean close leaves a marker; the next open takes the marker path, sees
/// exactly what a full recovery of the same files sees (offsets, high
/// watermark, data, indexes, producer state), and removes the marker.
#[test]
fn clean_close_then_open_skips_recovery_and_matches_it() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::Created);
        let sent = fill(&log, 40, 0).await;
        assert!(log_files(&dir).len() > 3, "expected several segments");
        let before = observe(&log).await;
        log.close().await.unwrap();
        let m = CleanShutdown::decode(&std::fs::read(marker_path(&dir)).unwrap()).unwrap();
        assert_eq!(m.log_end, before.log_end.0);
        assert_eq!(m.segment_base, before.segments.last().unwrap().base);

        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::CleanShutdown);
        assert!(!marker_path(&dir).exists(), "the marker is removed at open");
        let clean = observe(&log).await;
        assert_eq!(clean, before);
        // No appends, then a crash: the next open recovers the same files.
        crash(log).await;
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::Recovery);
        assert_eq!(observe(&log).await, clean);
        // Producer state works as before: the last five are duplicates.
        for (b, base) in sent.iter().rev().take(5) {
            assert_eq!(log.append(b.clone()).await.unwrap().base_offset, *base);
        }
        assert_eq!(log.log_end_offset(), before.log_end);
        log.close().await.unwrap();
    });
}

/// An empty partition closes and reopens through the marker too.
#[test]
fn empty_log_clean_close_and_open() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::CleanShutdown);
        assert_eq!(log.log_end_offset(), Offset(0));
        append_durable(&log, 2, 5, 10).await;
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::CleanShutdown);
        assert_eq!(read_records(&log).await.len(), 2);
        log.close().await.unwrap();
    });
}

/// After a clean open, appends continue the segment (same file, indexes
/// resumed); a crash then recovers everything, and a clean close after a
/// crash-free run is trusted again.
#[test]
fn appends_after_clean_open_then_crash_are_recovered() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        fill(&log, 10, 0).await;
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::CleanShutdown);
        // Within the active segment, then across rolls.
        let sent = fill(&log, 30, 20).await;
        let before = observe(&log).await;
        assert_eq!(before.records.len() as i64, before.log_end.0);
        crash(log).await;
        assert!(!marker_path(&dir).exists());
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::Recovery);
        let after = observe(&log).await;
        assert_eq!(after.records, before.records);
        assert_eq!(after.log_end, before.log_end);
        assert_eq!(after.producers, before.producers);
        for (b, base) in sent.iter().rev().take(5) {
            assert_eq!(log.append(b.clone()).await.unwrap().base_offset, *base);
        }
        // A clean open with appends and a clean close: trusted again.
        fill(&log, 3, 80).await;
        let before = observe(&log).await;
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        assert_eq!(log.opened_from(), OpenedFrom::CleanShutdown);
        assert_eq!(observe(&log).await, before);
        log.close().await.unwrap();
    });
}

/// A marker that is damaged or disagrees with the files is ignored (and
/// removed) and the partition is recovered by the scan, losing nothing.
#[test]
fn bad_or_stale_marker_falls_back_to_full_recovery() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
        fill(&log, 30, 0).await;
        let expected = read_records(&log).await;
        log.close().await.unwrap();
        let variants = [
            "flipped byte",
            "truncated marker",
            "wrong size",
            "wrong log end",
            "segment grown",
            "index missing",
            "time index damaged",
            "snapshot missing",
            "last batch corrupt",
        ];
        for variant in variants {
            let m_path = marker_path(&dir);
            let m = CleanShutdown::decode(&std::fs::read(&m_path).unwrap()).unwrap();
            let seg = segment_path(&dir, m.segment_base, LOG_SUFFIX);
            match variant {
                "flipped byte" => {
                    let mut b = std::fs::read(&m_path).unwrap();
                    b[10] ^= 0x40;
                    std::fs::write(&m_path, b).unwrap();
                }
                "truncated marker" => {
                    let b = std::fs::read(&m_path).unwrap();
                    std::fs::write(&m_path, &b[..b.len() - 1]).unwrap();
                }
                "wrong size" => {
                    let forged = CleanShutdown {
                        segment_bytes: m.segment_bytes - 1,
                        ..m
                    };
                    std::fs::write(&m_path, forged.encode()).unwrap();
                }
                "wrong log end" => {
                    let forged = CleanShutdown {
                        log_end: m.log_end + 1,
                        ..m
                    };
                    std::fs::write(&m_path, forged.encode()).unwrap();
                }
                "segment grown" => {
                    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
                    f.set_len(m.segment_bytes + 4096).unwrap();
                }
                "index missing" => {
                    std::fs::remove_file(segment_path(&dir, m.segment_base, INDEX_SUFFIX)).unwrap();
                }
                "time index damaged" => {
                    let p = segment_path(&dir, m.segment_base, TIME_INDEX_SUFFIX);
                    let mut b = std::fs::read(&p).unwrap();
                    b.truncate(b.len() - 3);
                    std::fs::write(&p, b).unwrap();
                }
                "snapshot missing" => {
                    for s in snapshot_files(&dir) {
                        std::fs::remove_file(s).unwrap();
                    }
                }
                "last batch corrupt" => {
                    // A byte inside the last batch's records (CRC-covered).
                    let mut b = std::fs::read(&seg).unwrap();
                    let n = b.len();
                    b[n - 2] ^= 0x01;
                    std::fs::write(&seg, b).unwrap();
                }
                _ => unreachable!(),
            }
            let log = PartitionLog::open(dir.clone(), small_cfg()).await.unwrap();
            assert_eq!(log.opened_from(), OpenedFrom::Recovery, "{variant}");
            assert!(!m_path.exists(), "{variant}: marker left behind");
            let got = read_records(&log).await;
            if variant == "last batch corrupt" {
                // Recovery cuts the damaged last batch, as after a crash.
                assert!(got.len() < expected.len() && expected.starts_with(&got));
            } else {
                assert_eq!(got, expected, "{variant}");
            }
            log.close().await.unwrap();
            // The clean close restores the marker for the next variant.
            assert!(m_path.exists());
        }
    });
}

/// Open time of a partition whose last segment is large, with the
/// clean-shutdown marker and without it (full scan). A measurement, not a
/// check: run with
/// `SLUICE_OPEN_BENCH_MB=300 cargo test --release --lib open_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn open_time_with_and_without_marker() {
    let mb: u64 = std::env::var("SLUICE_OPEN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    run(move |dir| async move {
        let cfg = LogConfig::default();
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        let batch_bytes = 8 * 100_000;
        let mut last = None;
        for i in 0..(mb << 20) / batch_bytes as u64 {
            last = Some(
                log.append(encode_batch(0, 8, i as i64, 100_000))
                    .await
                    .unwrap(),
            );
        }
        log.wait_durable(&last.unwrap()).await.unwrap();
        let size = log.size_bytes();
        log.close().await.unwrap();
        let started = std::time::Instant::now();
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        let clean = started.elapsed();
        assert_eq!(log.opened_from(), OpenedFrom::CleanShutdown);
        crash(log).await;
        let started = std::time::Instant::now();
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        let scanned = started.elapsed();
        assert_eq!(log.opened_from(), OpenedFrom::Recovery);
        log.close().await.unwrap();
        eprintln!(
            "open of a {size}-byte last segment: {clean:?} with the clean-shutdown marker, \
             {scanned:?} with the full recovery scan"
        );
    });
}

/// The real file's zero fill: ranges that are not powers of two are written from the shard's
/// cached zero buffers, exactly over `[from, to)`, and the bytes around stay as they were.
#[test]
fn zero_fill_writes_exactly_the_range() {
    run(|dir| async move {
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zeros.bin");
        let f = file::DmaSegmentFile::open_rw(&path, true).await.unwrap();
        let a = f.alignment() as usize;
        let len = 64 * a;
        let mut buf = f.alloc_buffer(len);
        buf.as_mut_slice().fill(0xAB);
        f.write_at(buf, 0).await.unwrap();
        // 7 blocks (4 + 2 + 1 from the cache), then 11 more elsewhere, then the first again.
        for (from, to) in [(a, 8 * a), (20 * a, 31 * a), (a, 8 * a)] {
            f.zero_fill(from as u64, to as u64).await.unwrap();
        }
        f.fdatasync().await.unwrap();
        let back = f.read_at(0, len).await.unwrap();
        for (i, b) in back.iter().enumerate() {
            let zeroed = (a..8 * a).contains(&i) || (20 * a..31 * a).contains(&i);
            assert_eq!(*b, if zeroed { 0 } else { 0xAB }, "byte {i}");
        }
        f.close().await.unwrap();
    });
}
