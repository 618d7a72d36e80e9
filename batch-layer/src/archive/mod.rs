//! The Parquet archive: schema, layout, and the object store behind it.

pub mod layout;
pub mod progress;
pub mod schema;
pub mod store;
