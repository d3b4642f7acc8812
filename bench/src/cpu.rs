//! Cores: pinning threads and processes, and how busy a core was.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Cores kept from halting while this lives: a PM QoS request of zero
/// wake-up latency (`/dev/cpu_dma_latency`, as latency tuning does), so
/// that an idle core polls instead of sleeping. In a virtual machine a
/// halted core takes long to wake, and a veth's 256-frame receive ring
/// overflows meanwhile. The request ends when the file closes, on drop.
pub struct AwakeCores {
    _request: std::fs::File,
}

impl AwakeCores {
    /// Makes the request.
    pub fn new() -> Result<AwakeCores> {
        use std::io::Write;
        const PATH: &str = "/dev/cpu_dma_latency";
        let mut request = std::fs::OpenOptions::new()
            .write(true)
            .open(PATH)
            .with_context(|| format!("opening {PATH}"))?;
        request
            .write_all(&0i32.to_ne_bytes())
            .with_context(|| format!("writing {PATH}"))?;
        Ok(AwakeCores { _request: request })
    }
}

/// The cores this process may run on, in order.
pub fn online_cores() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is valid; the kernel fills it in.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pointer and size of a local set.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: reading a bit of a valid set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the task (thread or kernel thread) `pid` to `core`; 0 is the
/// calling thread.
pub fn pin_task(pid: i32, core: usize) -> Result<()> {
    testkit::pin_task(pid, core).with_context(|| format!("pinning task {pid} to core {core}"))
}

/// Pins every thread of process `pid` to `cores`.
pub fn pin_process(pid: u32, cores: &[usize]) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid, and these are its macros.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        // SAFETY: setting a bit of a valid set.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = entry?.file_name().to_string_lossy().parse()?;
        // SAFETY: pointer and size of a local set.
        if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
            bail!(
                "pinning task {tid} to cores {cores:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The kernel threads that run `dev`'s threaded NAPI (named
/// `napi/<dev>-<id>`).
pub fn napi_threads(dev: &str) -> Result<Vec<i32>> {
    let prefix = format!("napi/{dev}-");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Waits, for at most `limit`, until `core` is quiet: busy for no more
/// than a clock tick in 200 ms. The kernel's leftovers from the previous
/// configuration (releasing its XDP memory pools, which walks every pool
/// the machine has) would otherwise land in the next measurement. Returns
/// whether the core got quiet.
pub fn wait_quiet(core: usize, limit: Duration) -> Result<bool> {
    const WINDOW: Duration = Duration::from_millis(200);
    const QUIET: Duration = Duration::from_millis(10);
    let deadline = std::time::Instant::now() + limit;
    loop {
        let before = CoreTimes::read(core)?;
        std::thread::sleep(WINDOW);
        if CoreTimes::read(core)?.busy_since(&before) <= QUIET {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// A core's time counters from /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct CoreTimes {
    busy: u64,
    steal: u64,
}

impl CoreTimes {
    /// Reads `core`'s counters now.
    pub fn read(core: usize) -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let label = format!("cpu{core} ");
        let line = stat
            .lines()
            .find(|line| line.starts_with(&label))
            .with_context(|| format!("no {label}line in /proc/stat"))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal ...: work done on
        // the core is user, nice, system, irq and softirq (guest time is
        // inside user; steal is the hypervisor's, not ours).
        let busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
        let steal = fields.get(7).copied().unwrap_or(0);
        Ok(CoreTimes { busy, steal })
    }

    /// Busy time on the core between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &CoreTimes) -> Duration {
        ticks(self.busy.saturating_sub(earlier.busy))
    }

    /// Time the hypervisor ran something else instead of this virtual
    /// core, between `earlier` and `self`.
    pub fn steal_since(&self, earlier: &CoreTimes) -> Duration {
        ticks(self.steal.saturating_sub(earlier.steal))
    }
}

/// `count` clock ticks as a duration.
fn ticks(count: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(count * 1_000_000_000 / hz)
}

/// CPU time task `pid` has used, user and system: for a process, all its
/// threads'.
pub fn task_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it do not.
    let (_, fields) = stat
        .rsplit_once(") ")
        .with_context(|| format!("no command in /proc/{pid}/stat"))?;
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), utime and stime, after pid and comm.
    let time = |index: usize| -> Result<u64> {
        Ok(fields
            .get(index)
            .with_context(|| format!("a short /proc/{pid}/stat"))?
            .parse()?)
    };
    Ok(ticks(time(11)? + time(12)?))
}

/// Resident memory of process `pid`, in bytes.
pub fn resident_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS without a value")?
        .parse()?;
    Ok(kib * 1024)
}

/// This process's hard limit on open files, which the servers it starts
/// inherit and can raise their soft limit to.
pub fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}
