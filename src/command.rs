//! Running a configured command (a release hook, the CloudWatch agent's reload): the program is found
//! before anything else, in the absolute entries of PATH only.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The program to run: a path with a `/` as given (relative ones refused), a bare name looked up in
/// the absolute entries of `path` only (`.` or any relative entry would make the working directory,
/// e.g. a release, choose what runs).
pub fn resolve_program(program: &str, path: &OsStr) -> Result<PathBuf, String> {
    if program.contains('/') {
        if !program.starts_with('/') {
            return Err(format!(
                "its program '{program}' is a relative path; name it absolutely"
            ));
        }
        return Ok(PathBuf::from(program));
    }
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| format!("cannot find {program} in PATH (absolute entries only)"))
}

/// [`resolve_program`] with this process's PATH.
pub fn find(program: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    resolve_program(program, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_program_is_found_in_absolute_path_entries_only() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("php");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([std::path::Path::new("."), &bin]).unwrap();
        assert_eq!(resolve_program("php", &path).unwrap(), tool);
        // Only a relative entry holds it: not found, never run from the working directory.
        let relative = std::env::join_paths([std::path::Path::new("bin")]).unwrap();
        let err = resolve_program("php", &relative).unwrap_err();
        assert!(err.contains("absolute entries only"), "{err}");
        assert!(resolve_program("./php", &path)
            .unwrap_err()
            .contains("relative path"));
        assert_eq!(
            resolve_program("/usr/bin/env", &path).unwrap(),
            PathBuf::from("/usr/bin/env")
        );
    }
}
