//! A partition whose only segment holds the input, recovered on the simulated disk; see
//! `sluice::fuzzing::segment_recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::segment_recovery(data);
});
