//! The object store holding the archive, from `batch.archive_url`: a local path (the
//! default, `<state_dir>/archive`) or an `object_store` URL (`file:///`, `s3://`,
//! `gs://`, `az://`, with credentials in `batch.archive_options`).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

/// An opened archive: the store and the root path inside it.
#[derive(Clone, Debug)]
pub struct Archive {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Root prefix inside the store.
    pub root: Path,
}

/// Errors opening the archive.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL does not parse.
    #[error("batch.archive_url `{url}`: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The store refused.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Opens the archive of `cfg` (creating a local directory if needed).
///
/// # Errors
///
/// [`StoreError`] when the URL is malformed or the store cannot be opened.
pub fn open(cfg: &common::config::BatchConfig) -> Result<Archive, StoreError> {
    let raw = cfg.archive_url.as_str();
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
        let p = std::path::Path::new(raw);
        std::fs::create_dir_all(p).map_err(|e| StoreError::BadUrl {
            url: raw.into(),
            reason: e.to_string(),
        })?;
        let abs = p.canonicalize().map_err(|e| StoreError::BadUrl {
            url: raw.into(),
            reason: e.to_string(),
        })?;
        format!("file://{}", abs.display())
    };
    let parsed = url::Url::parse(&url).map_err(|e| StoreError::BadUrl {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    if parsed.scheme() == "file" {
        let dir = parsed.to_file_path().map_err(|()| StoreError::BadUrl {
            url: url.clone(),
            reason: "not a path".into(),
        })?;
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
        return Ok(Archive {
            store: Arc::new(store),
            root: Path::from(""),
        });
    }
    let opts = cfg
        .archive_options
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()));
    let (store, root) = object_store::parse_url_opts(&parsed, opts)?;
    Ok(Archive {
        store: Arc::from(store),
        root,
    })
}
