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

/// `user`, `user:group`, or numeric ids, resolved from /etc/passwd and /etc/group (no NSS: the binary
/// is static).
pub fn resolve_owner(owner: &str) -> Result<(u32, u32), String> {
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup(&passwd, user)
            .and_then(|f| Some((f.first()?.parse().ok()?, f.get(1)?.parse().ok()?)))
            .ok_or_else(|| format!("the user '{user}', who is not in /etc/passwd"))?,
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(
                &std::fs::read_to_string("/etc/group").unwrap_or_default(),
                g,
            )
            .and_then(|f| f.first()?.parse().ok())
            .ok_or_else(|| format!("the group '{g}', which is not in /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The fields after the password of `name`'s line in a passwd/group file.
fn lookup<'a>(file: &'a str, name: &str) -> Option<Vec<&'a str>> {
    file.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.skip(1).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n";
        assert_eq!(lookup(passwd, "www-data").unwrap()[..2], ["33", "33"]);
        assert!(lookup(passwd, "nobody").is_none());
        assert_eq!(resolve_owner("33:44").unwrap(), (33, 44));
    }

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
