//! `tessera-e2e`
