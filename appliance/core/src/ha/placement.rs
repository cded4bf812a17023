//! Where a failed-over VM goes: the host with the most free memory that has
//! room for it and runs no VM of its anti-affinity group. Pure.

/// A host that could take VMs, as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub host_id: String,
    pub free_bytes: u64,
    /// Anti-affinity groups of the VMs it runs (or was just given).
    pub groups: Vec<String>,
}

/// Index of the chosen candidate, or `None` when no host can take the VM.
pub fn choose(memory_bytes: u64, group: &str, candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.free_bytes >= memory_bytes)
        .filter(|(_, c)| group.is_empty() || !c.groups.iter().any(|g| g == group))
        .max_by_key(|(_, c)| c.free_bytes)
        .map(|(i, _)| i)
}

/// Books the VM on the chosen host, so the next choice sees less room.
pub fn reserve(candidate: &mut Candidate, memory_bytes: u64, group: &str) {
    candidate.free_bytes = candidate.free_bytes.saturating_sub(memory_bytes);
    if !group.is_empty() {
        candidate.groups.push(group.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(id: &str, free_gib: u64, groups: &[&str]) -> Candidate {
        Candidate {
            host_id: id.into(),
            free_bytes: free_gib * GIB,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn most_free_memory_wins_within_the_rules() {
        let mut hosts = vec![host("a", 8, &[]), host("b", 16, &["db"]), host("c", 4, &[])];
        assert_eq!(choose(2 * GIB, "", &hosts), Some(1));
        assert_eq!(choose(2 * GIB, "db", &hosts), Some(0), "anti-affinity");
        assert_eq!(
            choose(10 * GIB, "db", &hosts),
            None,
            "no room outside the group"
        );
        reserve(&mut hosts[0], 7 * GIB, "web");
        assert_eq!(choose(2 * GIB, "db", &hosts), Some(2));
        assert_eq!(choose(GIB, "web", &hosts), Some(1));
    }
}
