//! A request frame through decode and dispatch, against a broker shard running in this
//! process; see `sluice::fuzzing::request_dispatch`.
#![no_main]

#[global_allocator]
static GLOBAL: sluice::alloc::GuardedAlloc = sluice::alloc::GuardedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::request_dispatch(data);
});
