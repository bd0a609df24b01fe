//! CPU affinity, and where a CPU sits in the machine (its core and its
//! last-level cache), as sysfs says.

use std::io;

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Pins the calling thread to CPU `cpu`.
///
/// # Errors
///
/// `InvalidInput` if `cpu` is beyond what the OS supports; the OS's error if
/// it refuses (e.g. the CPU is not in the allowed set).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cpu {cpu} is beyond the largest supported ({})",
                CpuSet::MAX_CPU - 1
            ),
        ));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    Ok(sched_setaffinity(None, &set)?)
}

/// Lets the calling thread run on any CPU of `cpus` (e.g. to undo a pin
/// before starting processes that inherit the mask).
///
/// # Errors
///
/// `InvalidInput` for an empty set or a CPU beyond the largest supported;
/// the OS's error from `sched_setaffinity`.
pub fn allow_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() || cpus.iter().any(|&c| c >= CpuSet::MAX_CPU) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no usable CPU in {cpus:?}"),
        ));
    }
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    Ok(sched_setaffinity(None, &set)?)
}

/// How many CPUs this process may run on (its affinity mask), at least 1.
pub fn available_cpus() -> usize {
    sched_getaffinity(None).map_or(1, |set| set.count().max(1) as usize)
}

/// The ids of the CPUs this process may run on, in order (empty if the OS
/// will not say).
pub fn allowed_cpus() -> Vec<usize> {
    sched_getaffinity(None).map_or_else(
        |_| Vec::new(),
        |set| (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
    )
}

/// Where one CPU sits in the machine, as the kernel says (an empty list:
/// it does not say).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTopology {
    /// The CPUs of its core, itself among them: more than one where the
    /// core runs several hardware threads (SMT).
    pub core: Vec<usize>,
    /// The CPUs that share its last-level cache, itself among them.
    pub last_level_cache: Vec<usize>,
}

/// Where CPU `cpu` sits: its core's CPUs (`topology/core_cpus_list`, or
/// `thread_siblings_list` on kernels before 5.7) and its last-level
/// cache's (the highest `cache/index*/level`), from
/// `/sys/devices/system/cpu`. Lists the kernel does not give, or gives in
/// a form this does not read, are empty.
pub fn cpu_topology(cpu: usize) -> CpuTopology {
    let dir = std::path::PathBuf::from(format!("/sys/devices/system/cpu/cpu{cpu}"));
    let read = |rel: &str| std::fs::read_to_string(dir.join(rel)).ok();
    let core = read("topology/core_cpus_list")
        .or_else(|| read("topology/thread_siblings_list"))
        .and_then(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    // The cache of the highest level, of those whose level reads.
    let last_level_cache = std::fs::read_dir(dir.join("cache"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("index"))
        .filter_map(|e| {
            let level = std::fs::read_to_string(e.path().join("level")).ok()?;
            Some((level.trim().parse::<u32>().ok()?, e.path()))
        })
        .max_by_key(|(level, _)| *level)
        .and_then(|(_, path)| std::fs::read_to_string(path.join("shared_cpu_list")).ok())
        .and_then(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    CpuTopology {
        core,
        last_level_cache,
    }
}

/// The CPUs of a sysfs CPU list (`0-3,8,10-11`), in order; `None` if it
/// does not read as one (a range backwards, a CPU beyond what the OS
/// supports).
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?),
            None => {
                let c = part.parse::<usize>().ok()?;
                (c, c)
            }
        };
        if lo > hi || hi >= CpuSet::MAX_CPU {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_to_an_allowed_cpu_works_and_a_huge_one_is_refused() {
        assert!(available_cpus() >= 1);
        let allowed = sched_getaffinity(None).unwrap();
        let first = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)).unwrap();
        std::thread::spawn(move || pin_current_thread(first).unwrap())
            .join()
            .unwrap();
        assert!(pin_current_thread(1 << 20).is_err());
    }

    #[test]
    fn cpu_lists_read_as_the_kernel_writes_them() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("\n"), Some(vec![]));
        assert_eq!(parse_cpu_list("3,1-2,1"), Some(vec![1, 2, 3]));
        assert_eq!(parse_cpu_list("4-2"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        assert_eq!(parse_cpu_list("1,,2"), Some(vec![1, 2]));
        assert_eq!(parse_cpu_list(&format!("0-{}", CpuSet::MAX_CPU)), None);
    }

    #[test]
    fn a_cpu_is_in_its_own_core_and_last_level_cache() {
        // Where the kernel says (sysfs may be absent in a container).
        for cpu in allowed_cpus() {
            let t = cpu_topology(cpu);
            assert!(t.core.is_empty() || t.core.contains(&cpu), "{cpu}: {t:?}");
            assert!(
                t.last_level_cache.is_empty() || t.last_level_cache.contains(&cpu),
                "{cpu}: {t:?}"
            );
            assert!(
                t.core
                    .iter()
                    .all(|c| t.last_level_cache.is_empty() || t.last_level_cache.contains(c))
            );
        }
    }
}
