//! A request frame (the bytes after the length prefix) through the connection's decode path;
//! see `sluice::fuzzing::request_frame`.
#![no_main]

#[global_allocator]
static GLOBAL: sluice::alloc::GuardedAlloc = sluice::alloc::GuardedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::request_frame(data);
});
