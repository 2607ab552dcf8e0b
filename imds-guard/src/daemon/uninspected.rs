//! Connections the message hook cannot see. The kernel puts every connection to a metadata
//! endpoint into a sockhash (capacity [`SOCKETS_CAPACITY`]) to inspect what is written on it; when
//! it is full, a new connection stays out, and its requests are neither classified, reported nor
//! refused. (Connects that need inspection, `imdsv1 = "deny"`, are refused by the connect hook
//! once the table is about to be full; MPTCP subflows never go in.) The kernel cannot refuse
//! such a connection any more when it finds out, so it counts it; the daemon looks at the count on
//! every re-check and says so.

use imds_guard_common::{maps::SOCKETS_CAPACITY, stats::Stat};

use crate::{
    kernel::guard::Guard,
    report::{Event, Reporter, event::ConnectionsUninspected},
};

#[derive(Default)]
pub struct UninspectedWatch {
    full: Option<u64>,
    unsupported: Option<u64>,
}

impl UninspectedWatch {
    pub fn check(&mut self, guard: &Guard, reporter: &dyn Reporter) {
        for (stat, seen) in [
            (Stat::ConnectionsUninspected, &mut self.full),
            (Stat::ConnectionsUnsupported, &mut self.unsupported),
        ] {
            let total = match guard.stat(stat) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("cannot read the counters: {e:#}");
                    return;
                }
            };
            // The first look only takes note: the counters outlive daemons (they are pinned).
            let Some(before) = seen.replace(total) else { continue };
            if total <= before {
                continue;
            }
            let cause = if stat == Stat::ConnectionsUninspected {
                tracing::error!(
                    new = total - before,
                    total,
                    "connections to the metadata service were not inspected: the kernel's table of \
                     them ({SOCKETS_CAPACITY}) is full, so requests on them are neither reported nor \
                     refused; until connections close, workloads with imdsv1 = \"deny\" are refused \
                     new connections"
                );
                "table_full"
            } else {
                tracing::warn!(
                    new = total - before,
                    total,
                    "connections to the metadata service were not inspected: they are of a kind the \
                     kernel's table cannot hold (MPTCP), so requests on them are neither reported nor \
                     refused (workloads with imdsv1 = \"deny\" are refused such connections)"
                );
                "unsupported_socket"
            };
            reporter.report(Event::ConnectionsUninspected(ConnectionsUninspected {
                count: total - before,
                total,
                capacity: SOCKETS_CAPACITY,
                cause: cause.to_owned(),
            }));
        }
    }
}
