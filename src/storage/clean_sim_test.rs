//! The log cleaner on the simulated disk, with a power loss at every step of a pass.
//!
//! Each seed builds a compacted log (small segments, keys from a small set, tombstones,
//! every codec, with the shard journal on half the seeds), then for k = 0, 1, 2, ... builds
//! it again and cuts the power at the k-th change the cleaning pass makes, until a pass
//! runs to its end. After each crash the log is reopened (recovery, the journal's replay) and
//! checked: offsets increase, every record read is the one appended at its offset, the
//! latest record of every key is there (tombstones too, unless past `delete.retention.ms`),
//! no cleaner file is left. Then a pass runs to its end and the log must be compacted: below
//! the cleaner's checkpoint every key appears once.
//!
//! `SLUICE_CLEAN_SIM_SEEDS=N` runs N seeds (4 by default), `SLUICE_CLEAN_SIM_SEED=S` one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use super::cleaner::OffsetMap;
use super::cleaner::test_util::batch;
use super::io::Env;
use super::log::CleanerThrottle;
use super::sim::{SimDisk, SimRng};
use super::sim_test::{sim_env, sim_journal};
use super::{LogConfig, PartitionLog};
use crate::types::Offset;

const DIR: &str = "/data/compacted-0";
const NOW_MS: i64 = 1_700_000_000_000;

/// (offset -> (key, value)) of everything appended.
type Appended = HashMap<i64, (String, Option<String>)>;

struct Scenario {
    journal: bool,
    /// Tombstones are past `delete.retention.ms` when the pass runs.
    expire: bool,
}

fn scenario(seed: u64) -> Scenario {
    Scenario {
        journal: seed.is_multiple_of(2),
        expire: seed % 3 == 1,
    }
}

fn cfg(s: &Scenario) -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        compact: true,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: if s.expire { 0 } else { 1 << 40 },
        ..LogConfig::default()
    }
}

async fn open(env: &Env, s: &Scenario) -> Rc<PartitionLog> {
    let dir = PathBuf::from(DIR);
    env.disk.create_dir_all(&dir).await.expect("mkdir");
    PartitionLog::open_in(env.clone(), dir, cfg(s))
        .await
        .expect("open")
}

/// The log of `seed`, built the same way every time.
async fn build(seed: u64) -> (SimDisk, Env, Rc<PartitionLog>, Appended) {
    let s = scenario(seed);
    let (disk, env, _) = sim_env(seed);
    let env = if s.journal {
        env.with_journal(sim_journal(16 << 10))
    } else {
        env
    };
    let log = open(&env, &s).await;
    let mut rng = SimRng::new(seed ^ 0x5eed);
    let mut appended = Appended::new();
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    for i in 0..60 {
        let n = 1 + rng.below(4) as usize;
        let kv: Vec<(String, Option<String>)> = (0..n)
            .map(|j| {
                let key = format!("key-{}", rng.below(12));
                let value = (!rng.chance(0.15))
                    .then(|| format!("value-{i}-{j}-{}", "x".repeat(rng.below(40) as usize)));
                (key, value)
            })
            .collect();
        let refs: Vec<(Option<&str>, Option<&str>)> = kv
            .iter()
            .map(|(k, v)| (Some(k.as_str()), v.as_deref()))
            .collect();
        let codec = codecs[rng.below(5) as usize];
        let b = batch(0, &refs, codec, NOW_MS - 1_000, None);
        let info = log.append(Bytes::from(b)).await.expect("append");
        log.wait_durable(&info).await.expect("durable");
        for (j, (k, v)) in kv.into_iter().enumerate() {
            appended.insert(info.base_offset.get() + j as i64, (k, v));
        }
    }
    (disk, env, log, appended)
}

/// Every record from the log start to the high watermark: (offset, key, value).
async fn read_all(log: &PartitionLog) -> Vec<(i64, String, Option<String>)> {
    let mut out: Vec<(i64, String, Option<String>)> = Vec::new();
    let mut next = log.log_start_offset().get();
    let hw = log.high_watermark().get();
    while next < hw {
        let data = log.read(Offset(next), 1 << 16).await.expect("read");
        // A read inside a gap gets the next batch, never nothing: a consumer would be stuck.
        assert!(!data.records.is_empty(), "empty read at {next} below {hw}");
        let mut b = data.records.clone();
        let sets = RecordBatchDecoder::decode_all(&mut b).expect("decode");
        let mut last = next;
        for set in sets {
            for r in set.records {
                if r.offset < next {
                    continue;
                }
                let s =
                    |v: &Option<Bytes>| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
                out.push((r.offset, s(&r.key).expect("a key"), s(&r.value)));
                last = r.offset;
            }
        }
        // The next read starts after the last batch returned (a cleaned batch may end in a
        // gap past its last record).
        next = super::batch::BatchIter::new(&data.records)
            .map(|b| b.expect("a batch").1.next_offset())
            .fold(last + 1, i64::max);
    }
    out
}

/// The checks after any reopen. Returns the records read.
async fn check(
    seed: u64,
    k: Option<u64>,
    log: &PartitionLog,
    env: &Env,
    appended: &Appended,
) -> Vec<(i64, String, Option<String>)> {
    let s = scenario(seed);
    let at = || {
        format!("seed {seed}, power loss at change {k:?} (replay: SLUICE_CLEAN_SIM_SEED={seed})")
    };
    let records = read_all(log).await;
    for w in records.windows(2) {
        assert!(w[0].0 < w[1].0, "{}: offsets do not increase: {w:?}", at());
    }
    for (o, key, value) in &records {
        assert_eq!(
            appended.get(o),
            Some(&(key.clone(), value.clone())),
            "{}: offset {o} is not what was appended there",
            at()
        );
    }
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for (o, (key, _)) in appended {
        let e = latest.entry(key.as_str()).or_insert(*o);
        *e = (*e).max(*o);
    }
    for (key, o) in latest {
        let tombstone = appended[&o].1.is_none();
        let present = records.iter().any(|r| r.0 == o);
        assert!(
            present || (tombstone && s.expire),
            "{}: the latest record of {key} (offset {o}) is gone",
            at()
        );
    }
    let names = env.disk.list_dir(&PathBuf::from(DIR)).await.expect("list");
    for n in names {
        let n = n.to_string_lossy();
        assert!(
            !n.ends_with(".cleaned") && n != "cleaner-swap",
            "{}: {n} left behind",
            at()
        );
    }
    records
}

async fn clean(log: &PartitionLog) -> Result<(), super::StorageError> {
    let mut map = OffsetMap::with_memory(1 << 16);
    log.clean(&mut map, NOW_MS, &CleanerThrottle::new(0))
        .await
        .map(|_| ())
}

async fn run_seed(seed: u64) {
    let s = scenario(seed);
    let mut k = 0u64;
    loop {
        let (disk, env, log, appended) = build(seed).await;
        disk.crash_after(k);
        let res = clean(&log).await;
        if !disk.crashed_as_planned() {
            res.unwrap_or_else(|e| panic!("seed {seed}: the pass failed without a crash: {e}"));
            disk.resume();
            let records = check(seed, None, &log, &env, &appended).await;
            let end = log.cleaner_checkpoint().get();
            assert!(end > 0, "seed {seed}: the pass moved the checkpoint");
            let below: Vec<_> = records.iter().filter(|r| r.0 < end).collect();
            let mut seen = std::collections::HashSet::new();
            for r in &below {
                assert!(
                    seen.insert(r.1.clone()),
                    "seed {seed}: {} twice below the checkpoint {end}",
                    r.1
                );
            }
            assert!(
                records.len() < appended.len(),
                "seed {seed}: nothing was removed"
            );
            assert!(k > 20, "seed {seed}: a pass takes more steps than {k}");
            return;
        }
        disk.resume();
        drop(log);
        let env = env.restarted();
        let log = open(&env, &s).await;
        check(seed, Some(k), &log, &env, &appended).await;
        // The next pass cleans what the interrupted one did not.
        clean(&log).await.unwrap_or_else(|e| {
            panic!("seed {seed}, power loss at change {k}: the next pass failed: {e}")
        });
        let records = check(seed, Some(k), &log, &env, &appended).await;
        let end = log.cleaner_checkpoint().get();
        let mut seen = std::collections::HashSet::new();
        for r in records.iter().filter(|r| r.0 < end) {
            assert!(
                seen.insert(r.1.clone()),
                "seed {seed}, power loss at change {k}: {} twice below the checkpoint {end} after the next pass (replay: SLUICE_CLEAN_SIM_SEED={seed})",
                r.1
            );
        }
        k += 1;
    }
}

#[test]
fn a_power_loss_at_any_step_of_a_cleaning_pass_leaves_the_old_or_the_cleaned_segments() {
    let seeds: Vec<u64> = match std::env::var("SLUICE_CLEAN_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => {
            let n = std::env::var("SLUICE_CLEAN_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(4u64);
            (0..n).collect()
        }
    };
    crate::runtime::block_on_test(move || async move {
        for seed in seeds {
            run_seed(seed).await;
        }
    });
}
