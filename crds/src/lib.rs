//! `tessera-crds`
