//! CPU affinity.

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
}
