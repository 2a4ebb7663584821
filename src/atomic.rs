/*!
Atomic file writes, the one helper every file this crate writes goes through (checkpoints, configs,
metrics rewrites, evaluation JSON, generated data): the bytes go to a temporary file in the same
directory, which is synced and then renamed over the target, so a crash or a full disk leaves either
the old file or the new one, never a torn one, and never loses what was already there.
*/

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary path next to `path` used while writing it.
pub fn tmp_path(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        std::fs::File::create(tmp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| Error::io(path, e))
    })
}

/// Let `produce` write the file at the temporary path it is given, then sync it and rename it over
/// `path`. On any failure the temporary file is removed and `path` is left as it was.
pub fn write_with(path: &Path, produce: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    if let Err(e) = produce(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let res = std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write(&p, b"old").unwrap();
        let err = write_with(&p, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::invalid("producer failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("producer failed"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!tmp_path(&p).exists());
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
