//! Reading files a user names (keys, certificates, secrets, a downloaded bill) with a
//! size cap: a path can be `/dev/zero`, a FIFO, or a multi-gigabyte file by mistake, and
//! none of them may take the process's memory or hang it. Every read of a file named from
//! outside (a variable, a flag) goes through [`read_capped`].
//!
//! Opening a FIFO for reading blocks until a writer comes, for ever if none does: the
//! path is looked at before it is opened, it is opened non-blocking (should it be swapped
//! for a FIFO in between), and what was opened is looked at again.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use thiserror::Error;

/// Largest key file: an RSA-4096 private key in PEM is about 3.3 KiB.
pub const MAX_KEY_BYTES: u64 = 16 * 1024;

/// Why a file could not be read.
#[derive(Debug, Error)]
pub enum FileError {
    /// Not a regular file (a device, a FIFO, a directory, a socket).
    #[error("{path} is not a regular file ({kind})")]
    NotRegular {
        /// The path as given.
        path: String,
        /// What it is instead.
        kind: &'static str,
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

/// Reads a regular file of at most `max` bytes; anything else is refused before it is
/// opened (a FIFO would block the open itself).
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let shown = || path.display().to_string();
    let io = |source| FileError::Io {
        path: shown(),
        source,
    };
    let regular = |meta: &Metadata| match kind(meta) {
        None => Ok(()),
        Some(kind) => Err(FileError::NotRegular {
            path: shown(),
            kind,
        }),
    };
    regular(&std::fs::metadata(path).map_err(io)?)?;
    let file = open_without_waiting(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    regular(&meta)?;
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

/// Opens for reading without waiting for a FIFO's writer (`O_NONBLOCK`; it changes
/// nothing for a regular file, which is all that is read after).
#[cfg(unix)]
fn open_without_waiting(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_without_waiting(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// What a file that is not regular is, for the message; `None` for a regular file.
fn kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() || t.is_block_device() {
            return Some("a device");
        }
    }
    Some("not a file")
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

    /// A FIFO (or a link to one) is refused at once, naming it; opening
    /// it would wait for a writer for ever.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("oc-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("key.pem");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let link = dir.join("link.pem");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        for path in [fifo, link] {
            let (tx, rx) = std::sync::mpsc::channel();
            let shown = path.display().to_string();
            std::thread::spawn(move || tx.send(read_capped_text(&path, MAX_KEY_BYTES)));
            // Without the fix the reader never returns: the bound only turns that hang
            // into a failure.
            let result = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("reading {shown} hangs"));
            let err = result.unwrap_err();
            assert!(
                matches!(err, FileError::NotRegular { kind: "a FIFO", .. }),
                "{err}"
            );
            assert!(err.to_string().contains(&shown), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
