//! Pinning threads to CPUs (`worker_cpus`): the one place that calls sched_*affinity.

use std::io;

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits; zeroed is the empty set. sched_getaffinity writes at
    // most size_of::<cpu_set_t>() bytes into the set we own, for the calling thread (0).
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads one bit of a set we own; i stays below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// Restricts the calling thread to `cpus` (any of them; one CPU pins it).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() || cpus.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU list {cpus:?} is empty or out of range"),
        ));
    }
    // SAFETY: as above; CPU_SET writes bits below CPU_SETSIZE (checked) of a set we own,
    // and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A CPU list as taskset(1) and /sys write it: `0-3,8,10-11`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("{text:?}: expected CPU numbers and ranges like 0-3,8"))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a > b || b >= libc::CPU_SETSIZE as usize {
            return Err(format!("{text:?}: bad range {part}"));
        }
        for c in a..=b {
            if !cpus.contains(&c) {
                cpus.push(c);
            }
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse_cpu_list("0-3,8"), Ok(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list(" 5 "), Ok(vec![5]));
        assert_eq!(parse_cpu_list("1,1-2"), Ok(vec![1, 2]));
        for bad in ["", "a", "3-1", "0-99999", "1,,2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_thread_pinned_to_one_allowed_cpu_runs_only_there() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let last = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(&[last]).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![last]);
            // SAFETY: sched_getcpu takes no arguments.
            let now = unsafe { libc::sched_getcpu() };
            assert_eq!(now as usize, last);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_empty_or_impossible_list_is_refused() {
        assert!(pin_current_thread(&[]).is_err());
        assert!(pin_current_thread(&[libc::CPU_SETSIZE as usize]).is_err());
    }
}
