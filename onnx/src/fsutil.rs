//! Writing files so that a crash or a full disk never leaves a half-written result
//! (write a temporary file beside the target, flush it to disk, then rename it over),
//! and checking, before any work, that a command's outputs can be written without
//! destroying an input, each other, or an earlier result ([`check_outputs`]). Both
//! binaries go through here, so the rules are the same everywhere.

use std::io::Write;
use std::path::{Path, PathBuf};

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

/// What a command may do with an output file that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it: an earlier result is kept (the default everywhere).
    Keep,
    /// Replace it (`--force`).
    Replace,
    /// Continue it (`--resume`, which checks the file itself).
    Continue,
}

impl Existing {
    /// From the usual pair of flags.
    pub fn from_flags(force: bool, resume: bool) -> Self {
        match (force, resume) {
            (_, true) => Existing::Continue,
            (true, false) => Existing::Replace,
            (false, false) => Existing::Keep,
        }
    }
}

/// Whether two paths name one file, however spelled (the second need not exist yet:
/// then it is compared by its folder's canonical path and its name).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (resolved(a), resolved(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The path a file has or would have: its folder's canonical path and its name.
fn resolved(p: &Path) -> Result<PathBuf> {
    let name = p.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file name", p.display())))?;
    let dir = folder_of(p);
    let dir =
        std::fs::canonicalize(dir).map_err(|_| Error::Invalid(format!("{}: its folder {} does not exist", p.display(), dir.display())))?;
    Ok(dir.join(name))
}

/// Checks, before any work, that every output can be written and destroys nothing:
/// its folder exists and takes a new file, it is not a folder, not one of the
/// `inputs` (however the path is spelled), no two outputs are the same file, and an
/// existing file is replaced only when `existing` says so.
pub fn check_outputs(outputs: &[&Path], inputs: &[&Path], existing: Existing) -> Result<()> {
    let inputs: Vec<PathBuf> = inputs.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    let mut seen: Vec<PathBuf> = Vec::new();
    for out in outputs {
        if out.is_dir() {
            return Err(Error::Invalid(format!("{}: is a folder; give a file name to write", out.display())));
        }
        let r = resolved(out)?;
        if inputs.contains(&r) {
            return Err(Error::Invalid(format!(
                "{}: the output is one of the inputs; write it to another file (edgemed never overwrites an input)",
                out.display()
            )));
        }
        if seen.contains(&r) {
            return Err(Error::Invalid(format!("{}: two outputs of this command would be the same file", out.display())));
        }
        if existing == Existing::Keep && std::fs::symlink_metadata(out).is_ok() {
            return Err(Error::Invalid(format!("{}: already exists; pass --force to replace it, or write to another file", out.display())));
        }
        // The folder takes a new file (a probe, removed at once).
        let probe = r.with_file_name(format!(".{}.edgemed-probe", r.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| Error::Invalid(format!("{}: cannot write in its folder ({e})", out.display())))?;
        let _ = std::fs::remove_file(&probe);
        seen.push(r);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_outputs, same_file, Existing};

    #[test]
    fn outputs_never_destroy_inputs_each_other_or_earlier_results() {
        let dir = std::env::temp_dir().join(format!("edgemed-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.nii");
        std::fs::write(&input, b"x").unwrap();
        let spelled = dir.join(".").join("in.nii");
        let new = dir.join("new.nii");
        assert!(same_file(&input, &spelled) && !same_file(&input, &new));
        let err = |outs: &[&std::path::Path], e| check_outputs(outs, &[&input], e).unwrap_err().to_string();
        assert!(err(&[&spelled], Existing::Replace).contains("one of the inputs"));
        assert!(err(&[&new, &new], Existing::Keep).contains("same file"));
        assert!(err(&[&dir], Existing::Keep).contains("is a folder"));
        assert!(err(&[&dir.join("missing/out.nii")], Existing::Keep).contains("does not exist"));
        check_outputs(&[&new], &[&input], Existing::Keep).unwrap();
        std::fs::write(&new, b"earlier").unwrap();
        assert!(err(&[&new], Existing::Keep).contains("--force"));
        check_outputs(&[&new], &[&input], Existing::Replace).unwrap();
        check_outputs(&[&new], &[&input], Existing::Continue).unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"earlier");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no probe left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
