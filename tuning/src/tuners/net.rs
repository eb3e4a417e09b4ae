//! Socket buffer and backlog sysctls.
//!
//! | sysctl | wanted | why |
//! |---|---|---|
//! | `net.core.rmem_max`, `net.core.wmem_max` | >= 16 MiB | caps `SO_RCVBUF`/`SO_SNDBUF`; large produce and fetch responses on fast links need big windows |
//! | `net.ipv4.tcp_rmem`, `net.ipv4.tcp_wmem` (max field) | >= 16 MiB | caps TCP autotuning of every connection's buffers |
//! | `net.core.somaxconn` | >= 4096 | caps the listen backlog; a reconnect storm after a restart overflows a short one (SYN drops, 1 s+ retries) |
//! | `net.ipv4.tcp_max_syn_backlog` | >= 4096 | half-open connections kept during that storm |
//! | `net.core.netdev_max_backlog` | >= 5000 | packets queued per core between the NIC and the stack at 10 GbE+ |
//!
//! Only lower bounds: a host already tuned higher is left alone.

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs;
use crate::tuners::{Bound, numeric_sysctl};
use crate::{Evaluation, Tuner};

/// Wanted lower bound of the socket buffer maxima, bytes.
pub const SOCKET_BUFFER_BYTES_MIN: u64 = 16 << 20;
/// Wanted lower bound of `net.core.somaxconn` and `net.ipv4.tcp_max_syn_backlog`.
pub const BACKLOG_MIN: u64 = 4096;
/// Wanted lower bound of `net.core.netdev_max_backlog`.
pub const NETDEV_BACKLOG_MIN: u64 = 5000;

/// Network buffers and backlogs sized for a broker.
pub struct Net;

impl Net {
    /// `tcp_rmem`/`tcp_wmem` hold "min default max"; only max is raised, the rest kept.
    fn tcp_mem(&self, host: &Host, key: &str) -> (Finding, Vec<Change>) {
        let wanted = format!("max >= {SOCKET_BUFFER_BYTES_MIN}");
        let text = match sysfs::read_value(&host.sysctl_path(key)) {
            Ok(t) => t,
            Err(e) => return (sysfs::unreadable(self.name(), key, wanted, &e), Vec::new()),
        };
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let current = fields
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let [min, default, max] = fields[..] else {
            let f = Finding::unavailable(self.name(), key, wanted, format!("unexpected {text:?}"));
            return (f, Vec::new());
        };
        if max >= SOCKET_BUFFER_BYTES_MIN {
            return (Finding::ok(self.name(), key, current, wanted), Vec::new());
        }
        (
            Finding::failed(
                self.name(),
                key,
                current,
                wanted,
                Severity::Warn,
                "TCP autotuning cannot grow buffers past max",
            ),
            vec![Change::Sysctl {
                key: key.to_string(),
                value: format!("{min} {default} {SOCKET_BUFFER_BYTES_MIN}"),
            }],
        )
    }
}

impl Tuner for Net {
    fn name(&self) -> &'static str {
        "net"
    }
    fn description(&self) -> &'static str {
        "socket buffer maxima >= 16 MiB, listen/SYN backlogs >= 4096, netdev backlog >= 5000"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        let name = self.name();
        let buffers = "small socket buffers cap throughput per connection";
        let backlog = "connection storms overflow a short backlog";
        let mut out = vec![
            numeric_sysctl(
                host,
                name,
                "net.core.rmem_max",
                Bound::AtLeast(SOCKET_BUFFER_BYTES_MIN),
                Severity::Warn,
                buffers,
            ),
            numeric_sysctl(
                host,
                name,
                "net.core.wmem_max",
                Bound::AtLeast(SOCKET_BUFFER_BYTES_MIN),
                Severity::Warn,
                buffers,
            ),
        ];
        out.push(self.tcp_mem(host, "net.ipv4.tcp_rmem"));
        out.push(self.tcp_mem(host, "net.ipv4.tcp_wmem"));
        for (key, min) in [
            ("net.core.somaxconn", BACKLOG_MIN),
            ("net.ipv4.tcp_max_syn_backlog", BACKLOG_MIN),
            ("net.core.netdev_max_backlog", NETDEV_BACKLOG_MIN),
        ] {
            out.push(numeric_sysctl(
                host,
                name,
                key,
                Bound::AtLeast(min),
                Severity::Warn,
                backlog,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuners::fake::FakeHost;

    #[test]
    fn check_apply_dry_run() {
        let fake = FakeHost::new();
        fake.write("proc/sys/net/core/rmem_max", "212992\n");
        fake.write("proc/sys/net/core/wmem_max", "33554432\n");
        fake.write("proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n");
        fake.write("proc/sys/net/ipv4/tcp_wmem", "4096\t16384\t16777216\n");
        fake.write("proc/sys/net/core/somaxconn", "4096\n");
        fake.write("proc/sys/net/ipv4/tcp_max_syn_backlog", "512\n");
        // netdev_max_backlog missing: Info.
        let found = Net.check(&fake.host);
        assert_eq!(found.len(), 7);
        let by_key = |k: &str| found.iter().find(|f| f.setting == k).expect(k).clone();
        assert_eq!(by_key("net.core.rmem_max").severity, Severity::Warn);
        assert!(by_key("net.core.wmem_max").ok);
        assert_eq!(by_key("net.ipv4.tcp_rmem").current, "4096 131072 6291456");
        assert!(by_key("net.ipv4.tcp_wmem").ok);
        assert!(by_key("net.core.somaxconn").ok);
        assert!(!by_key("net.ipv4.tcp_max_syn_backlog").ok);
        assert_eq!(
            by_key("net.core.netdev_max_backlog").severity,
            Severity::Info
        );

        let out = fake.apply(&Net, true);
        assert!(
            out.contains("sysctl -w net.core.rmem_max=16777216"),
            "{out}"
        );
        assert!(
            out.contains("sysctl -w net.ipv4.tcp_rmem=\"4096 131072 16777216\""),
            "{out}"
        );
        assert!(
            out.contains("sysctl -w net.ipv4.tcp_max_syn_backlog=4096"),
            "{out}"
        );
        assert!(out.contains("cat > "), "{out}");
        assert!(!fake.path("etc/sysctl.d/90-sluice.conf").exists());
        assert_eq!(fake.read("proc/sys/net/core/rmem_max"), "212992\n");

        fake.apply(&Net, false);
        assert_eq!(
            fake.read("proc/sys/net/ipv4/tcp_rmem"),
            "4096 131072 16777216"
        );
        let persisted = fake.read("etc/sysctl.d/90-sluice.conf");
        assert!(
            persisted.contains("net.core.rmem_max = 16777216"),
            "{persisted}"
        );
        assert!(Net.plan(&fake.host).is_empty());
    }
}
