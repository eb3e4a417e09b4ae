//! Malformed and hostile input on raw sockets. The contract: a bad frame length, an undecodable
//! header or body, an unknown API key or an unsupported version of any API but ApiVersions makes
//! the broker close that connection; ApiVersions with an unsupported version gets an ApiVersions
//! v0 response with UNSUPPORTED_VERSION (35). Either way the broker keeps serving everyone else.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::{
    Broker, PeerOutcome, api_versions_v3, await_close, connect_raw, decode_api_versions, frame,
    raw_header_v1, read_frame,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const UNSUPPORTED_VERSION: i16 = 35;
const API_VERSIONS_KEY: i16 = 18;

/// After each bad connection the broker must still serve a well-formed request.
fn assert_still_serving(broker: &Broker, case: &str, correlation_id: i32) {
    eprintln!("case {case:?}: checking that a fresh ApiVersions v3 is served");
    api_versions_v3(broker.addr(), correlation_id);
}

/// Sends `bytes` and expects the broker to close the connection without answering.
fn expect_close(broker: &Broker, case: &str, bytes: &[u8], half_close: bool) {
    let started = Instant::now();
    let mut stream = connect_raw(broker.addr()).expect("connect");
    // The broker may close before it has read everything; a failed write is fine then.
    let _ = stream.write_all(bytes);
    if half_close {
        stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
    }
    let outcome = await_close(&mut stream);
    match outcome {
        PeerOutcome::Closed => {}
        PeerOutcome::Answered(data) => panic!(
            "case {case:?}: expected the broker to close the connection, it sent {} bytes: {:02x?}",
            data.len(),
            &data[..data.len().min(64)]
        ),
        PeerOutcome::TimedOut => panic!(
            "case {case:?}: broker neither closed the connection nor answered within {:?}",
            started.elapsed()
        ),
    }
    eprintln!("case {case:?}: closed after {:?}", started.elapsed());
}

#[test]
fn malformed_frames_close_the_connection() {
    let broker = Broker::start();

    let mut cases: Vec<(&str, Vec<u8>, bool)> = vec![
        // Plain text: the "length" 0x47455420 is ~1.1 GiB, far over the 100 MiB limit.
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "random bytes",
            vec![
                0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0xff, 0x00, 0x7f,
            ],
            false,
        ),
        ("huge length", 0x7fff_ffffi32.to_be_bytes().to_vec(), false),
        ("negative length", (-16i32).to_be_bytes().to_vec(), false),
        (
            "length just over 100 MiB",
            (100 * 1024 * 1024 + 1i32).to_be_bytes().to_vec(),
            false,
        ),
        // A complete frame whose api key is negative and whose header is garbage.
        ("garbage inside a frame", frame(&[0xff; 16]), false),
        // Well-formed header v1, api key 999.
        (
            "unknown api key",
            frame(&raw_header_v1(999, 0, 7, "sluice-it")),
            false,
        ),
        // Metadata (3) at version 99: unsupported version of a non-ApiVersions API.
        (
            "metadata v99",
            frame(&raw_header_v1(3, 99, 8, "sluice-it")),
            false,
        ),
        // The frame is complete (length 5) but the header inside stops after 5 of its 10 bytes.
        (
            "header cut short inside the frame",
            frame(&raw_header_v1(3, 1, 9, "")[..5]),
            false,
        ),
        // Header claims a client id of 100 bytes but the frame ends after 3 of them.
        (
            "client id longer than the frame",
            {
                let mut header = raw_header_v1(3, 1, 10, "");
                let len = header.len();
                header[len - 2..].copy_from_slice(&100i16.to_be_bytes());
                header.extend_from_slice(b"abc");
                frame(&header)
            },
            false,
        ),
        // Metadata v1 with a body that is not a valid topics array (count 1000, no topics).
        (
            "undecodable metadata body",
            {
                let mut request = raw_header_v1(3, 1, 11, "sluice-it");
                request.extend_from_slice(&1000i32.to_be_bytes());
                frame(&request)
            },
            false,
        ),
        // A hostile array length: the decoder sizes its vector from it before reading
        // elements, so 2^31 - 1 topics must not abort the broker (src/alloc.rs).
        (
            "hostile array length",
            {
                let mut request = raw_header_v1(3, 1, 13, "sluice-it");
                request.extend_from_slice(&i32::MAX.to_be_bytes());
                request.extend_from_slice(b"ab");
                frame(&request)
            },
            false,
        ),
    ];
    // A frame announcing 100 bytes, 10 sent, then the client half-closes: the broker sees EOF
    // mid-frame and must close its side.
    let mut truncated = 100i32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&raw_header_v1(18, 0, 12, "")[..8]);
    truncated.extend_from_slice(&[0, 0]);
    cases.push(("truncated frame then half-close", truncated, true));
    // Only half of a length prefix, then half-close.
    cases.push(("two bytes then half-close", vec![0, 0], true));

    for (index, (case, bytes, half_close)) in cases.iter().enumerate() {
        expect_close(&broker, case, bytes, *half_close);
        assert_still_serving(&broker, case, 100 + index as i32);
    }
}

#[test]
fn api_versions_unsupported_version_gets_error_35() {
    let broker = Broker::start();
    let correlation_id = 0x1234_5678;
    let mut stream = connect_raw(broker.addr()).expect("connect");
    // Header v2 (as for ApiVersions v3+: client id then an empty tagged-field section), then a
    // v3-style body (compact client software name and version, empty tagged fields).
    let mut request = raw_header_v1(API_VERSIONS_KEY, 99, correlation_id, "sluice-it");
    request.push(0);
    request.extend_from_slice(&[10]);
    request.extend_from_slice(b"sluice-it");
    request.extend_from_slice(&[6]);
    request.extend_from_slice(b"0.1.0");
    request.push(0);
    stream.write_all(&frame(&request)).expect("write");
    let payload = read_frame(&mut stream)
        .expect("ApiVersions v99 must be answered (with an ApiVersions v0 response)");
    let (echoed, response) = decode_api_versions(&payload, 0)
        .unwrap_or_else(|e| panic!("decode as ApiVersions v0 response: {e}; {payload:02x?}"));
    assert_eq!(echoed, correlation_id, "correlation id echoed");
    assert_eq!(
        response.error_code, UNSUPPORTED_VERSION,
        "error code for ApiVersions v99"
    );
    let api_versions = response
        .api_keys
        .iter()
        .find(|api| api.api_key == API_VERSIONS_KEY)
        .expect("the api list names ApiVersions");
    assert!(
        api_versions.min_version == 0 && api_versions.max_version >= 3,
        "ApiVersions range {}..={}",
        api_versions.min_version,
        api_versions.max_version
    );
    for required in [0i16, 1, 2, 3, 18, 19, 20] {
        assert!(
            response.api_keys.iter().any(|api| api.api_key == required),
            "api key {required} missing from the ApiVersions list"
        );
    }
    drop(stream);
    assert_still_serving(&broker, "ApiVersions v99", 2);
}

#[test]
fn many_connections_dropped_at_once() {
    let broker = Broker::start();
    const CONNECTIONS: usize = 200;
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = Vec::with_capacity(CONNECTIONS);
    for index in 0..CONNECTIONS {
        let mut stream = connect_raw(broker.addr())
            .unwrap_or_else(|e| panic!("connection {index} of {CONNECTIONS}: {e}"));
        // A third send half a frame, a third a full ApiVersions request, a third nothing.
        match index % 3 {
            0 => {
                let _ = stream.write_all(&50i32.to_be_bytes());
            }
            1 => {
                let _ = stream.write_all(&common::encode_request(
                    &kafka_protocol::messages::ApiVersionsRequest::default(),
                    0,
                    index as i32,
                ));
            }
            _ => {}
        }
        streams.push(stream);
    }
    drop(streams);
    eprintln!(
        "{CONNECTIONS} connections opened and dropped in {:?}",
        started.elapsed()
    );

    // A raw request and a real client both work afterwards.
    api_versions_v3(broker.addr(), 77);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("socket.timeout.ms", "10000")
        .create()
        .expect("client");
    let metadata = consumer
        .fetch_metadata(Some("after-storm"), Duration::from_secs(10))
        .expect("metadata after 200 dropped connections");
    assert_eq!(metadata.brokers().len(), 1);
    assert_eq!(metadata.brokers()[0].port() as u16, broker.port());
}

#[test]
fn rdkafka_client_served_after_bad_connections() {
    let broker = Broker::start();
    for (index, bytes) in [
        (-1i32).to_be_bytes().to_vec(),
        frame(&raw_header_v1(999, 0, 1, "x")),
    ]
    .iter()
    .enumerate()
    {
        expect_close(&broker, &format!("warm-up {index}"), bytes, false);
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("socket.timeout.ms", "10000")
        .create()
        .expect("client");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata from a fresh rdkafka client");
    assert_eq!(metadata.brokers().len(), 1);
}
