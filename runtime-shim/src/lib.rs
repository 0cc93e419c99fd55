//! `tessera-shim`: not built yet. This crate is intentionally empty; see README.md and ../docs/DESIGN.md.
