//! Opaque per-tenant handle tables. A tenant sees only values minted for it; they are not driver
//! pointers, are never reused, and a value from another tenant (or of another kind) is simply
//! not found → `CUDA_ERROR_INVALID_HANDLE`.

use std::collections::HashMap;

/// What a handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandleKind {
    Context,
    Module,
    Function,
    Stream,
    Event,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: HandleKind,
    raw: u64,
    /// For functions: the module handle they came from (unloading a module drops them).
    parent: u64,
}

/// One tenant's table.
pub struct HandleTable {
    salt: u64,
    counter: u64,
    entries: HashMap<u64, Entry>,
}

/// splitmix64 finaliser: spreads sequential counters over the whole u64 space.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl HandleTable {
    /// `salt` differs per tenant so that two tenants' handle values do not coincide.
    pub fn new(salt: u64) -> Self {
        Self {
            salt: mix(salt ^ 0x5445_5353_4552_4121),
            counter: 0,
            entries: HashMap::new(),
        }
    }

    /// Mints a handle for `raw`.
    pub fn insert(&mut self, kind: HandleKind, raw: u64, parent: u64) -> u64 {
        loop {
            self.counter += 1;
            // Keep handles 8-byte aligned and non-zero: they travel as pointers in the guest.
            let h = mix(self.counter ^ self.salt) & !7;
            if h != 0 && !self.entries.contains_key(&h) {
                self.entries.insert(h, Entry { kind, raw, parent });
                return h;
            }
        }
    }

    /// The raw driver value of `handle` if it exists and has `kind`.
    pub fn get(&self, kind: HandleKind, handle: u64) -> Option<u64> {
        self.entries
            .get(&handle)
            .filter(|e| e.kind == kind)
            .map(|e| e.raw)
    }

    pub fn remove(&mut self, kind: HandleKind, handle: u64) -> Option<u64> {
        match self.entries.get(&handle) {
            Some(e) if e.kind == kind => self.entries.remove(&handle).map(|e| e.raw),
            _ => None,
        }
    }

    /// Removes every entry whose parent is `parent` (functions of an unloaded module).
    pub fn remove_children(&mut self, parent: u64) {
        self.entries.retain(|_, e| e.parent != parent);
    }

    /// Drains all raw values of one kind (tenant teardown).
    pub fn drain(&mut self, kind: HandleKind) -> Vec<u64> {
        let keys: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.entries.remove(&k).map(|e| e.raw))
            .collect()
    }

    pub fn count(&self, kind: HandleKind) -> usize {
        self.entries.values().filter(|e| e.kind == kind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_opaque_typed_and_tenant_local() {
        let mut a = HandleTable::new(1);
        let mut b = HandleTable::new(2);
        let ha = a.insert(HandleKind::Stream, 0xdead_0000, 0);
        let hb = b.insert(HandleKind::Stream, 0xbeef_0000, 0);
        assert_ne!(ha, 0xdead_0000, "a handle must not be the driver value");
        assert_ne!(ha, hb);
        assert_eq!(ha % 8, 0);
        assert_eq!(a.get(HandleKind::Stream, ha), Some(0xdead_0000));
        // Another tenant's handle is not found, nor a handle used as another kind.
        assert_eq!(a.get(HandleKind::Stream, hb), None);
        assert_eq!(a.get(HandleKind::Event, ha), None);
        assert_eq!(a.remove(HandleKind::Event, ha), None);
        assert_eq!(a.remove(HandleKind::Stream, ha), Some(0xdead_0000));
        assert_eq!(a.get(HandleKind::Stream, ha), None);
    }

    #[test]
    fn handles_are_never_reused_and_children_go_with_parent() {
        let mut t = HandleTable::new(7);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let h = t.insert(HandleKind::Event, i, 0);
            assert!(seen.insert(h), "handle {h:#x} minted twice");
            t.remove(HandleKind::Event, h);
        }
        let m = t.insert(HandleKind::Module, 1, 0);
        let f1 = t.insert(HandleKind::Function, 2, m);
        let f2 = t.insert(HandleKind::Function, 3, m);
        t.remove_children(m);
        assert_eq!(t.get(HandleKind::Function, f1), None);
        assert_eq!(t.get(HandleKind::Function, f2), None);
        assert_eq!(t.get(HandleKind::Module, m), Some(1));
        let _ = t.insert(HandleKind::Stream, 9, 0);
        assert_eq!(t.drain(HandleKind::Stream), vec![9]);
        assert_eq!(t.count(HandleKind::Stream), 0);
    }
}
