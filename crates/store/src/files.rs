//! Files and directories keyhaven makes: owner-only (files 0600, directories 0700)
//! whatever the process's umask or the mode of the directory they are made in.
//!
//! The mode given at creation is reduced by the umask, so every function here also
//! sets it explicitly afterwards. Files and directories that already exist are left
//! as they are (their owner may have chosen their mode).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// The mode of every file keyhaven creates: read and write for its owner only.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory keyhaven creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its missing parents) with mode 0700 when it does not exist.
///
/// # Errors
/// The directory cannot be created, or its mode set.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Creates `path`, which must not exist, with mode 0600, open for writing.
///
/// # Errors
/// The file exists (`AlreadyExists`), or cannot be created or its mode set.
pub fn create_new_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    open_private(&options, path)
}

/// Opens `path` for appending; when it does not exist it is created with mode 0600.
/// An existing file keeps its mode.
///
/// # Errors
/// The file cannot be opened or created, or a new file's mode cannot be set.
pub fn open_append_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create_new(true);
    match open_private(&options, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path)
        }
        other => other,
    }
}

/// Opens `path` with `options` (which create it) at mode 0600, then sets that mode
/// on the open file, so that neither the umask nor an older file's mode remains.
fn open_private(options: &OpenOptions, path: &Path) -> io::Result<File> {
    let mut options = options.clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    let file = options.open(path)?;
    restrict(&file)?;
    Ok(file)
}

/// Sets an open file's mode to 0600 (on Unix; elsewhere nothing).
///
/// # Errors
/// The mode cannot be set.
pub fn restrict(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// The mode bits of `path` that let others than its owner in (group and other), on
/// Unix; `None` when there are none or the file cannot be read.
pub fn open_to_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn owner_only_in_an_open_directory() {
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = base.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        drop(create_new_private_file(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            create_new_private_file(&file).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let log = base.path().join("log");
        drop(open_append_private(&log).unwrap());
        assert_eq!(mode(&log), 0o600);
        // An existing file keeps the mode its owner gave it.
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).unwrap();
        drop(open_append_private(&log).unwrap());
        assert_eq!(mode(&log), 0o640);
        assert_eq!(open_to_others(&log), Some(0o640));
        assert_eq!(open_to_others(&file), None);
    }
}
