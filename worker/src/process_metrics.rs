//! The process's own figures under the standard `process_*` names: CPU seconds (fractional:
//! the `prometheus` crate's collector counts whole seconds, which makes the rate of a node using
//! less than a core a staircase), resident and virtual memory, open and maximum file
//! descriptors, threads and start time. Read from `/proc/self` at each scrape.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

pub struct ProcessMetrics {
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        let int = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help)).expect("valid");
        Self {
            cpu: Counter::with_opts(Opts::new(
                "process_cpu_seconds_total",
                "User and system CPU time spent by the process, in seconds",
            ))
            .expect("valid"),
            resident: int("process_resident_memory_bytes", "Resident memory of the process, in bytes"),
            virtual_memory: int("process_virtual_memory_bytes", "Virtual memory of the process, in bytes"),
            open_fds: int("process_open_fds", "File descriptors the process holds open"),
            max_fds: int("process_max_fds", "The process's limit of open file descriptors"),
            threads: int("process_threads", "Threads of the process"),
            start_time: Gauge::with_opts(Opts::new(
                "process_start_time_seconds",
                "When the process started, in seconds since the Unix epoch",
            ))
            .expect("valid"),
        }
    }
}

impl ProcessMetrics {
    fn read(&self) -> procfs::ProcResult<()> {
        let me = procfs::process::Process::myself()?;
        let stat = me.stat()?;
        let ticks = procfs::ticks_per_second() as f64;
        // The counter only goes up: add what was spent since the last read.
        let spent = (stat.utime + stat.stime) as f64 / ticks;
        self.cpu.inc_by((spent - self.cpu.get()).max(0.0));
        self.resident.set((stat.rss * procfs::page_size()) as i64);
        self.virtual_memory.set(stat.vsize as i64);
        self.threads.set(stat.num_threads);
        self.start_time.set(procfs::boot_time_secs()? as f64 + stat.starttime as f64 / ticks);
        self.open_fds.set(me.fd_count()? as i64);
        if let procfs::process::LimitValue::Value(max) = me.limits()?.max_open_files.soft_limit {
            self.max_fds.set(max as i64);
        }
        Ok(())
    }

    fn parts(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu,
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ]
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Err(e) = self.read() {
            tracing::debug!(error = %e, "cannot read /proc/self");
        }
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_move_in_fractions_and_memory_and_start_time_are_real() {
        let process = ProcessMetrics::default();
        process.read().unwrap();
        let before = process.cpu.get();
        // Busy until the CPU time moves (a tick is 10 ms): it moves by less than a second.
        let busy = std::time::Instant::now();
        let mut x = 0u64;
        while process.cpu.get() == before && busy.elapsed() < std::time::Duration::from_secs(5) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            process.read().unwrap();
        }
        let moved = process.cpu.get() - before;
        assert!(moved > 0.0 && moved < 0.5, "CPU seconds in fractions: moved {moved}");
        assert!(process.resident.get() > 1 << 20, "{}", process.resident.get());
        assert!(process.open_fds.get() > 0 && process.max_fds.get() >= process.open_fds.get());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = process.start_time.get();
        assert!(start <= now + 1.0 && start > now - 86_400.0, "started {start}, now {now}");
    }
}
