//! Harnesses shared by the coverage-guided fuzz targets (`tools/fuzz`, cargo-fuzz/libFuzzer)
//! and their smoke test in the test command (`tests::corpus_and_mutations`), so both drive the
//! same code.
//!
//! - [`request_frame`]: a request frame (the bytes after the length prefix) through the
//!   connection's decode path, `server::connection::decode_request`: API key and version
//!   checks, header, body. Any input must give a decoded request or a `ConnectionError` (the
//!   connection closes with a logged reason), never a panic.
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
    fn segment_recovery_corpus_and_mutations() {
        let runs = smoke("segment_recovery", super::segment_recovery);
        assert!(runs >= MUTATIONS);
    }
}
