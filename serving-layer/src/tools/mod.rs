//! Operator tools of the serving layer (`serving-layer keys ...`).

pub mod keys;
