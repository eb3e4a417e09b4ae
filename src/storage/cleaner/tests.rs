//! The cleaner's rules on batches built by kafka-protocol, one codec at a time.

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use super::test_util::batch;
use super::*;
use crate::storage::producer_state::Marker;

const LIMIT: usize = 1 << 20;
const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn marker_batch(base: i64, pid: i64, m: Marker, ts: i64) -> Vec<u8> {
    let mut b = batch::encode_marker(pid, 0, m, 0, ts).to_vec();
    batch::set_base_offset(&mut b, base);
    b
}

fn header(b: &[u8]) -> BatchHeader {
    batch::validate_batch(b).expect("a valid batch").0
}

/// The (offset, key, value) records of a batch, decoded by kafka-protocol (as a client
/// would).
fn decoded(b: &[u8]) -> Vec<(i64, Option<String>, Option<String>)> {
    let mut bytes = Bytes::copy_from_slice(b);
    let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
    let s = |v: &Option<Bytes>| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
    set.records
        .iter()
        .map(|r| (r.offset, s(&r.key), s(&r.value)))
        .collect()
}

/// Clean `batches` in order with a map built from all of them (one pass).
fn clean_all(
    batches: &[Vec<u8>],
    producers: &ProducerStateTable,
    now_ms: i64,
    delete_retention_ms: i64,
) -> (Vec<Outcome>, CleanStats) {
    let mut map = OffsetMap::with_memory(1 << 16);
    for b in batches {
        assert!(add_to_map(b, &header(b), producers, &mut map, LIMIT).expect("map"));
    }
    let end = batches.last().map_or(0, |b| header(b).next_offset());
    let rules = Rules {
        map: &map,
        map_end: end,
        now_ms,
        delete_retention_ms,
        producers,
        decompress_limit: LIMIT,
    };
    let mut txns = TxnTracker::default();
    let mut stats = CleanStats::default();
    let out = batches
        .iter()
        .map(|b| clean_batch(b, &header(b), &rules, &mut txns, &mut stats).expect("clean"))
        .collect();
    (out, stats)
}

#[test]
fn the_latest_record_of_each_key_stays_at_its_offset_in_every_codec() {
    for c in CODECS {
        let b1 = batch(
            0,
            &[
                (Some("a"), Some("a1")),
                (Some("b"), Some("b1")),
                (Some("c"), Some("c1")),
            ],
            c,
            1_000,
            None,
        );
        let b2 = batch(
            3,
            &[(Some("a"), Some("a2")), (Some("d"), Some("d1"))],
            c,
            1_000,
            None,
        );
        let b3 = batch(5, &[(Some("b"), Some("b2"))], c, 1_000, None);
        let (out, stats) = clean_all(
            &[b1.clone(), b2.clone(), b3.clone()],
            &ProducerStateTable::default(),
            2_000,
            0,
        );
        let Outcome::Rewritten(r1) = &out[0] else {
            panic!("{c:?}: the first batch loses a and b: {:?}", out[0]);
        };
        let h1 = header(r1);
        let o1 = header(&b1);
        assert_eq!(
            (h1.base_offset, h1.last_offset_delta, h1.record_count),
            (0, 2, 1)
        );
        assert_eq!(h1.attributes, o1.attributes, "{c:?}: same codec");
        assert_eq!(
            (h1.base_timestamp, h1.max_timestamp),
            (o1.base_timestamp, o1.max_timestamp)
        );
        assert_eq!(decoded(r1), [(2, Some("c".into()), Some("c1".into()))]);
        assert_eq!(out[1], Outcome::Unchanged, "{c:?}");
        assert_eq!(out[2], Outcome::Unchanged, "{c:?}");
        assert_eq!(stats.records_removed, 2);
        assert_eq!(stats.batches_rewritten, 1);
    }
}

#[test]
fn records_past_the_map_end_are_kept_and_a_whole_batch_can_go() {
    let b1 = batch(0, &[(Some("a"), Some("1"))], Compression::None, 1, None);
    let b2 = batch(1, &[(Some("a"), Some("2"))], Compression::None, 1, None);
    let b3 = batch(2, &[(Some("a"), Some("3"))], Compression::None, 1, None);
    let producers = ProducerStateTable::default();
    let mut map = OffsetMap::with_memory(1 << 16);
    for b in [&b1, &b2] {
        assert!(add_to_map(b, &header(b), &producers, &mut map, LIMIT).expect("map"));
    }
    let rules = Rules {
        map: &map,
        map_end: 2,
        now_ms: 10,
        delete_retention_ms: 0,
        producers: &producers,
        decompress_limit: LIMIT,
    };
    let (mut txns, mut stats) = (TxnTracker::default(), CleanStats::default());
    let mut run =
        |b: &Vec<u8>| clean_batch(b, &header(b), &rules, &mut txns, &mut stats).expect("clean");
    assert_eq!(run(&b1), Outcome::Removed);
    assert_eq!(run(&b2), Outcome::Unchanged);
    assert_eq!(run(&b3), Outcome::Unchanged, "past the map's end");
}

#[test]
fn tombstones_stay_for_delete_retention_then_go() {
    let b1 = batch(
        0,
        &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
        Compression::Lz4,
        1_000,
        None,
    );
    let b2 = batch(2, &[(Some("a"), None)], Compression::Lz4, 1_000, None);
    let batches = [b1, b2];
    let producers = ProducerStateTable::default();
    // Within delete.retention.ms: the tombstone stays, the value it deletes goes.
    let (out, _) = clean_all(&batches, &producers, 1_500, 1_000);
    let Outcome::Rewritten(r1) = &out[0] else {
        panic!("{:?}", out[0])
    };
    assert_eq!(decoded(r1), [(1, Some("b".into()), Some("1".into()))]);
    assert_eq!(out[1], Outcome::Unchanged);
    // Past it: the tombstone goes too.
    let (out, stats) = clean_all(&batches, &producers, 2_001, 1_000);
    assert_eq!(out[1], Outcome::Removed);
    assert_eq!(stats.tombstones_removed, 1);
}

#[test]
fn records_without_a_key_are_dropped() {
    let b = batch(
        0,
        &[(None, Some("x")), (Some("k"), Some("v"))],
        Compression::Snappy,
        1,
        None,
    );
    let (out, stats) = clean_all(&[b], &ProducerStateTable::default(), 2, 1_000);
    let Outcome::Rewritten(r) = &out[0] else {
        panic!("{:?}", out[0])
    };
    assert_eq!(decoded(r), [(1, Some("k".into()), Some("v".into()))]);
    assert_eq!(stats.keyless_removed, 1);
}

#[test]
fn aborted_transactions_go_and_markers_outlive_their_data() {
    // Producer 7 commits a at 0 (marker at 1); producer 8 aborts b at 2 (marker at 3);
    // a plain batch at 4 updates a.
    let committed = batch(
        0,
        &[(Some("a"), Some("t"))],
        Compression::Zstd,
        100,
        Some((7, 0, 0, true)),
    );
    let commit = marker_batch(1, 7, Marker::Commit, 100);
    let aborted = batch(
        2,
        &[(Some("b"), Some("x"))],
        Compression::Zstd,
        100,
        Some((8, 0, 0, true)),
    );
    let abort = marker_batch(3, 8, Marker::Abort, 100);
    let later = batch(4, &[(Some("c"), Some("c"))], Compression::Zstd, 100, None);
    let batches = [committed, commit, aborted, abort, later];
    let mut producers = ProducerStateTable::default();
    for b in &batches {
        producers.replay(&header(b), b);
    }
    assert_eq!(producers.txn_outcome(8, 2), Some(false));
    // Before the horizon: the aborted record goes (its batch stays empty: producer 8's last
    // batch), both markers stay.
    let (out, stats) = clean_all(&batches, &producers, 150, 1_000);
    assert_eq!(out[0], Outcome::Unchanged, "committed data is data");
    assert_eq!(out[1], Outcome::Unchanged);
    let Outcome::Rewritten(empty) = &out[2] else {
        panic!("{:?}", out[2])
    };
    let h = header(empty);
    assert_eq!(
        (
            h.base_offset,
            h.record_count,
            h.last_offset_delta,
            h.producer_id,
            h.base_sequence
        ),
        (2, 0, 0, 8, 0)
    );
    assert_eq!(out[3], Outcome::Unchanged);
    assert_eq!(stats.aborted_removed, 1);
    // Past the horizon: the COMMIT marker stays while its transaction's record does, and
    // the ABORT marker stays with producer 8's last batch (kept empty).
    let (out, stats) = clean_all(&batches, &producers, 5_000, 1_000);
    assert_eq!(out[1], Outcome::Unchanged);
    assert_eq!(out[3], Outcome::Unchanged);
    assert_eq!(stats.markers_removed, 0);
    // Once producer 8 wrote a later batch, its aborted one goes, and then its marker.
    let later8 = batch(
        5,
        &[(Some("d"), Some("d"))],
        Compression::Zstd,
        100,
        Some((8, 0, 1, false)),
    );
    let mut batches = batches.to_vec();
    batches.push(later8);
    let mut producers = ProducerStateTable::default();
    for b in &batches {
        producers.replay(&header(b), b);
    }
    let (out, stats) = clean_all(&batches, &producers, 5_000, 1_000);
    assert_eq!(out[2], Outcome::Removed);
    assert_eq!(out[3], Outcome::Removed);
    assert_eq!(stats.markers_removed, 1);
}

#[test]
fn a_producers_last_batch_stays_empty_and_earlier_ones_go() {
    let p = Some((5, 0, 0, false));
    let b1 = batch(0, &[(Some("k"), Some("1"))], Compression::Gzip, 1, p);
    let b2 = batch(
        1,
        &[(Some("k"), Some("2"))],
        Compression::Gzip,
        1,
        Some((5, 0, 1, false)),
    );
    let b3 = batch(2, &[(Some("k"), Some("3"))], Compression::Gzip, 1, None);
    let batches = [b1, b2, b3];
    let mut producers = ProducerStateTable::default();
    for b in &batches {
        producers.replay(&header(b), b);
    }
    let (out, stats) = clean_all(&batches, &producers, 2, 1_000);
    assert_eq!(out[0], Outcome::Removed);
    let Outcome::Rewritten(e) = &out[1] else {
        panic!("{:?}", out[1])
    };
    let h = header(e);
    assert_eq!(
        (h.record_count, h.base_sequence, h.attributes & 0x07),
        (0, 1, 0)
    );
    assert!(decoded(e).is_empty());
    assert_eq!(out[2], Outcome::Unchanged);
    assert_eq!(stats.empty_batches_kept, 1);
    // Cleaning the empty batch again leaves it as it is.
    let (again, _) = clean_all(&[e.clone(), batches[2].clone()], &producers, 2, 1_000);
    assert_eq!(again[0], Outcome::Unchanged);
}

#[test]
fn a_full_map_ends_the_pass_before_the_batch() {
    let mut map = OffsetMap::with_memory(0);
    let producers = ProducerStateTable::default();
    let cap = map.capacity();
    let keys: Vec<String> = (0..cap).map(|i| format!("k{i}")).collect();
    let kv: Vec<_> = keys.iter().map(|k| (Some(k.as_str()), Some("v"))).collect();
    let b = batch(0, &kv, Compression::None, 1, None);
    assert!(add_to_map(&b, &header(&b), &producers, &mut map, LIMIT).expect("map"));
    let one_more = batch(
        cap as i64,
        &[(Some("new"), Some("v"))],
        Compression::None,
        1,
        None,
    );
    assert!(!add_to_map(&one_more, &header(&one_more), &producers, &mut map, LIMIT).expect("map"));
    assert_eq!(map.get(b"new"), None);
}
