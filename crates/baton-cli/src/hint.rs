//! Commands the CLI suggests (the demo's "inspect it" hints), written so they run as printed:
//! in the form that started this process, and without secrets.

use std::path::Path;

/// How to start `baton` again, as this process was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invocation {
    /// The words before the arguments: `baton`, a path, or `cargo run -p baton-cli --`.
    pub(crate) prefix: String,
    /// Whether to add how to install the command: it runs from a build directory.
    pub(crate) install_note: bool,
}

/// How to install the command, from a checkout of the repository.
pub(crate) const INSTALL: &str = "cargo install --path crates/baton-cli";

impl Invocation {
    /// This process's invocation.
    pub(crate) fn current() -> Self {
        Self::detect(
            std::env::args_os()
                .next()
                .map(|a| a.to_string_lossy().into_owned()),
            std::env::var("CARGO_PKG_NAME").ok().as_deref(),
            std::env::current_exe().ok().as_deref(),
        )
    }

    /// The invocation of a process started as `argv0`, whose executable is `exe`, with
    /// `CARGO_PKG_NAME` set to `cargo_package` (`cargo run` sets it for the program it runs).
    pub(crate) fn detect(
        argv0: Option<String>,
        cargo_package: Option<&str>,
        exe: Option<&Path>,
    ) -> Self {
        if cargo_package == Some(env!("CARGO_PKG_NAME")) {
            // `cargo run [--release | --profile P] -p baton-cli -- ...`: the profile is the
            // name of the directory the executable is in.
            let profile = match exe.and_then(Path::parent).and_then(Path::file_name) {
                Some(p) if p == "release" => " --release".to_owned(),
                Some(p) if p != "debug" => format!(" --profile {}", quote(&p.to_string_lossy())),
                _ => String::new(),
            };
            return Self {
                prefix: format!("cargo run{profile} -p {} --", env!("CARGO_PKG_NAME")),
                install_note: true,
            };
        }
        match argv0 {
            // Started by a path: that path works again (from the same directory).
            Some(path) if path.contains('/') => Self {
                prefix: quote(&path),
                install_note: exe.is_some_and(in_cargo_target),
            },
            // Found on the PATH (or started by an unknown name: the installed name).
            _ => Self {
                prefix: "baton".into(),
                install_note: false,
            },
        }
    }
}

/// Whether `exe` lies in a cargo target directory (`<target>/<profile>/baton`): its folder
/// holds cargo's `.fingerprint` bookkeeping, or `<target>` holds the `CACHEDIR.TAG` cargo
/// writes in a target directory it creates (not in one that existed before its first build,
/// as a CI cache's may).
fn in_cargo_target(exe: &Path) -> bool {
    exe.parent()
        .is_some_and(|profile| profile.join(".fingerprint").is_dir())
        || exe
            .ancestors()
            .skip(2)
            .take(2)
            .any(|dir| dir.join("CACHEDIR.TAG").is_file())
}

/// `word` quoted for a POSIX shell if it needs to be: as it is when it holds only characters
/// no shell treats specially, in single quotes otherwise.
pub(crate) fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_run_is_suggested_under_cargo_run() {
        let exe = Path::new("/work/target/debug/baton");
        let found = Invocation::detect(
            Some("target/debug/baton".into()),
            Some("baton-cli"),
            Some(exe),
        );
        assert_eq!(found.prefix, "cargo run -p baton-cli --");
        assert!(found.install_note);
        let release =
            Invocation::detect(None, Some("baton-cli"), Some(Path::new("/t/release/baton")));
        assert_eq!(release.prefix, "cargo run --release -p baton-cli --");
        let profile =
            Invocation::detect(None, Some("baton-cli"), Some(Path::new("/t/bench/baton")));
        assert_eq!(profile.prefix, "cargo run --profile bench -p baton-cli --");
    }

    #[test]
    fn a_path_or_the_installed_name_is_suggested_otherwise() {
        // Another package's `cargo run` (a user's program that runs baton) is not ours.
        let on_path = Invocation::detect(Some("baton".into()), Some("my-app"), None);
        assert_eq!(
            on_path,
            Invocation {
                prefix: "baton".into(),
                install_note: false
            }
        );
        assert_eq!(Invocation::detect(None, None, None).prefix, "baton");
        let by_path = Invocation::detect(
            Some("./my tools/baton".into()),
            None,
            Some(Path::new("/nowhere/baton")),
        );
        assert_eq!(
            by_path,
            Invocation {
                prefix: "'./my tools/baton'".into(),
                install_note: false
            }
        );
    }

    #[test]
    fn a_build_directory_is_recognised_by_cargo_s_tag() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("CACHEDIR.TAG"), "Signature").unwrap();
        let exe = target.path().join("debug").join("baton");
        assert!(in_cargo_target(&exe));
        assert!(!in_cargo_target(Path::new("/usr/local/bin/baton")));
    }

    #[test]
    fn a_build_directory_without_the_tag_is_recognised_by_its_fingerprints() {
        let target = tempfile::tempdir().unwrap();
        let profile = target.path().join("debug");
        std::fs::create_dir_all(profile.join(".fingerprint")).unwrap();
        assert!(in_cargo_target(&profile.join("baton")));
        assert!(!in_cargo_target(&target.path().join("bin").join("baton")));
    }

    #[test]
    fn words_are_quoted_only_when_a_shell_would_split_or_expand_them() {
        assert_eq!(quote("sqlite:///tmp/baton.db"), "sqlite:///tmp/baton.db");
        assert_eq!(
            quote("postgres://u:***@h:5432/db"),
            "'postgres://u:***@h:5432/db'"
        );
        assert_eq!(quote("sqlite:///tmp/a b.db"), "'sqlite:///tmp/a b.db'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("db?sslmode=disable&x=1"), "'db?sslmode=disable&x=1'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("é"), "'é'");
    }
}
