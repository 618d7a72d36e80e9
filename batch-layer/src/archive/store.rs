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
    /// What the store's paths are relative to, for messages: the directory of a local
    /// archive, `scheme://bucket` of a remote one.
    pub location: String,
    /// How the files written to it are compressed (`batch.archive_compression`; files
    /// of every codec are read).
    pub compression: common::config::ArchiveCompression,
    /// The directory of a local archive (`None` for a remote store), for readers on
    /// threads of their own: `std::fs` there, not the store's thread hand-off per file.
    pub local_dir: Option<std::path::PathBuf>,
}

impl Archive {
    /// The bytes of `path`, read on the calling thread, which may block: with `std::fs`
    /// for a local archive (the recompute reads thousands of small files; the store's
    /// hand-off of each read to a blocking thread and back cost a tenth of its time),
    /// else through the store on `rt`.
    ///
    /// # Errors
    ///
    /// The store's error (a local one as [`object_store::Error::Generic`]).
    pub fn read_blocking(
        &self,
        rt: &tokio::runtime::Handle,
        path: &Path,
    ) -> Result<bytes::Bytes, object_store::Error> {
        use object_store::ObjectStoreExt as _;
        match &self.local_dir {
            Some(dir) => std::fs::read(dir.join(path.as_ref()))
                .map(bytes::Bytes::from)
                .map_err(|e| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                }),
            None => rt.block_on(async { self.store.get(path).await?.bytes().await }),
        }
    }

    /// Where `path` of this store is, as an operator finds it (the file of a local
    /// archive, the object's URL of a remote one).
    pub fn locate(&self, path: &Path) -> String {
        format!("{}/{path}", self.location.trim_end_matches('/'))
    }
}

/// Errors opening and writing the archive.
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
    /// A write still failed after the archiver's retries (the store is unreachable,
    /// or the disk of a local archive is full: "No space left on device").
    #[error("writing {location} failed {attempts} times; the last time: {source}")]
    Write {
        /// The object ([`Archive::locate`]).
        location: String,
        /// Attempts made.
        attempts: usize,
        /// The last attempt's error.
        source: object_store::Error,
    },
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
            location: dir.display().to_string(),
            compression: cfg.archive_compression,
            local_dir: Some(dir),
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
        location: format!(
            "{}://{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default()
        ),
        compression: cfg.archive_compression,
        local_dir: None,
    })
}
