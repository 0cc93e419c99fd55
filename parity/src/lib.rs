//! `tessera-parity`
