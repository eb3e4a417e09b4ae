//! Harnesses shared by the coverage-guided fuzz targets (`tools/fuzz`, cargo-fuzz/libFuzzer)
//! and their smoke test in the test command (`tests::corpus_and_mutations`), so both drive the
//! same code.
//!
//! - [`request_frame`]: a request frame (the bytes after the length prefix) through the
//!   connection's decode path, `server::connection::decode_request`: API key and version
//!   checks, header, body. Any input must give a decoded request or a `ConnectionError` (the
//!   connection closes with a logged reason), never a panic.
//! - [`request_dispatch`]: a request frame through decode *and* dispatch, against a broker
//!   shard running in this process (one shard, its own temporary data directory, the real
//!   disk): the handlers see whatever the decoder accepts. Any input must give a response, a
//!   `ConnectionError`, or a wait (a long poll, a rebalance) that the harness cuts after
//!   [`DISPATCH_WAIT`], never a panic.
//! - [`segment_recovery`]: a partition whose only segment holds the input, recovered on the
//!   simulated disk (`storage::recovery::fuzz_segment`): recovery succeeds and keeps exactly a
//!   valid prefix of batches, with zeros after it.
//!
//! The seed corpus is in `tools/fuzz/corpus/<target>/`: request frames captured from real
//! clients (kcat, confluent-kafka, kafka-python, kafkajs) by `tools/fuzz/capture.py`, and
//! segment files written by the broker.

/// Decode one request frame; see the module documentation.
pub fn request_frame(data: &[u8]) {
    let _ = crate::server::connection::decode_request(bytes::Bytes::copy_from_slice(data));
}

/// How long one dispatched request may wait (long polls, joins) before the harness moves on.
pub const DISPATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Decode and dispatch one request frame on an in-process shard; see the module documentation.
/// The shard lives for the whole process, on an executor thread of its own; a panic there
/// fails this call.
pub fn request_dispatch(data: &[u8]) {
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    dispatcher()
        .lock()
        .expect("dispatcher")
        .send((data.to_vec(), done_tx))
        .expect("the dispatch shard is running");
    done_rx
        .recv()
        .expect("the dispatch shard panicked on this input");
}

/// Requests the dispatch harness saw answered (a response frame), for the smoke test.
pub static DISPATCH_ANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

type DispatchJob = (Vec<u8>, std::sync::mpsc::SyncSender<()>);

fn dispatcher() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<DispatchJob>> {
    static DISPATCHER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<DispatchJob>>> =
        std::sync::OnceLock::new();
    DISPATCHER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<DispatchJob>();
        std::thread::Builder::new()
            .name("fuzz-dispatch".into())
            .spawn(move || crate::runtime::block_on_test(move || dispatch_loop(rx)))
            .expect("dispatch thread");
        std::sync::Mutex::new(tx)
    })
}

/// The in-process shard: a fresh data directory, the offsets topic, every partition on this
/// one shard; then each frame as a request of a connection of its own.
async fn dispatch_loop(rx: std::sync::mpsc::Receiver<DispatchJob>) {
    use std::sync::Arc;
    let dir = std::env::temp_dir().join(format!("sluice-fuzz-dispatch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fuzz data directory");
    let config = crate::config::Config {
        data_dir: dir.clone(),
        offsets_topic_partitions: 1,
        segment_bytes: 1 << 20,
        offsets_topic_segment_bytes: 1 << 20,
        ..crate::config::Config::default()
    };
    crate::runtime::file::warm_iopoll_probe(&dir)
        .await
        .expect("iopoll probe");
    let mut catalog = crate::cluster::catalog::Catalog::load_or_create(&dir).expect("catalog");
    crate::group::ensure_offsets_topic(&mut catalog, &config).expect("offsets topic");
    let shard = crate::shard::Shard::new(
        crate::types::ShardId(0),
        1,
        Arc::new(config),
        Arc::new(crate::cluster::catalog::Catalog::default()),
        vec![None],
    );
    shard
        .apply_catalog(Arc::new(catalog))
        .await
        .expect("open partitions");
    shard.groups.load(&shard).await.expect("load groups");
    while let Ok((frame, done)) = rx.recv() {
        if frame.len() >= 8 {
            let mut sequencer = crate::server::ordering::Sequencer::default();
            if let Ok(task) = crate::server::connection::start_request(
                shard.clone(),
                bytes::Bytes::from(frame),
                std::time::Instant::now(),
                &mut sequencer,
            ) && let Some(Ok(Some(_))) = crate::runtime::timeout(DISPATCH_WAIT, task).await
            {
                DISPATCH_ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _ = done.send(());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Recover a segment holding `data`; see the module documentation.
pub fn segment_recovery(data: &[u8]) {
    crate::storage::recovery::fuzz_segment(data);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::storage::sim::SimRng;

    /// Inputs per seed file in the smoke run: the file, then random mutations of it.
    const MUTATIONS: usize = 200;

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tools/fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read(p).expect("read corpus file"))
            .collect()
    }

    /// Bit flips, byte overwrites with boundary values, truncations and duplications: what a
    /// fuzzer tries first, deterministic here.
    fn mutate(rng: &mut SimRng, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 if !out.is_empty() => {
                    let i = rng.below(out.len() as u64) as usize;
                    out[i] ^= 1 << rng.below(8);
                }
                1 if !out.is_empty() => {
                    let i = rng.below(out.len() as u64) as usize;
                    out[i] = [0x00, 0xff, 0x7f, 0x80][rng.below(4) as usize];
                }
                2 => out.truncate(rng.below(out.len() as u64 + 1) as usize),
                3 if !out.is_empty() => {
                    let i = rng.below(out.len() as u64) as usize;
                    let tail = out[i..].to_vec();
                    out.extend_from_slice(&tail);
                }
                _ => out.push(rng.below(256) as u8),
            }
        }
        out
    }

    fn smoke(target: &str, run: fn(&[u8])) -> usize {
        let mut rng = SimRng::new(0x5eed);
        let mut runs = 0;
        for input in corpus(target) {
            run(&input);
            for _ in 0..MUTATIONS {
                run(&mutate(&mut rng, &input));
                runs += 1;
            }
        }
        runs
    }

    #[test]
    fn request_frame_corpus_and_mutations() {
        let runs = smoke("request_frame", super::request_frame);
        assert!(
            runs >= 10 * MUTATIONS,
            "the request corpus is too small: {runs}"
        );
    }

    #[test]
    fn request_dispatch_corpus_and_mutations() {
        // Fewer mutations than the decode-only smoke run: each input runs a handler.
        let mut rng = SimRng::new(0xd15);
        let mut runs = 0;
        for input in corpus("request_frame") {
            super::request_dispatch(&input);
            for _ in 0..20 {
                super::request_dispatch(&mutate(&mut rng, &input));
                runs += 1;
            }
        }
        assert!(runs >= 1000, "the request corpus is too small: {runs}");
        let answered = super::DISPATCH_ANSWERED.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("dispatch smoke: {runs} inputs, {answered} answered");
        assert!(
            answered >= 100,
            "the handlers answered only {answered} requests"
        );
    }

    #[test]
    fn segment_recovery_corpus_and_mutations() {
        let runs = smoke("segment_recovery", super::segment_recovery);
        assert!(runs >= MUTATIONS);
    }
}
