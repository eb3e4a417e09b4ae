//! `fs.aio-max-nr`: wanted >= 1048576.
//!
//! Seastar (Redpanda) and other Linux-AIO users need many AIO contexts; `rpk` raises this limit.
//! Sluice's I/O goes through io_uring, which does not count against `fs.aio-max-nr`, so a low
//! value is reported as `Info`, not `Warn`: apply still raises it for parity with `rpk` and for
//! AIO users sharing the host (databases, `fio --ioengine=libaio` benchmarks).

use crate::finding::Severity;
use crate::host::Host;
use crate::tuners::{Bound, numeric_sysctl};
use crate::{Evaluation, Tuner};

/// Wanted lower bound of `fs.aio-max-nr`.
pub const AIO_MAX_NR_MIN: u64 = 1_048_576;

/// Leaves room for Linux AIO contexts.
pub struct AioMaxNr;

impl Tuner for AioMaxNr {
    fn name(&self) -> &'static str {
        "aio_max_nr"
    }
    fn description(&self) -> &'static str {
        "fs.aio-max-nr >= 1048576: room for Linux AIO contexts (io_uring is not charged)"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        vec![numeric_sysctl(
            host,
            self.name(),
            "fs.aio-max-nr",
            Bound::AtLeast(AIO_MAX_NR_MIN),
            Severity::Info,
            "io_uring does not use AIO contexts; raised for parity with rpk and AIO tools",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuners::fake::FakeHost;

    #[test]
    fn check_apply_dry_run() {
        let fake = FakeHost::new();
        fake.write("proc/sys/fs/aio-max-nr", "65536\n");
        let f = &AioMaxNr.check(&fake.host)[0];
        assert_eq!(
            (f.current.as_str(), f.wanted.as_str(), f.severity, f.ok),
            ("65536", ">= 1048576", Severity::Info, false)
        );
        let out = fake.apply(&AioMaxNr, true);
        assert!(out.contains("sysctl -w fs.aio-max-nr=1048576"), "{out}");
        assert_eq!(fake.read("proc/sys/fs/aio-max-nr"), "65536\n");
        fake.apply(&AioMaxNr, false);
        assert_eq!(fake.read("proc/sys/fs/aio-max-nr"), "1048576");
        assert!(AioMaxNr.check(&fake.host)[0].ok);
    }

    #[test]
    fn missing_is_info() {
        let fake = FakeHost::new();
        let f = &AioMaxNr.check(&fake.host)[0];
        assert_eq!((f.severity, f.ok), (Severity::Info, true));
    }
}
