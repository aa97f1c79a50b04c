//! Reading files a user names (keys, a downloaded bill) with a size cap: a path can be
//! `/dev/zero`, a FIFO, or a multi-gigabyte file by mistake, and none of them may take
//! the process's memory or hang it.

use std::io::Read;
use std::path::Path;

use thiserror::Error;

/// Largest key file: an RSA-4096 private key in PEM is about 3.3 KiB.
pub const MAX_KEY_BYTES: u64 = 16 * 1024;

/// Why a file could not be read.
#[derive(Debug, Error)]
pub enum FileError {
    /// Not a regular file (a device, a FIFO, a directory).
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The path as given.
        path: String,
    },
    /// Larger than the cap.
    #[error("{path} is larger than {max} bytes")]
    TooLarge {
        /// The path as given.
        path: String,
        /// The cap.
        max: u64,
    },
    /// Missing, unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Reads a regular file of at most `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let shown = || path.display().to_string();
    let io = |source| FileError::Io {
        path: shown(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular { path: shown() });
    }
    if meta.len() > max {
        return Err(FileError::TooLarge { path: shown(), max });
    }
    // The file may grow between the check and the read: read one byte past the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge { path: shown(), max });
    }
    Ok(bytes)
}

/// Reads a regular UTF-8 text file of at most `max` bytes.
pub fn read_capped_text(path: &Path, max: u64) -> Result<String, FileError> {
    let bytes = read_capped(path, max)?;
    String::from_utf8(bytes).map_err(|_| FileError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_large_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("oc-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, b"key").unwrap();

        assert!(matches!(
            read_capped(Path::new("/dev/zero"), 1024),
            Err(FileError::NotRegular { .. })
        ));
        assert!(matches!(
            read_capped(&dir, 1024),
            Err(FileError::NotRegular { .. })
        ));
        assert!(matches!(
            read_capped(&big, 1024),
            Err(FileError::TooLarge { max: 1024, .. })
        ));
        assert!(matches!(
            read_capped(&dir.join("missing"), 1024),
            Err(FileError::Io { .. })
        ));
        assert_eq!(read_capped(&small, 1024).unwrap(), b"key");
        std::fs::write(&small, [0xff, 0xfe]).unwrap();
        assert!(read_capped_text(&small, 1024).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
