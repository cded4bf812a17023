//! Facts about this machine read from `/proc`.

/// The kernel's host name; empty if unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    /// `MemAvailable` (`MemFree` on old kernels): what can be given out
    /// without swapping.
    pub available: u64,
}

/// This machine's memory; `None` if `/proc/meminfo` is unreadable.
pub fn memory() -> Option<Memory> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Reads `MemTotal` and `MemAvailable` (kB) from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Memory {
        total: field("MemTotal")?,
        // Kernels before 3.14 have no MemAvailable.
        available: field("MemAvailable").or_else(|| field("MemFree"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       16316412 kB\nMemFree:  1 kB\nMemAvailable:   8158206 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(Memory {
                total: 16316412 * 1024,
                available: 8158206 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(
            parse_meminfo("MemTotal: 2 kB\nMemFree: 1 kB\n").map(|m| m.available),
            Some(1024)
        );
        assert!(memory().is_some_and(|m| m.total >= m.available));
    }
}
