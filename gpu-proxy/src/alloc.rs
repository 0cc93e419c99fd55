//! Device-memory ranges: each tenant's own map (for memcpy/memset checks and quota) and the
//! proxy-wide map (to spot a kernel argument that points into another tenant's memory).

use std::collections::BTreeMap;

/// Why a range is known to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    /// `cuMemAlloc`: counts against the quota, freed with `cuMemFree`.
    Allocation,
    /// A module global (`cuModuleGetGlobal`): the module owns it.
    ModuleGlobal { module: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Range {
    size: u64,
    kind: RangeKind,
}

/// One tenant's device ranges.
#[derive(Default)]
pub struct AllocMap {
    ranges: BTreeMap<u64, Range>,
    allocated: u64,
}

impl AllocMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of `Allocation` ranges (what the quota counts).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    pub fn insert(&mut self, ptr: u64, size: u64, kind: RangeKind) {
        if let Some(old) = self.ranges.insert(ptr, Range { size, kind })
            && old.kind == RangeKind::Allocation
        {
            self.allocated -= old.size;
        }
        if kind == RangeKind::Allocation {
            self.allocated += size;
        }
    }

    /// Removes an allocation that starts exactly at `ptr`; returns its size.
    pub fn remove_allocation(&mut self, ptr: u64) -> Option<u64> {
        match self.ranges.get(&ptr) {
            Some(r) if r.kind == RangeKind::Allocation => {
                let size = r.size;
                self.ranges.remove(&ptr);
                self.allocated -= size;
                Some(size)
            }
            _ => None,
        }
    }

    /// Drops the globals of an unloaded module.
    pub fn remove_module(&mut self, module: u64) {
        self.ranges
            .retain(|_, r| r.kind != RangeKind::ModuleGlobal { module });
    }

    /// True when `[ptr, ptr+len)` lies inside one known range (offsets into an allocation are
    /// fine; spanning two adjacent allocations is not, as the driver would not allow it either).
    pub fn contains(&self, ptr: u64, len: u64) -> bool {
        let Some(end) = ptr.checked_add(len) else {
            return false;
        };
        match self.ranges.range(..=ptr).next_back() {
            Some((start, r)) => {
                end <= start.saturating_add(r.size) && (len > 0 || ptr < start + r.size)
            }
            None => false,
        }
    }

    /// All allocation start addresses (teardown).
    pub fn allocations(&self) -> Vec<u64> {
        self.ranges
            .iter()
            .filter(|(_, r)| r.kind == RangeKind::Allocation)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// Proxy-wide owner map: allocation start → (end, tenant id).
#[derive(Default)]
pub struct GlobalRanges {
    ranges: BTreeMap<u64, (u64, u64)>,
}

impl GlobalRanges {
    pub fn insert(&mut self, ptr: u64, size: u64, tenant: u64) {
        self.ranges.insert(ptr, (ptr.saturating_add(size), tenant));
    }
    pub fn remove(&mut self, ptr: u64) {
        self.ranges.remove(&ptr);
    }
    /// The tenant owning the byte at `addr`, if any.
    pub fn owner(&self, addr: u64) -> Option<u64> {
        self.ranges
            .range(..=addr)
            .next_back()
            .filter(|(_, (end, _))| addr < *end)
            .map(|(_, (_, t))| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_cover_offsets_and_reject_overruns() {
        let mut m = AllocMap::new();
        m.insert(0x1000, 0x100, RangeKind::Allocation);
        m.insert(0x1100, 0x100, RangeKind::Allocation);
        assert!(m.contains(0x1000, 0x100));
        assert!(m.contains(0x1080, 0x80), "offset into an allocation");
        assert!(m.contains(0x10ff, 1));
        assert!(
            !m.contains(0x1080, 0x81),
            "overrun into the next allocation"
        );
        assert!(!m.contains(0x0fff, 2), "starts before");
        assert!(!m.contains(0x1200, 1), "past the end");
        assert!(!m.contains(u64::MAX - 1, 8), "wrap-around");
        assert!(m.contains(0x1000, 0), "empty copy at a valid address");
        assert!(!m.contains(0x1200, 0), "empty copy at an invalid address");
        assert_eq!(m.allocated(), 0x200);
        assert_eq!(
            m.remove_allocation(0x1080),
            None,
            "free must name the start"
        );
        assert_eq!(m.remove_allocation(0x1000), Some(0x100));
        assert!(!m.contains(0x1000, 1));
        assert_eq!(m.allocated(), 0x100);
    }

    #[test]
    fn module_globals_are_reachable_but_not_counted() {
        let mut m = AllocMap::new();
        m.insert(0x9000, 64, RangeKind::ModuleGlobal { module: 5 });
        assert!(m.contains(0x9010, 16));
        assert_eq!(m.allocated(), 0);
        assert_eq!(
            m.remove_allocation(0x9000),
            None,
            "a global cannot be freed"
        );
        m.remove_module(5);
        assert!(!m.contains(0x9010, 16));
    }

    #[test]
    fn global_owner_lookup() {
        let mut g = GlobalRanges::default();
        g.insert(0x1000, 0x100, 1);
        g.insert(0x2000, 0x100, 2);
        assert_eq!(g.owner(0x1050), Some(1));
        assert_eq!(g.owner(0x20ff), Some(2));
        assert_eq!(g.owner(0x2100), None);
        assert_eq!(g.owner(0x0fff), None);
        g.remove(0x1000);
        assert_eq!(g.owner(0x1050), None);
    }
}
