//! Connections the message hook cannot see. The kernel puts every connection to a metadata
//! endpoint into a sockhash (capacity [`SOCKETS_CAPACITY`]) to inspect what is written on it; when
//! it is full, a new connection stays out, and its requests are neither classified, reported nor
//! refused (`imdsv1 = "deny"`). The kernel cannot refuse such a connection any more when it finds
//! out, so it counts it; the daemon looks at the count on every re-check and says so.

use imds_guard_common::{maps::SOCKETS_CAPACITY, stats::Stat};

use crate::{
    kernel::guard::Guard,
    report::{Event, Reporter, event::ConnectionsUninspected},
};

#[derive(Default)]
pub struct UninspectedWatch {
    seen: Option<u64>,
}

impl UninspectedWatch {
    pub fn check(&mut self, guard: &Guard, reporter: &dyn Reporter) {
        let total = match guard.stat(Stat::ConnectionsUninspected) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("cannot read the counters: {e:#}");
                return;
            }
        };
        // The first look only takes note: the counter outlives daemons (it is pinned).
        let Some(seen) = self.seen.replace(total) else { return };
        if total > seen {
            tracing::error!(
                new = total - seen,
                total,
                "connections to the metadata service were not inspected: the kernel's table of them \
                 ({SOCKETS_CAPACITY}) is full, so requests on them are neither reported nor refused \
                 (imdsv1 = \"deny\" does not apply to them)"
            );
            reporter.report(Event::ConnectionsUninspected(ConnectionsUninspected {
                count: total - seen,
                total,
                capacity: SOCKETS_CAPACITY,
            }));
        }
    }
}
