//! CPU work and the container's CPU accounting, for capacity labs.
//!
//! - `GET /cpu/MS` (in [`super::http`]): spends MS milliseconds of CPU time
//!   on the thread that serves it, then answers like any request. The cost is
//!   CPU time, not wall time: a request on an instance throttled by its CPU
//!   quota takes longer, which is the point.
//! - `GET /cpu-stat`: this container's CPU accounting as its cgroup keeps it
//!   (time used, quota, periods throttled), read from `/sys/fs/cgroup` in
//!   cgroup v2 or v1 layout. Labs observe the quota working from here.
//!
//! The work runs on the async worker itself, as in a thread-per-core server:
//! Tokio sizes its workers from `available_parallelism`, which follows the
//! container's CPU quota, so an instance limited to one CPU or less serves
//! one CPU-bound request at a time and the others queue.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

/// Most CPU time one request may ask for, so a typo cannot hang a lab.
pub const MAX_CPU_MS: u64 = 10_000;

/// The routes of this module (`/cpu/MS` is served by the http role itself).
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/cpu-stat", get(cpu_stat))
}

/// Spends `cpu` of CPU time on the calling thread. Time the thread waits
/// (descheduled, or throttled by the quota) does not count.
pub fn burn(cpu: Duration) {
    let start = thread_cpu_time();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while thread_cpu_time().saturating_sub(start) < cpu {
        for _ in 0..2_000 {
            x = std::hint::black_box(x.rotate_left(5) ^ x.wrapping_mul(0x100_0000_01b3));
        }
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The container's CPU accounting, as `/cpu-stat` answers it.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct CpuStat {
    /// CPU time used by every process of the container, in milliseconds.
    pub usage_ms: f64,
    /// Quota periods that had runnable work.
    pub periods: u64,
    /// Of those, periods in which the quota ran out and the container waited.
    pub throttled_periods: u64,
    /// Time spent waiting for the next period, in milliseconds.
    pub throttled_ms: f64,
    /// The quota in CPUs (`0.25` = 25 ms per 100 ms period); absent without one.
    pub quota_cpus: Option<f64>,
}

async fn cpu_stat() -> Response {
    match read_cpu_stat() {
        Some(stat) => axum::Json(stat).into_response(),
        None => (
            StatusCode::NOT_IMPLEMENTED,
            "no cgroup CPU accounting under /sys/fs/cgroup\n",
        )
            .into_response(),
    }
}

/// Reads cgroup v2 (`cpu.stat`, `cpu.max`), else v1 (`cpu/cpu.stat`,
/// `cpuacct/cpuacct.usage`, `cpu/cpu.cfs_*`).
fn read_cpu_stat() -> Option<CpuStat> {
    let read = |p: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{p}")).ok();
    if let Some(stat) = read("cpu.stat").filter(|s| s.contains("usage_usec")) {
        return Some(parse_v2(&stat, read("cpu.max").as_deref()));
    }
    let stat = read("cpu/cpu.stat").or_else(|| read("cpu,cpuacct/cpu.stat"))?;
    let usage = read("cpuacct/cpuacct.usage").or_else(|| read("cpu,cpuacct/cpuacct.usage"))?;
    let quota = read("cpu/cpu.cfs_quota_us").or_else(|| read("cpu,cpuacct/cpu.cfs_quota_us"));
    let period = read("cpu/cpu.cfs_period_us").or_else(|| read("cpu,cpuacct/cpu.cfs_period_us"));
    Some(parse_v1(&stat, &usage, quota.as_deref(), period.as_deref()))
}

/// A `key value` line's value.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn parse_v2(stat: &str, max: Option<&str>) -> CpuStat {
    let quota_cpus = max.and_then(|m| {
        let (quota, period) = m.trim().split_once(' ')?;
        Some(quota.parse::<f64>().ok()? / period.parse::<f64>().ok()?)
    });
    CpuStat {
        usage_ms: field(stat, "usage_usec").unwrap_or(0) as f64 / 1e3,
        periods: field(stat, "nr_periods").unwrap_or(0),
        throttled_periods: field(stat, "nr_throttled").unwrap_or(0),
        throttled_ms: field(stat, "throttled_usec").unwrap_or(0) as f64 / 1e3,
        quota_cpus,
    }
}

fn parse_v1(stat: &str, usage_ns: &str, quota: Option<&str>, period: Option<&str>) -> CpuStat {
    let quota_cpus = quota.zip(period).and_then(|(q, p)| {
        let q = q.trim().parse::<f64>().ok().filter(|q| *q > 0.0)?;
        Some(q / p.trim().parse::<f64>().ok()?)
    });
    CpuStat {
        usage_ms: usage_ns.trim().parse::<f64>().unwrap_or(0.0) / 1e6,
        periods: field(stat, "nr_periods").unwrap_or(0),
        throttled_periods: field(stat, "nr_throttled").unwrap_or(0),
        throttled_ms: field(stat, "throttled_time").unwrap_or(0) as f64 / 1e6,
        quota_cpus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn burn_spends_cpu_time_not_wall_time() {
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        burn(Duration::from_millis(30));
        assert!(thread_cpu_time() - cpu >= Duration::from_millis(30));
        assert!(wall.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn reads_cgroup_v2() {
        let stat = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 12\nthrottled_usec 900000\n";
        let s = parse_v2(stat, Some("25000 100000\n"));
        assert_eq!(s.usage_ms, 2500.0);
        assert_eq!((s.periods, s.throttled_periods), (40, 12));
        assert_eq!(s.throttled_ms, 900.0);
        assert_eq!(s.quota_cpus, Some(0.25));
        assert_eq!(parse_v2(stat, Some("max 100000")).quota_cpus, None);
    }

    #[test]
    fn reads_cgroup_v1() {
        let stat = "nr_periods 40\nnr_throttled 12\nthrottled_time 900000000\n";
        let s = parse_v1(stat, "2500000000\n", Some("50000\n"), Some("100000\n"));
        assert_eq!(s.usage_ms, 2500.0);
        assert_eq!(s.throttled_ms, 900.0);
        assert_eq!(s.quota_cpus, Some(0.5));
        assert_eq!(
            parse_v1(stat, "0", Some("-1"), Some("100000")).quota_cpus,
            None
        );
    }
}
