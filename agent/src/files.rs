//! Writing rendered secrets into the secrets directory, atomically.
//!
//! An app reading `/vault/secrets/<file>` sees either the old bytes or the new bytes,
//! never a mix and never an empty file: [`write`] puts the new bytes in a temporary
//! file in the same directory (same filesystem, so `rename` is atomic), with the final
//! mode from its creation (so no reader ever sees it looser), syncs it, renames it over
//! the target and syncs the directory.
//!
//! # Guarantees
//! - The file is rewritten only when its bytes or mode differ ([`Outcome::Unchanged`]
//!   otherwise), so an unchanged secret causes no mtime change and no spurious app
//!   reload.
//! - On any error the temporary file is removed and the old file is left as it was.
//! - The path is checked again with [`check_relative_file`]; it cannot leave the
//!   directory.
//! - A symbolic link at the target or at any directory between the secrets directory
//!   and the target is refused, not followed. The agent is the only writer of the
//!   directory, so a link there is either a mistake or an attack.
//!
//! # Caveats
//! The symlink checks and the rename are separate system calls. Only a process that can
//! write the secrets directory could race them, and in the pod that is the agent alone
//! (apps mount the volume read-only).

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::contract::config::check_relative_file;

/// Mode of directories created for files in sub-directories: traversable by the app's
/// user id, like the default file mode.
pub const DIR_MODE: u32 = 0o755;

/// Temporary files start with this prefix and end with [`TEMP_SUFFIX`]; a name that
/// does not depend on the target's keeps it short whatever the target's length.
const TEMP_PREFIX: &str = ".sidekey-";
const TEMP_SUFFIX: &str = ".tmp";

/// Why a file could not be written. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file name would escape the secrets directory.
    #[error("file name {file:?} {why}")]
    BadName { file: String, why: &'static str },
    /// The mode has bits beyond the permission bits.
    #[error("mode {mode:o} for {file:?} is not a permission mode (at most 777)")]
    BadMode { file: String, mode: u32 },
    /// A symbolic link sits where the agent writes.
    #[error("refusing to write through the symbolic link {0}")]
    Symlink(PathBuf),
    /// A path component that must be a directory is something else.
    #[error("{0} is in the way: it is not a directory")]
    NotADirectory(PathBuf),
    /// A file system call failed.
    #[error("{action} {path} failed")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The file was created or replaced.
    Written,
    /// The file already had these bytes and this mode; nothing was touched.
    Unchanged,
}

impl Outcome {
    pub fn changed(self) -> bool {
        self == Outcome::Written
    }
}

/// Writes `contents` with permission bits `mode` to `dir/file`, atomically, unless the
/// file already holds exactly that. See the module docs for the guarantees.
pub fn write(dir: &Path, file: &str, contents: &[u8], mode: u32) -> Result<Outcome> {
    check_relative_file(file).map_err(|why| Error::BadName {
        file: file.to_owned(),
        why,
    })?;
    if mode > 0o777 {
        return Err(Error::BadMode {
            file: file.to_owned(),
            mode,
        });
    }

    let target = dir.join(file);
    let parent = ensure_parents(dir, file)?;

    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(Error::Symlink(target)),
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o7777 == mode => {
            let current = fs::read(&target).map_err(io_err("reading", &target))?;
            if current == contents {
                return Ok(Outcome::Unchanged);
            }
        }
        // A directory or other object at the target makes the rename fail below, which
        // is the error we want to report; a missing file is simply created.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", &target)(e)),
    }

    let (temp, handle) = create_temp(&parent, mode)?;
    let result = fill_and_rename(handle, &temp, &target, contents, file);
    if result.is_err() {
        // Best effort: the rename did not happen, so the temp file is still ours.
        let _ = fs::remove_file(&temp);
    }
    result?;

    // The rename is durable only once the directory entry is.
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the directory", &parent))?;
    Ok(Outcome::Written)
}

/// Makes sure every directory between `dir` and `file` exists and is a real directory,
/// creating missing ones with [`DIR_MODE`]. Returns the file's parent directory.
fn ensure_parents(dir: &Path, file: &str) -> Result<PathBuf> {
    let mut current = dir.to_owned();
    let mut parts: Vec<&str> = file.split('/').collect();
    parts.pop();
    for part in parts {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::Symlink(current));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(Error::NotADirectory(current)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(DIR_MODE)
                    .create(&current)
                    .map_err(io_err("creating the directory", &current))?;
                // The umask may have narrowed the mode given to mkdir.
                fs::set_permissions(&current, Permissions::from_mode(DIR_MODE))
                    .map_err(io_err("setting the mode of", &current))?;
            }
            Err(e) => return Err(io_err("inspecting", &current)(e)),
        }
    }
    Ok(current)
}

/// Creates a new, exclusive temp file in `parent` with `mode` from its first byte.
fn create_temp(parent: &Path, mode: u32) -> Result<(PathBuf, File)> {
    // `create_new` (O_EXCL) neither follows a link nor reuses a file, so a name
    // collision is an error; try a few random names before giving up.
    let mut last = None;
    for _ in 0..8 {
        let name = format!("{TEMP_PREFIX}{:016x}{TEMP_SUFFIX}", rand::random::<u64>());
        let path = parent.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
        {
            Ok(file) => {
                // The umask applies to the mode given to open(2); set it exactly. The file
                // is empty until this succeeds, so no content is ever exposed looser.
                if let Err(e) = file.set_permissions(Permissions::from_mode(mode)) {
                    let _ = fs::remove_file(&path);
                    return Err(io_err("setting the mode of", &path)(e));
                }
                return Ok((path, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io_err("creating a temporary file in", parent)(e)),
        }
    }
    Err(Error::Io {
        action: "creating a temporary file in",
        path: parent.to_owned(),
        source: last.unwrap_or_else(|| io::Error::other("no free temporary name")),
    })
}

fn fill_and_rename(
    mut file: File,
    temp: &Path,
    target: &Path,
    contents: &[u8],
    name: &str,
) -> Result<()> {
    file.write_all(contents).map_err(io_err("writing", temp))?;
    file.sync_all().map_err(io_err("syncing", temp))?;
    drop(file);
    crate::failpoint::hit("after-temp-write", name);
    fs::rename(temp, target).map_err(io_err("replacing", target))
}

/// Removes temporary files a killed agent left in `dir` and its sub-directories (only
/// our own names, and not following links). Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let mut removed = 0;
    let mut pending = vec![(dir.to_owned(), 0)];
    while let Some((current, depth)) = pending.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Depth is bounded because file names from the config are; this guards
            // against a directory tree we did not make.
            if kind.is_dir() && depth < 16 {
                pending.push((entry.path(), depth + 1));
            } else if kind.is_file()
                && name.starts_with(TEMP_PREFIX)
                && name.ends_with(TEMP_SUFFIX)
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_then_replaces_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            write(dir.path(), "app", b"one", 0o644).unwrap(),
            Outcome::Written
        );
        let target = dir.path().join("app");
        let inode_before = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&target).unwrap());

        assert_eq!(
            write(dir.path(), "app", b"two", 0o644).unwrap(),
            Outcome::Written
        );
        assert_eq!(fs::read(&target).unwrap(), b"two");
        // A rename installs a new inode: readers holding the old file keep old bytes,
        // nobody ever sees a truncated file.
        let inode_after = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&target).unwrap());
        assert_ne!(inode_before, inode_after);
        assert_eq!(entries(dir.path()), ["app"]);
    }

    #[test]
    fn identical_bytes_and_mode_leave_the_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app");
        write(dir.path(), "app", b"same", 0o640).unwrap();
        let before = fs::metadata(&target).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));

        assert_eq!(
            write(dir.path(), "app", b"same", 0o640).unwrap(),
            Outcome::Unchanged
        );
        let after = fs::metadata(&target).unwrap();
        assert_eq!(before.modified().unwrap(), after.modified().unwrap());
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&before),
            std::os::unix::fs::MetadataExt::ino(&after)
        );

        // Same bytes, different mode: rewritten with the new mode.
        assert_eq!(
            write(dir.path(), "app", b"same", 0o600).unwrap(),
            Outcome::Written
        );
        assert_eq!(mode_of(&target), 0o600);
    }

    #[test]
    fn the_mode_is_exact_whatever_the_umask() {
        // The umask is process-wide, so other tests in this binary run under it too;
        // that is harmless because every path here sets modes explicitly, which is the
        // point being tested.
        let dir = tempfile::tempdir().unwrap();
        let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let mut results = Vec::new();
        for umask in [0o077, 0o022] {
            rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
            for mode in [0o644u32, 0o666, 0o755, 0o600, 0o400] {
                let name = format!("u{umask:o}/f{mode:o}");
                write(dir.path(), &name, b"x", mode).unwrap();
                results.push((umask, mode, mode_of(&dir.path().join(&name))));
            }
            results.push((
                umask,
                DIR_MODE,
                mode_of(&dir.path().join(format!("u{umask:o}"))),
            ));
        }
        rustix::process::umask(previous);
        for (umask, want, got) in results {
            assert_eq!(got, want, "umask {umask:o}: wanted {want:o}, got {got:o}");
        }
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory at the target makes the rename fail.
        fs::create_dir(dir.path().join("taken")).unwrap();
        fs::write(dir.path().join("taken/inner"), b"keep").unwrap();
        let err = write(dir.path(), "taken", b"new", 0o644).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Io {
                    action: "replacing",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(entries(dir.path()), ["taken"]);
        assert_eq!(fs::read(dir.path().join("taken/inner")).unwrap(), b"keep");
    }

    #[test]
    fn refuses_a_symlink_at_the_target_or_in_a_parent() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"original").unwrap();

        symlink(&victim, dir.path().join("app")).unwrap();
        let err = write(dir.path(), "app", b"evil", 0o644).unwrap_err();
        assert!(matches!(err, Error::Symlink(_)), "{err}");

        symlink(outside.path(), dir.path().join("sub")).unwrap();
        let err = write(dir.path(), "sub/victim", b"evil", 0o644).unwrap_err();
        assert!(matches!(err, Error::Symlink(_)), "{err}");

        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(entries(outside.path()), ["victim"]);
        assert_eq!(entries(dir.path()), ["app", "sub"]);
    }

    #[test]
    fn refuses_names_that_escape_and_modes_that_are_not_permissions() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            assert!(
                matches!(
                    write(dir.path(), bad, b"x", 0o644),
                    Err(Error::BadName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            write(dir.path(), "x", b"x", 0o4755),
            Err(Error::BadMode { .. })
        ));
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn a_regular_file_in_place_of_a_parent_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sub"), b"file").unwrap();
        let err = write(dir.path(), "sub/app", b"x", 0o644).unwrap_err();
        assert!(matches!(err, Error::NotADirectory(_)), "{err}");
    }

    #[test]
    fn stale_temp_files_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join(".sidekey-0123456789abcdef.tmp"), b"x").unwrap();
        fs::write(dir.path().join("sub/.sidekey-00000000000000ff.tmp"), b"x").unwrap();
        fs::write(dir.path().join("app"), b"keep").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 2);
        assert_eq!(entries(dir.path()), ["app", "sub"]);
        assert!(entries(&dir.path().join("sub")).is_empty());
    }
}
