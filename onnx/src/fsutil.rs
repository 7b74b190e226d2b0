//! Writing files so that a crash or a full disk never leaves a half-written result:
//! write a temporary file beside the target, flush it to disk, then rename it over.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// The folder a file path lies in (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = folder_of(path).join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    replace_via(path, &tmp, |tmp| std::fs::File::create(tmp)?.write_all(bytes))
}

/// Lets `write` make the whole file at `tmp` (beside `path`), flushes it to disk and
/// renames it over `path`; on any failure the temporary file is removed. For writers
/// that insist on opening the file themselves (the NIfTI writer picks gzip from the name).
pub fn replace_via(path: &Path, tmp: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let result = write(tmp).and_then(|_| std::fs::File::open(tmp)?.sync_all()).and_then(|_| std::fs::rename(tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_whole_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("edgemed-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.json");
        super::write_atomic(&p, b"[1]").unwrap();
        super::write_atomic(&p, b"[1,2]").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"[1,2]");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(super::write_atomic(&dir.join("missing/x"), b"").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
