//! The Parquet archive: schema, layout, and the object store behind it.

pub mod layout;
pub mod schema;
pub mod store;
